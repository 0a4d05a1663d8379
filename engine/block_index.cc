#include "engine/block_index.h"

#include <bit>

namespace vmsynth {

namespace {
uint64_t pack(format::BlockAddress a) { return uint64_t{a.image} << 63 | a.block; }
format::BlockAddress unpack(uint64_t v) {
  return {static_cast<uint8_t>(v >> 63), v & ~(uint64_t{1} << 63)};
}
}  // namespace

BlockIndex::BlockIndex(size_t expected_entries) {
  slots_.resize(std::bit_ceil(std::max<size_t>(1024, expected_entries * 2)));
}

bool BlockIndex::insert(const Hash128& h, format::BlockAddress a) {
  if ((size_ + 1) * 2 > slots_.size()) grow();
  size_t mask = slots_.size() - 1;
  for (size_t i = h.prefix64() & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.addr == kEmpty) {
      s.key = h;
      s.addr = pack(a);
      ++size_;
      return true;
    }
    if (s.key == h) return false;
  }
}

std::optional<format::BlockAddress> BlockIndex::find(const Hash128& h) const {
  size_t mask = slots_.size() - 1;
  for (size_t i = h.prefix64() & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.addr == kEmpty) return std::nullopt;
    if (s.key == h) return unpack(s.addr);
  }
}

void BlockIndex::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  size_ = 0;
  size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.addr == kEmpty) continue;
    size_t i = s.key.prefix64() & mask;
    while (slots_[i].addr != kEmpty) i = (i + 1) & mask;
    slots_[i] = s;
    ++size_;
  }
}

}  // namespace vmsynth
