#include "io/qcow2_writer.h"

#include <endian.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace vmsynth::io {

namespace {

// On-disk constants (QEMU's docs/interop/qcow2.txt).
constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint32_t kVersion = 3;
constexpr uint64_t kIncompatExtendedL2 = uint64_t{1} << 4;
constexpr uint32_t kRefcountOrder = 4;  // 16-bit refcounts
constexpr uint32_t kHeaderLength = 112;  // v3 fields + compression type, padded to 8
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint64_t kCopied = uint64_t{1} << 63;  // refcount is exactly 1
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00;
constexpr uint64_t kRefcountsPerBlock = Qcow2Writer::kClusterSize * 8 / (1u << kRefcountOrder);
constexpr uint64_t kEntriesPerCluster = Qcow2Writer::kClusterSize / 8;

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

void put32(std::vector<std::byte>& b, size_t at, uint32_t v) {
  v = htobe32(v);
  std::memcpy(b.data() + at, &v, 4);
}
void put64(std::vector<std::byte>& b, size_t at, uint64_t v) {
  v = htobe64(v);
  std::memcpy(b.data() + at, &v, 8);
}

}  // namespace

Qcow2Writer::Qcow2Writer(const std::string& path, uint64_t virtual_size, std::string backing_path)
    : virtual_size_(virtual_size), backing_(std::move(backing_path)) {
  if (virtual_size_ % 512 != 0) {
    throw Error(ErrorCode::kUnsupported, "a qcow2 disk must be a whole number of 512-byte sectors; the launch "
                                         "disk has " + std::to_string(virtual_size_) +
                                             " bytes (use --disk-format raw)");
  }
  if (backing_.empty() || backing_.size() > kMaxBackingName) {
    throw Error(ErrorCode::kUsage, "qcow2 backing file name must be 1.." + std::to_string(kMaxBackingName) +
                                       " bytes: '" + backing_ + "'");
  }
  l1_entries_ = std::max<uint64_t>(1, div_up(div_up(virtual_size_, kClusterSize), kL2Entries));
  l2_ = std::vector<std::atomic<L2*>>(l1_entries_);
  for (auto& p : l2_) p.store(nullptr, std::memory_order_relaxed);
  file_ = File::create(path);
}

Qcow2Writer::~Qcow2Writer() = default;

Qcow2Writer::L2& Qcow2Writer::table_for(uint64_t guest_cluster) {
  std::atomic<L2*>& slot = l2_[guest_cluster / kL2Entries];
  L2* t = slot.load(std::memory_order_relaxed);
  if (t == nullptr) {
    owned_.push_back(std::make_unique<L2>());
    t = owned_.back().get();
    for (uint64_t i = 0; i < kL2Entries; ++i) {
      t->entry[i].store(0, std::memory_order_relaxed);
      t->bitmap[i].store(0, std::memory_order_relaxed);
    }
    slot.store(t, std::memory_order_release);
  }
  return *t;
}

uint32_t Qcow2Writer::subcluster_mask(uint64_t offset, uint64_t len, const char* what) const {
  const uint64_t end = offset + len;
  const bool ok = len > 0 && end <= virtual_size_ && end > offset && offset % kSubclusterSize == 0 &&
                  (end % kSubclusterSize == 0 || end == virtual_size_) &&
                  offset / kClusterSize == (end - 1) / kClusterSize;
  if (!ok) {
    throw Error(ErrorCode::kUsage, std::string("qcow2 ") + what + " of guest bytes [" + std::to_string(offset) +
                                       ", " + std::to_string(end) + ") of '" + file_.path() +
                                       "': not whole subclusters of one cluster inside the disk");
  }
  const unsigned first = static_cast<unsigned>((offset % kClusterSize) / kSubclusterSize);
  const unsigned count = static_cast<unsigned>(div_up(len, kSubclusterSize));
  return count == kSubclusters ? ~uint32_t{0} : ((uint32_t{1} << count) - 1) << first;
}

Qcow2Writer::Entry Qcow2Writer::entry_for(uint64_t offset, uint64_t len, const char* what) {
  const uint32_t mask = subcluster_mask(offset, len, what);
  const uint64_t gc = offset / kClusterSize;
  L2& t = table_for(gc);
  return {t.entry[gc % kL2Entries], t.bitmap[gc % kL2Entries], mask};
}

uint64_t Qcow2Writer::allocate(uint64_t offset, uint64_t len) {
  Entry x = entry_for(offset, len, "write");
  uint64_t e = x.entry.load(std::memory_order_relaxed);
  if (e == 0) e = (next_cluster_++ * kClusterSize) | kCopied;
  const uint64_t bm = (x.bitmap.load(std::memory_order_relaxed) | x.mask) & ~(uint64_t{x.mask} << 32);
  // The bitmap first: a reader that sees the entry also sees its bits.
  x.bitmap.store(bm, std::memory_order_release);
  x.entry.store(e, std::memory_order_release);
  return (e & kOffsetMask) + offset % kClusterSize;
}

void Qcow2Writer::set_zero(uint64_t offset, uint64_t len) {
  Entry x = entry_for(offset, len, "zeroing");
  const uint64_t bm = (x.bitmap.load(std::memory_order_relaxed) & ~uint64_t{x.mask}) | (uint64_t{x.mask} << 32);
  x.bitmap.store(bm, std::memory_order_release);
}

Qcow2Writer::Location Qcow2Writer::lookup(uint64_t offset) const {
  const uint64_t gc = offset / kClusterSize;
  if (offset >= virtual_size_) return {Source::kZero, 0};
  const L2* t = l2_[gc / kL2Entries].load(std::memory_order_acquire);
  if (t == nullptr) return {};
  const uint64_t i = gc % kL2Entries;
  const uint64_t e = t->entry[i].load(std::memory_order_acquire);
  const uint64_t bm = t->bitmap[i].load(std::memory_order_acquire);
  const unsigned sc = static_cast<unsigned>((offset % kClusterSize) / kSubclusterSize);
  if (bm >> sc & 1) return {Source::kData, (e & kOffsetMask) + offset % kClusterSize};
  if (bm >> (32 + sc) & 1) return {Source::kZero, 0};
  return {};
}

uint64_t Qcow2Writer::finish() {
  if (finished_) throw Error(ErrorCode::kUsage, "qcow2 image '" + file_.path() + "' finished twice");
  finished_ = true;
  const uint64_t data_end = next_cluster_;

  // L2 tables for the L1 slots in use, in guest order.
  std::vector<uint64_t> l2_slots;
  for (uint64_t s = 0; s < l1_entries_; ++s) {
    if (l2_[s].load(std::memory_order_relaxed) != nullptr) l2_slots.push_back(s);
  }
  const uint64_t l2_first = data_end;
  const uint64_t l1_first = l2_first + l2_slots.size();
  const uint64_t l1_clusters = div_up(l1_entries_ * 8, kClusterSize);
  const uint64_t before_refcounts = l1_first + l1_clusters;
  // Refcount blocks and table must count themselves: grow until they fit.
  uint64_t blocks = 1, table = 1;
  for (;;) {
    const uint64_t total = before_refcounts + blocks + table;
    const uint64_t need_blocks = div_up(total, kRefcountsPerBlock);
    const uint64_t need_table = div_up(need_blocks, kEntriesPerCluster);
    if (need_blocks <= blocks && need_table <= table) break;
    blocks = std::max(blocks, need_blocks);
    table = std::max(table, need_table);
  }
  const uint64_t rb_first = before_refcounts;
  const uint64_t rt_first = rb_first + blocks;
  const uint64_t total_clusters = rt_first + table;

  std::vector<std::byte> buf(kClusterSize);
  uint64_t at = l2_first;
  std::vector<std::byte> l1(l1_clusters * kClusterSize);
  for (uint64_t s : l2_slots) {
    const L2& t = *l2_[s].load(std::memory_order_relaxed);
    std::fill(buf.begin(), buf.end(), std::byte{0});
    // Each entry: the host cluster word, then the subcluster bitmap (as a
    // big-endian 64-bit value: allocation bits 0-31, zero bits 32-63).
    for (uint64_t i = 0; i < kL2Entries; ++i) {
      const uint64_t e = t.entry[i].load(std::memory_order_relaxed);
      uint64_t bm = t.bitmap[i].load(std::memory_order_relaxed);
      if (e == 0) bm &= ~uint64_t{0xffffffff};  // no host cluster: no allocated subclusters
      put64(buf, i * 16, e);
      put64(buf, i * 16 + 8, bm);
    }
    file_.pwrite_full(buf, at * kClusterSize);
    put64(l1, s * 8, (at * kClusterSize) | kCopied);
    ++at;
  }
  file_.pwrite_full(l1, l1_first * kClusterSize);

  // Every cluster from 0 to total_clusters is in use exactly once.
  std::vector<std::byte> rb(blocks * kClusterSize);
  for (uint64_t c = 0; c < total_clusters; ++c) {
    rb[c * 2] = std::byte{0};
    rb[c * 2 + 1] = std::byte{1};
  }
  file_.pwrite_full(rb, rb_first * kClusterSize);
  std::vector<std::byte> rt(table * kClusterSize);
  for (uint64_t b = 0; b < blocks; ++b) put64(rt, b * 8, (rb_first + b) * kClusterSize);
  file_.pwrite_full(rt, rt_first * kClusterSize);

  // The header last: until it is written the file is no image at all.
  std::fill(buf.begin(), buf.end(), std::byte{0});
  put32(buf, 0, kMagic);
  put32(buf, 4, kVersion);
  put32(buf, 20, kClusterBits);
  put64(buf, 24, virtual_size_);
  put32(buf, 32, 0);  // no encryption
  put32(buf, 36, static_cast<uint32_t>(l1_entries_));
  put64(buf, 40, l1_first * kClusterSize);
  put64(buf, 48, rt_first * kClusterSize);
  put32(buf, 56, static_cast<uint32_t>(table));
  put64(buf, 72, kIncompatExtendedL2);
  put32(buf, 96, kRefcountOrder);
  put32(buf, 100, kHeaderLength);
  size_t pos = kHeaderLength;
  put32(buf, pos, kExtBackingFormat);
  put32(buf, pos + 4, 3);
  std::memcpy(buf.data() + pos + 8, "raw", 3);
  pos += 8 + 8;  // "raw" padded to 8
  pos += 8;      // end of extensions: type 0, length 0
  put64(buf, 8, pos);
  put32(buf, 16, static_cast<uint32_t>(backing_.size()));
  std::memcpy(buf.data() + pos, backing_.data(), backing_.size());
  file_.pwrite_full(buf, 0);
  const uint64_t size = total_clusters * kClusterSize;
  file_.truncate(size);
  return size;
}

}  // namespace vmsynth::io
