#include "tools/gen_pair/synthetic_pair.h"

#include <sys/stat.h>
#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>
#include <mutex>
#include <span>

#include "common/error.h"
#include "engine/cancel.h"
#include "engine/vm_dir.h"
#include "io/file.h"

namespace vmsynth {

namespace {

constexpr uint64_t kBlock = kSyntheticBlockSize;
// Blocks produced and written per task: 1 MiB, large enough for efficient
// pwrites, small enough to balance across cores.
constexpr uint64_t kChunkBlocks = 256;
// Base-disk "block groups" (like ext4's 128 MiB groups): usage density falls
// from the first group to the last, as a filesystem fills from the front.
constexpr uint64_t kGroupBlocks = 32768;

// ---------------------------------------------------------------------------
// Randomness: splitmix64 to derive keys, xoshiro256** as the stream generator.

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : s_) {
      x += 0x9e3779b97f4a7c15ull;
      s = splitmix64(x);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n); n > 0. Multiply-shift: bias is negligible for our n.
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Geometric number of failures before a success, with the given mean (>= 0).
  uint64_t geometric0(double mean) {
    if (mean <= 0) return 0;
    const double u = 1.0 - unit();  // (0, 1]
    const double v = std::floor(std::log(u) / std::log(mean / (mean + 1.0)));
    return v > 1e15 ? uint64_t{1'000'000'000'000'000} : static_cast<uint64_t>(v);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_;
};

// ---------------------------------------------------------------------------
// Block descriptors: the content of every block of every image is a pure
// function of its descriptor, so "copy a block" is "copy its descriptor", and
// equal descriptors mean equal bytes.

enum class Kind : uint8_t { kZero, kText, kRecords, kRandom };

struct BlockDesc {
  uint64_t key = 0;
  uint32_t edit = 0;  // non-zero: the content is changed in place by a few bytes
  Kind kind = Kind::kZero;
  bool is_zero() const { return kind == Kind::kZero && edit == 0; }
  bool operator==(const BlockDesc&) const = default;
};

using Plan = std::vector<BlockDesc>;

// Words of a seeded vocabulary with a Zipf-like frequency, numbers and
// punctuation make text/code-like pages; 64-byte records (ids, small enums,
// kernel-like pointers, names) make structured pages. Both compress roughly
// 3-4x with zstd and, being drawn token by token, are not repetitive.
class ContentGenerator {
 public:
  ContentGenerator(uint64_t seed, uint32_t edit_max_bytes) : edit_max_(edit_max_bytes) {
    Rng r(splitmix64(seed ^ 0x766f636162756c61ull));
    static constexpr char kLetters[] = "etaoinsrhldcumfpgwybvkxjqz";
    for (uint32_t w = 0; w < kVocab; ++w) {
      const uint32_t len = 2 + static_cast<uint32_t>(std::min<uint64_t>(r.geometric0(3.5), kWordMax - 2));
      for (uint32_t i = 0; i < len; ++i) {
        const double u = r.unit();
        words_[w][i] = kLetters[static_cast<size_t>(u * u * 26)];
      }
      word_len_[w] = static_cast<uint8_t>(len);
    }
    // Zipf(s) over the vocabulary, as a 64 Ki-entry lookup table.
    std::vector<double> cdf(kVocab);
    double sum = 0;
    for (uint32_t k = 0; k < kVocab; ++k) {
      sum += 1.0 / std::pow(static_cast<double>(k + 1), kZipfExponent);
      cdf[k] = sum;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < zipf_.size(); ++i) {
      const double target = (static_cast<double>(i) + 0.5) / static_cast<double>(zipf_.size()) * sum;
      while (k + 1 < kVocab && cdf[k] < target) ++k;
      zipf_[i] = static_cast<uint16_t>(k);
    }
  }

  // Writes the kBlock bytes of `d` to out.
  void fill(const BlockDesc& d, std::byte* out) const {
    switch (d.kind) {
      case Kind::kZero:
        std::memset(out, 0, kBlock);
        break;
      case Kind::kText:
        fill_text(d.key, out);
        break;
      case Kind::kRecords:
        fill_records(d.key, out);
        break;
      case Kind::kRandom:
        fill_random(d.key, out);
        break;
    }
    if (d.edit != 0) apply_edit(splitmix64(d.key ^ splitmix64(d.edit)), out);
  }

  void fill_text(uint64_t key, std::byte* out) const {
    Rng r(key);
    std::array<char, kBlock + 64> tmp;
    size_t pos = 0;
    while (pos < kBlock) {
      const uint64_t x = r.next();
      const uint32_t kind = static_cast<uint32_t>(x >> 56);
      if (kind < 6) {  // a number, 1-6 digits
        const uint32_t digits = 1 + static_cast<uint32_t>((x >> 53) % 6);
        uint64_t v = x & 0xffffffffffffull;
        for (uint32_t i = 0; i < digits; ++i) {
          tmp[pos++] = static_cast<char>('0' + v % 10);
          v /= 10;
        }
      } else {
        const uint16_t w = zipf_[x & 0xffff];
        std::memcpy(&tmp[pos], words_[w].data(), kWordMax);
        pos += word_len_[w];
      }
      const uint32_t sep = static_cast<uint32_t>((x >> 40) & 0xff);
      if (sep < 190) {
        tmp[pos++] = ' ';
      } else if (sep < 210) {
        tmp[pos++] = '\n';
        const uint32_t indent = static_cast<uint32_t>((x >> 32) & 3) * 2;  // code-like indentation
        for (uint32_t i = 0; i < indent; ++i) tmp[pos++] = ' ';
      } else if (sep < 222) {
        tmp[pos++] = '_';
      } else if (sep < 232) {
        tmp[pos++] = ',';
        tmp[pos++] = ' ';
      } else if (sep < 240) {
        tmp[pos++] = '.';
      } else if (sep < 246) {
        tmp[pos++] = '(';
      } else if (sep < 252) {
        tmp[pos++] = ')';
        tmp[pos++] = ';';
      } else {
        tmp[pos++] = ' ';
        tmp[pos++] = '=';
        tmp[pos++] = ' ';
      }
    }
    std::memcpy(out, tmp.data(), kBlock);
  }

  void fill_records(uint64_t key, std::byte* out) const {
    Rng r(key);
    struct Record {
      uint64_t id;
      uint32_t type;
      uint32_t flags;
      uint64_t ptr_a;
      uint64_t ptr_b;
      uint32_t length;
      uint16_t refcount;
      uint16_t mode;
      char name[24];
    };
    static_assert(sizeof(Record) == 64);
    static constexpr uint16_t kModes[4] = {0644, 0755, 0600, 0444};
    const uint64_t id0 = r.next() & 0xffffff;
    const uint64_t region = 0xffff888000000000ull | ((r.next() & 0xfff) << 28);
    for (size_t i = 0; i < kBlock / sizeof(Record); ++i) {
      const uint64_t x = r.next();
      const uint64_t y = r.next();
      Record rec{};
      rec.id = id0 + i;
      rec.type = static_cast<uint32_t>(zipf_[x & 0xffff] & 7);
      rec.flags = static_cast<uint32_t>((x >> 16) & 0x13);
      rec.ptr_a = region + (((x >> 24) & 0xfffff) << 6);
      rec.ptr_b = (x >> 44) & 1 ? 0 : region + ((y & 0xfffff) << 6);
      rec.length = static_cast<uint32_t>((y >> 20) & 0xfff);
      rec.refcount = static_cast<uint16_t>(1 + ((y >> 32) & 3));
      rec.mode = kModes[(y >> 34) & 3];
      const uint16_t w = zipf_[(y >> 40) & 0xffff];
      std::memcpy(rec.name, words_[w].data(), word_len_[w]);
      std::memcpy(out + i * sizeof(Record), &rec, sizeof(Record));
    }
  }

  static void fill_random(uint64_t key, std::byte* out) {
    Rng r(key);
    for (size_t i = 0; i < kBlock; i += 8) {
      const uint64_t v = r.next();
      std::memcpy(out + i, &v, 8);
    }
  }

  // 1-4 sites of 1-16 bytes, at most edit_max_ bytes in all; every byte in a
  // site really changes (XOR with a non-zero value).
  void apply_edit(uint64_t key, std::byte* out) const {
    Rng r(key);
    static constexpr uint32_t kSiteLen[5] = {1, 2, 4, 8, 16};
    uint32_t budget = edit_max_;
    const uint64_t sites = 1 + r.below(4);
    for (uint64_t s = 0; s < sites && budget > 0; ++s) {
      const uint32_t len = std::min(budget, kSiteLen[r.below(5)]);
      const uint32_t align = std::min<uint32_t>(len, 8);
      uint64_t off = r.below(kBlock - len + 1);
      off -= off % align;
      for (uint32_t i = 0; i < len; ++i) {
        out[off + i] ^= static_cast<std::byte>(1 + r.below(255));
      }
      budget -= len;
    }
  }

 private:
  static constexpr uint32_t kVocab = 8192;
  static constexpr uint32_t kWordMax = 16;
  static constexpr double kZipfExponent = 1.0;
  uint32_t edit_max_;
  std::vector<std::array<char, kWordMax>> words_ = std::vector<std::array<char, kWordMax>>(kVocab);
  std::vector<uint8_t> word_len_ = std::vector<uint8_t>(kVocab);
  std::array<uint16_t, 65536> zipf_{};
};

// ---------------------------------------------------------------------------
// Planning: descriptors for the four images, built sequentially from one
// seeded stream (cheap: a few bytes of work per block).

uint64_t blocks_for(uint64_t bytes) { return (bytes + kBlock - 1) / kBlock; }

// Takes up to `n` items from `pool` at random without replacement, starting
// at `*cursor` (a partial Fisher-Yates shuffle that can be continued).
template <typename T>
bool draw(std::vector<T>& pool, size_t& cursor, Rng& r, T& out) {
  if (cursor >= pool.size()) return false;
  const size_t j = cursor + r.below(pool.size() - cursor);
  std::swap(pool[cursor], pool[j]);
  out = pool[cursor++];
  return true;
}

BlockDesc compressible(Rng& r, double text_share) {
  return BlockDesc{r.next(), 0, r.unit() < text_share ? Kind::kText : Kind::kRecords};
}

// Lays out files separated by gaps in plan[start, start+len) so that about
// `fill` of the range is used. Returns the indices of the blocks written.
// `random_share` is the probability that a file is incompressible.
std::vector<uint64_t> lay_out_files(Plan& plan, uint64_t start, uint64_t len, double fill, double random_share,
                                    uint32_t mean_file, Rng& r) {
  std::vector<uint64_t> used;
  if (fill <= 0 || len == 0) return used;
  const double mean_gap = fill >= 1 ? 0 : mean_file * (1 - fill) / fill;
  uint64_t pos = start + r.geometric0(mean_gap / 2);
  const uint64_t end = start + len;
  while (pos < end) {
    const uint64_t file = 1 + r.geometric0(mean_file - 1.0);
    const bool random = r.unit() < random_share;
    for (uint64_t b = pos; b < std::min(end, pos + file); ++b) {
      plan[b] = random ? BlockDesc{r.next(), 0, Kind::kRandom} : BlockDesc{r.next(), 0, Kind::kText};
      used.push_back(b);
    }
    pos += file + r.geometric0(mean_gap);
  }
  return used;
}

struct DiskLayout {
  Plan base;
  std::vector<uint64_t> used;  // non-zero base blocks
};

DiskLayout plan_base_disk(const PairSpec& s, Rng& r) {
  DiskLayout d;
  const uint64_t blocks = blocks_for(s.disk_bytes);
  d.base.resize(blocks);
  const double u = s.base_disk_used_fraction;
  if (u <= 0) return d;
  const uint64_t groups = (blocks + kGroupBlocks - 1) / kGroupBlocks;
  // Density of group g: u * ((1-a) + a*2*(1-x)), x its position in [0,1]:
  // front-loaded when u is small, uniform as u approaches 1.
  const double a = u <= 0.5 ? 1.0 : (1.0 - u) / 0.5;
  for (uint64_t g = 0; g < groups; ++g) {
    const uint64_t start = g * kGroupBlocks;
    const uint64_t len = std::min(kGroupBlocks, blocks - start);
    const double x = (static_cast<double>(g) + 0.5) / static_cast<double>(groups);
    const double f = std::clamp(u * ((1 - a) + a * 2 * (1 - x)), 0.0, 1.0);
    // Group metadata (bitmaps, inode table): structured records.
    const uint64_t meta = std::min<uint64_t>(len, std::max<uint64_t>(1, len / 128));
    for (uint64_t b = start; b < start + meta; ++b) {
      d.base[b] = BlockDesc{r.next(), 0, Kind::kRecords};
      d.used.push_back(b);
    }
    const double file_fill = std::clamp((f * len - meta) / std::max<double>(1, len - meta), 0.0, 1.0);
    auto files =
        lay_out_files(d.base, start + meta, len - meta, file_fill, s.base_disk_random_fraction, s.mean_file_blocks, r);
    d.used.insert(d.used.end(), files.begin(), files.end());
  }
  return d;
}

Plan plan_base_memory(const PairSpec& s, const DiskLayout& disk, Rng& r, PairStats& st) {
  const uint64_t pages = blocks_for(s.memory_bytes);
  Plan mem(pages);
  std::vector<uint64_t> cache_pool = disk.used;
  size_t cursor = 0;
  const double z = s.base_memory_zero_fraction;
  const double rnd = z + s.base_memory_random_fraction;
  const double pc = rnd + s.base_memory_page_cache_fraction;
  for (uint64_t i = 0; i < pages; ++i) {
    const double u = r.unit();
    uint64_t src = 0;
    if (u < z) {
      mem[i] = BlockDesc{};
      ++st.base_memory_zero_pages;
    } else if (u < rnd) {
      mem[i] = BlockDesc{r.next(), 0, Kind::kRandom};
    } else if (u < pc && draw(cache_pool, cursor, r, src)) {
      mem[i] = disk.base[src];
      ++st.base_memory_page_cache_pages;
    } else {
      mem[i] = compressible(r, 0.5);
    }
  }
  return mem;
}

// Free space of the base disk (holes, full blocks only) followed by nothing:
// an allocator that hands out blocks run by run, runs in a shuffled order, as
// a filesystem spreads new files over its free extents.
class FreeSpace {
 public:
  FreeSpace(const Plan& base, uint64_t full_blocks, Rng& r) {
    uint64_t b = 0;
    while (b < full_blocks) {
      if (!base[b].is_zero()) {
        ++b;
        continue;
      }
      const uint64_t s = b;
      while (b < full_blocks && base[b].is_zero()) ++b;
      runs_.push_back({s, b - s});
    }
    for (size_t i = runs_.size(); i > 1; --i) std::swap(runs_[i - 1], runs_[r.below(i)]);
  }
  bool next(uint64_t& block) {
    while (run_ < runs_.size() && used_ >= runs_[run_].second) {
      ++run_;
      used_ = 0;
    }
    if (run_ >= runs_.size()) return false;
    block = runs_[run_].first + used_++;
    return true;
  }

 private:
  std::vector<std::pair<uint64_t, uint64_t>> runs_;
  size_t run_ = 0;
  uint64_t used_ = 0;
};

struct LaunchDisk {
  Plan plan;
  std::vector<uint64_t> changed;  // blocks that differ from the base (page-cache candidates)
};

LaunchDisk plan_launch_disk(const PairSpec& s, const DiskLayout& base, Rng& r, PairStats& st) {
  LaunchDisk ld;
  const uint64_t base_blocks = base.base.size();
  const uint64_t base_full = s.disk_bytes / kBlock;  // blocks entirely inside the base disk
  const uint64_t launch_blocks = blocks_for(s.launch_disk_bytes());
  ld.plan = base.base;
  ld.plan.resize(launch_blocks);

  // In-place edits of used blocks (metadata, counters).
  {
    std::vector<uint64_t> pool;
    pool.reserve(base.used.size());
    for (uint64_t b : base.used) {
      if (b < base_full) pool.push_back(b);
    }
    size_t cursor = 0;
    uint64_t b = 0;
    for (uint64_t i = 0; i < s.disk_edited_blocks && draw(pool, cursor, r, b); ++i) {
      ld.plan[b].edit = static_cast<uint32_t>(i + 1);
      ld.changed.push_back(b);
      ++st.disk_edited_blocks;
    }
  }

  const uint64_t fresh_total = s.disk_fresh_compressible_blocks + s.disk_fresh_random_blocks;
  const double random_share =
      fresh_total == 0 ? 0.25 : static_cast<double>(s.disk_fresh_random_blocks) / static_cast<double>(fresh_total);

  // The grown region: fresh files with gaps. The block straddling the old end
  // (when the base size is not a multiple of 4 KiB) keeps its base content.
  const uint64_t grow_begin = base_blocks;
  std::vector<std::vector<uint64_t>> files;  // fresh files, for duplication
  if (launch_blocks > grow_begin && s.disk_growth_data_fraction > 0) {
    auto grown = lay_out_files(ld.plan, grow_begin, launch_blocks - grow_begin, s.disk_growth_data_fraction,
                               random_share, s.mean_file_blocks, r);
    for (uint64_t b : grown) {
      ld.plan[b].kind == Kind::kRandom ? ++st.disk_fresh_random_blocks : ++st.disk_fresh_compressible_blocks;
      ld.changed.push_back(b);
    }
    st.disk_grown_data_blocks = grown.size();
    if (!grown.empty()) files.push_back(std::move(grown));
  }

  // Fresh files in the base's free space.
  FreeSpace free_space(base.base, base_full, r);
  uint64_t left_text = s.disk_fresh_compressible_blocks;
  uint64_t left_random = s.disk_fresh_random_blocks;
  bool full = false;
  while ((left_text > 0 || left_random > 0) && !full) {
    const bool random = r.below(left_text + left_random) < left_random;
    uint64_t& left = random ? left_random : left_text;
    const uint64_t len = std::min(left, 1 + r.geometric0(s.mean_file_blocks - 1.0));
    std::vector<uint64_t> file;
    uint64_t b = 0;
    for (uint64_t i = 0; i < len; ++i) {
      if (!free_space.next(b)) {
        full = true;
        break;
      }
      ld.plan[b] = random ? BlockDesc{r.next(), 0, Kind::kRandom} : compressible(r, 0.75);
      ld.changed.push_back(b);
      file.push_back(b);
      --left;
      random ? ++st.disk_fresh_random_blocks : ++st.disk_fresh_compressible_blocks;
    }
    if (!file.empty()) files.push_back(std::move(file));
  }

  // Duplicates: whole (or leading parts of) fresh files copied elsewhere.
  uint64_t left_dup = files.empty() ? 0 : s.disk_duplicate_blocks;
  while (left_dup > 0 && !full) {
    const auto& src = files[r.below(files.size())];
    const uint64_t len = std::min<uint64_t>(left_dup, src.size());
    uint64_t b = 0;
    for (uint64_t i = 0; i < len; ++i) {
      if (!free_space.next(b)) {
        full = true;
        break;
      }
      ld.plan[b] = ld.plan[src[i]];
      ld.changed.push_back(b);
      --left_dup;
      ++st.disk_duplicate_blocks;
    }
  }
  return ld;
}

Plan plan_launch_memory(const PairSpec& s, const Plan& base_mem, const DiskLayout& disk, const LaunchDisk& ldisk,
                        Rng& r, PairStats& st) {
  Plan mem = base_mem;
  const uint64_t full_pages = s.memory_bytes / kBlock;  // a partial last page is never changed
  std::vector<uint64_t> zero_pool, nonzero_pool;
  for (uint64_t i = 0; i < full_pages; ++i) (base_mem[i].is_zero() ? zero_pool : nonzero_pool).push_back(i);
  const std::vector<uint64_t> nonzero_sources = nonzero_pool;
  size_t zc = 0, nc = 0;
  uint64_t page = 0;

  auto take_nonzero = [&](uint64_t& p) { return draw(nonzero_pool, nc, r, p); };
  // New content mostly lands on free (zero) pages.
  auto take_target = [&](uint64_t& p) {
    if (r.unit() < s.memory_new_on_free_fraction) {
      return draw(zero_pool, zc, r, p) || draw(nonzero_pool, nc, r, p);
    }
    return draw(nonzero_pool, nc, r, p) || draw(zero_pool, zc, r, p);
  };

  for (uint64_t i = 0; i < s.memory_edited_pages && take_nonzero(page); ++i) {
    mem[page].edit = static_cast<uint32_t>(i + 1);
    ++st.memory_edited_pages;
  }
  for (uint64_t i = 0; i < s.memory_zeroed_pages && take_nonzero(page); ++i) {
    mem[page] = BlockDesc{};
    ++st.memory_zeroed_pages;
  }
  // Copies from elsewhere: the source must differ from what the target held.
  auto place_copy = [&](const BlockDesc& d) {
    if (!take_target(page)) return false;
    mem[page] = d;
    return true;
  };
  if (!nonzero_sources.empty()) {
    auto any_source = [&] { return base_mem[nonzero_sources[r.below(nonzero_sources.size())]]; };
    for (uint64_t i = 0; i < s.memory_moved_pages; ++i) {
      if (!take_target(page)) break;
      BlockDesc d = any_source();
      if (d == base_mem[page]) d = any_source();  // drew the page itself: draw again
      if (d == base_mem[page]) continue;
      mem[page] = d;
      ++st.memory_moved_pages;
    }
  }
  if (!disk.used.empty()) {
    for (uint64_t i = 0; i < s.memory_base_disk_copies; ++i) {
      const BlockDesc d = disk.base[disk.used[r.below(disk.used.size())]];
      if (!take_target(page)) break;
      if (base_mem[page] == d) continue;  // the base already cached that block here
      mem[page] = d;
      ++st.memory_base_disk_copies;
    }
  }
  {
    // Only whole launch-disk blocks: a partial last block cannot equal a page.
    const uint64_t whole = s.launch_disk_bytes() / kBlock;
    std::vector<uint64_t> pool;
    std::copy_if(ldisk.changed.begin(), ldisk.changed.end(), std::back_inserter(pool),
                 [whole](uint64_t b) { return b < whole; });
    size_t cursor = 0;
    uint64_t b = 0;
    for (uint64_t i = 0; i < s.memory_page_cache_copies && draw(pool, cursor, r, b); ++i) {
      if (!place_copy(ldisk.plan[b])) break;
      ++st.memory_page_cache_copies;
    }
  }
  std::vector<BlockDesc> fresh;
  for (uint64_t i = 0; i < s.memory_fresh_compressible_pages; ++i) {
    const BlockDesc d = compressible(r, 0.5);
    if (!place_copy(d)) break;
    fresh.push_back(d);
    ++st.memory_fresh_compressible_pages;
  }
  for (uint64_t i = 0; i < s.memory_fresh_random_pages; ++i) {
    const BlockDesc d{r.next(), 0, Kind::kRandom};
    if (!place_copy(d)) break;
    fresh.push_back(d);
    ++st.memory_fresh_random_pages;
  }
  if (!fresh.empty()) {
    for (uint64_t i = 0; i < s.memory_duplicate_pages; ++i) {
      if (!place_copy(fresh[r.below(fresh.size())])) break;
      ++st.memory_duplicate_pages;
    }
  }
  return mem;
}

// ---------------------------------------------------------------------------
// Writing.

struct ImageJob {
  const Plan* base;
  const Plan* launch;
  io::File* base_file;
  io::File* launch_file;
  uint64_t base_bytes;
  uint64_t launch_bytes;
  uint64_t chunks;
};

uint64_t block_len(uint64_t b, uint64_t bytes) { return std::min(kBlock, bytes - b * kBlock); }

uint64_t data_bytes(const Plan& p, uint64_t bytes) {
  uint64_t n = 0;
  for (uint64_t b = 0; b < p.size(); ++b) {
    if (!p[b].is_zero()) n += block_len(b, bytes);
  }
  return n;
}

// Writes the runs of non-zero blocks in [b0, b1) of `plan` from buf (block b0
// at buf[0]); zero blocks stay holes. Returns the bytes written.
uint64_t write_runs(io::File& f, const Plan& plan, uint64_t bytes, uint64_t b0, uint64_t b1, const std::byte* buf) {
  uint64_t written = 0;
  uint64_t b = b0;
  while (b < b1) {
    if (plan[b].is_zero()) {
      ++b;
      continue;
    }
    const uint64_t s = b;
    while (b < b1 && !plan[b].is_zero()) ++b;
    const uint64_t off = s * kBlock;
    const uint64_t len = std::min(b * kBlock, bytes) - off;
    f.pwrite_full(std::span<const std::byte>(buf + (s - b0) * kBlock, len), off);
    written += len;
  }
  return written;
}

void write_images(const std::vector<ImageJob>& jobs, const ContentGenerator& gen, uint64_t total,
                  const ProgressFn& progress, const CancelToken* cancel, PairStats& st) {
  uint64_t chunks = 0;
  for (const auto& j : jobs) chunks += j.chunks;
  std::atomic<uint64_t> done{0};
  std::mutex progress_mu;
  tbb::enumerable_thread_specific<std::vector<std::byte>> buffers(
      [] { return std::vector<std::byte>(kChunkBlocks * kBlock); });

  report(progress, "writing images", 0, total);
  tbb::parallel_for(tbb::blocked_range<uint64_t>(0, chunks, 1), [&](const tbb::blocked_range<uint64_t>& range) {
    std::byte* buf = buffers.local().data();
    for (uint64_t c = range.begin(); c != range.end(); ++c) {
      throw_if_cancelled(cancel);
      uint64_t local = c;
      size_t ji = 0;
      while (local >= jobs[ji].chunks) local -= jobs[ji++].chunks;
      const ImageJob& j = jobs[ji];
      const uint64_t b0 = local * kChunkBlocks;
      const uint64_t base_end = std::min<uint64_t>(b0 + kChunkBlocks, j.base->size());
      const uint64_t launch_end = std::min<uint64_t>(b0 + kChunkBlocks, j.launch->size());
      uint64_t written = 0;
      for (uint64_t b = b0; b < base_end; ++b) {
        if (!(*j.base)[b].is_zero()) gen.fill((*j.base)[b], buf + (b - b0) * kBlock);
      }
      if (b0 < base_end) written += write_runs(*j.base_file, *j.base, j.base_bytes, b0, base_end, buf);
      for (uint64_t b = b0; b < launch_end; ++b) {
        const BlockDesc& d = (*j.launch)[b];
        const bool same = b < j.base->size() && (*j.base)[b] == d;
        if (!same && !d.is_zero()) gen.fill(d, buf + (b - b0) * kBlock);
      }
      if (b0 < launch_end) written += write_runs(*j.launch_file, *j.launch, j.launch_bytes, b0, launch_end, buf);
      done.fetch_add(written);
      if (progress) {
        std::lock_guard<std::mutex> lock(progress_mu);
        report(progress, "writing images", done.load(), total);
      }
    }
  });
  st.bytes_written += done.load();
}

// devstate.bin: device registers and queues (records), text (names, ids) and
// zero padding; the launch's differs in `changed` scattered bytes.
std::vector<std::byte> devstate_bytes(const ContentGenerator& gen, uint64_t size, uint64_t seed) {
  std::vector<std::byte> out(blocks_for(size) * kBlock);
  Rng r(splitmix64(seed ^ 0x6465767374617465ull));
  for (uint64_t b = 0; b * kBlock < size; ++b) {
    const double u = r.unit();
    const uint64_t key = r.next();
    std::byte* p = out.data() + b * kBlock;
    if (u < 0.6) {
      gen.fill_records(key, p);
    } else if (u < 0.75) {
      gen.fill_text(key, p);
    }  // else zero padding (the vector starts zeroed)
  }
  out.resize(size);
  return out;
}

void change_bytes(std::vector<std::byte>& data, uint32_t count, uint64_t seed) {
  if (data.empty()) return;
  count = static_cast<uint32_t>(std::min<uint64_t>(count, data.size()));
  Rng r(splitmix64(seed ^ 0x6368616e676564ull));
  std::vector<bool> changed(data.size());
  uint32_t n = 0;
  while (n < count) {
    uint64_t pos = r.below(data.size());
    const uint64_t run = 1 + r.below(8);  // a field of 1-8 bytes
    for (uint64_t i = 0; i < run && n < count && pos < data.size(); ++i, ++pos) {
      if (changed[pos]) continue;
      data[pos] ^= static_cast<std::byte>(1 + r.below(255));
      changed[pos] = true;
      ++n;
    }
  }
}

std::string vm_json(const PairSpec& s, std::string_view role, uint64_t disk_bytes) {
  std::string j = "{\n";
  j += "  \"synthetic\": true,\n";
  j += "  \"role\": \"" + std::string(role) + "\",\n";
  j += "  \"profile\": \"" + s.profile_name + "\",\n";
  j += "  \"seed\": " + std::to_string(s.seed) + ",\n";
  j += "  \"machine\": \"pc-i440fx-7.2\",\n";
  j += "  \"cpus\": 2,\n";
  j += "  \"memory_bytes\": " + std::to_string(s.memory_bytes) + ",\n";
  j += "  \"disk_bytes\": " + std::to_string(disk_bytes) + "\n";
  j += "}\n";
  return j;
}

void write_small(const std::string& path, std::span<const std::byte> data) {
  io::File f = io::File::create(path);
  f.pwrite_full(data, 0);
}

void make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) throw io_error("cannot create directory", path, errno);
}

void validate(const PairSpec& s) {
  auto bad = [](const std::string& m) { throw Error(ErrorCode::kUsage, m); };
  if (s.memory_bytes == 0) bad("memory size must be at least 1 byte");
  if (s.disk_bytes < 512 || s.disk_bytes % 512 != 0) bad("disk size must be a positive multiple of 512 bytes");
  if (s.disk_growth_bytes % 512 != 0) bad("disk growth must be a multiple of 512 bytes");
  const std::pair<const char*, double> fractions[] = {
      {"base_memory_zero_fraction", s.base_memory_zero_fraction},
      {"base_memory_random_fraction", s.base_memory_random_fraction},
      {"base_memory_page_cache_fraction", s.base_memory_page_cache_fraction},
      {"base_disk_used_fraction", s.base_disk_used_fraction},
      {"base_disk_random_fraction", s.base_disk_random_fraction},
      {"memory_new_on_free_fraction", s.memory_new_on_free_fraction},
      {"disk_growth_data_fraction", s.disk_growth_data_fraction},
  };
  for (const auto& [name, v] : fractions) {
    if (!(v >= 0 && v <= 1)) bad(std::string(name) + " must be in [0, 1]");
  }
  if (s.base_memory_zero_fraction + s.base_memory_random_fraction + s.base_memory_page_cache_fraction > 1 + 1e-9) {
    bad("base memory fractions (zero + random + page cache) must not exceed 1");
  }
  if (s.mean_file_blocks < 1) bad("mean_file_blocks must be at least 1");
  if (s.edit_max_bytes < 1 || s.edit_max_bytes > kBlock) bad("edit_max_bytes must be in [1, 4096]");
}

}  // namespace

const std::vector<std::string_view>& PairSpec::profile_names() {
  static const std::vector<std::string_view> names = {"typical", "decode-heavy"};
  return names;
}

PairSpec PairSpec::profile(std::string_view name, uint64_t memory_bytes, uint64_t disk_bytes, uint64_t seed) {
  PairSpec s;
  s.memory_bytes = memory_bytes;
  s.disk_bytes = disk_bytes;
  s.seed = seed;
  s.profile_name = std::string(name);
  const double pages = static_cast<double>(memory_bytes / kBlock);
  const double blocks = static_cast<double>(disk_bytes / kBlock);
  auto of = [](double n, double f) { return static_cast<uint64_t>(std::llround(n * f)); };
  // Grown disk: 1/64 of the disk, between 1 and 256 MiB, half of it holding new files.
  s.disk_growth_bytes = std::clamp<uint64_t>(disk_bytes / 64 / 4096 * 4096, 1ull << 20, 256ull << 20);
  s.disk_growth_data_fraction = 0.5;
  const double grown = static_cast<double>(s.disk_growth_bytes / kBlock) * s.disk_growth_data_fraction;

  if (name == "typical") {
    // An app install (background.md: python3 + numpy into Debian minbase):
    // ~47% of memory pages differ, over half of them page cache of new disk
    // blocks; ~6.5% of disk blocks differ, ~7% of those duplicates.
    s.base_memory_zero_fraction = 0.50;
    s.base_memory_random_fraction = 0.08;
    s.base_memory_page_cache_fraction = 0.12;
    s.base_disk_used_fraction = 0.30;
    s.base_disk_random_fraction = 0.25;

    // Disk: differing ~= 6.5% of the base blocks, including the grown data.
    const double differing = blocks * 0.065;
    s.disk_duplicate_blocks = of(differing, 0.07);
    s.disk_edited_blocks = of(differing, 0.12);
    const double fresh = std::max(0.0, differing - grown - static_cast<double>(s.disk_duplicate_blocks) -
                                           static_cast<double>(s.disk_edited_blocks));
    s.disk_fresh_compressible_blocks = of(fresh, 0.72);
    s.disk_fresh_random_blocks = of(fresh, 0.28);

    // Memory: ~46% of pages differ.
    const double new_disk = differing;  // page-cache candidates
    s.memory_page_cache_copies = std::min(of(pages, 0.25), of(new_disk, 0.92));
    s.memory_moved_pages = of(pages, 0.04);
    s.memory_base_disk_copies = of(pages, 0.02);
    s.memory_zeroed_pages = of(pages, 0.02);
    s.memory_edited_pages = of(pages, 0.03);
    s.memory_fresh_compressible_pages = of(pages, 0.06);
    s.memory_fresh_random_pages = of(pages, 0.03);
    s.memory_duplicate_pages = of(pages, 0.01);
    // If the disk is small next to the memory, fewer page-cache copies are
    // possible; keep the share of differing pages by adding fresh data.
    const uint64_t want_cache = of(pages, 0.25);
    if (s.memory_page_cache_copies < want_cache) {
      s.memory_fresh_compressible_pages += want_cache - s.memory_page_cache_copies;
    }
  } else if (name == "decode-heavy") {
    // The launch holds mostly fresh compressible data that appears nowhere
    // else (a generated data set, a JIT heap): dedup removes little and the
    // synthesizer spends its time decompressing.
    s.base_memory_zero_fraction = 0.60;
    s.base_memory_random_fraction = 0.05;
    s.base_memory_page_cache_fraction = 0.08;
    s.base_disk_used_fraction = 0.30;
    s.base_disk_random_fraction = 0.25;

    const double differing = blocks * 0.10;
    s.disk_duplicate_blocks = of(differing, 0.01);
    s.disk_edited_blocks = of(differing, 0.03);
    const double fresh = std::max(0.0, differing - grown - static_cast<double>(s.disk_duplicate_blocks) -
                                           static_cast<double>(s.disk_edited_blocks));
    s.disk_fresh_compressible_blocks = of(fresh, 0.95);
    s.disk_fresh_random_blocks = of(fresh, 0.05);

    s.memory_page_cache_copies = std::min(of(pages, 0.03), of(differing, 0.5));
    s.memory_moved_pages = of(pages, 0.01);
    s.memory_base_disk_copies = of(pages, 0.005);
    s.memory_zeroed_pages = of(pages, 0.005);
    s.memory_edited_pages = of(pages, 0.01);
    s.memory_fresh_compressible_pages = of(pages, 0.40);
    s.memory_fresh_random_pages = of(pages, 0.01);
    s.memory_duplicate_pages = 0;
    s.disk_growth_data_fraction = 0.5;
  } else {
    std::string valid;
    for (auto n : profile_names()) valid += (valid.empty() ? "" : ", ") + std::string(n);
    throw Error(ErrorCode::kUsage, "unknown profile '" + std::string(name) + "' (valid: " + valid + ")");
  }
  return s;
}

PairStats generate_pair(const PairSpec& spec, const std::string& out_dir, ProgressFn progress,
                        const CancelToken* cancel) {
  validate(spec);
  report(progress, "planning");
  PairStats st;
  Rng r(splitmix64(spec.seed));
  const ContentGenerator gen(spec.seed, spec.edit_max_bytes);

  const DiskLayout disk = plan_base_disk(spec, r);
  st.base_disk_used_blocks = disk.used.size();
  const Plan base_mem = plan_base_memory(spec, disk, r, st);
  const LaunchDisk launch_disk = plan_launch_disk(spec, disk, r, st);
  const Plan launch_mem = plan_launch_memory(spec, base_mem, disk, launch_disk, r, st);

  st.memory_pages = base_mem.size();
  st.base_disk_blocks = disk.base.size();
  st.launch_disk_blocks = launch_disk.plan.size();
  for (uint64_t i = 0; i < base_mem.size(); ++i) st.memory_pages_differing += !(base_mem[i] == launch_mem[i]);
  for (uint64_t i = 0; i < launch_disk.plan.size(); ++i) {
    const bool in_base = i < disk.base.size();
    const bool straddles = in_base && block_len(i, spec.disk_bytes) < block_len(i, spec.launch_disk_bytes());
    if (in_base ? !(disk.base[i] == launch_disk.plan[i]) || (straddles && !launch_disk.plan[i].is_zero())
                : !launch_disk.plan[i].is_zero()) {
      ++st.disk_blocks_differing;
    }
  }

  make_dir(out_dir);
  const VmDir base{out_dir + "/base"};
  const VmDir launch{out_dir + "/launch"};
  make_dir(base.path);
  make_dir(launch.path);

  io::File base_mem_f = io::File::create(base.image(ImageKind::kMemory));
  io::File launch_mem_f = io::File::create(launch.image(ImageKind::kMemory));
  io::File base_disk_f = io::File::create(base.image(ImageKind::kDisk));
  io::File launch_disk_f = io::File::create(launch.image(ImageKind::kDisk));
  base_mem_f.truncate(spec.memory_bytes);
  launch_mem_f.truncate(spec.memory_bytes);
  base_disk_f.truncate(spec.disk_bytes);
  launch_disk_f.truncate(spec.launch_disk_bytes());

  const uint64_t total = data_bytes(base_mem, spec.memory_bytes) + data_bytes(launch_mem, spec.memory_bytes) +
                         data_bytes(disk.base, spec.disk_bytes) +
                         data_bytes(launch_disk.plan, spec.launch_disk_bytes());
  const std::vector<ImageJob> jobs = {
      {&base_mem, &launch_mem, &base_mem_f, &launch_mem_f, spec.memory_bytes, spec.memory_bytes,
       (base_mem.size() + kChunkBlocks - 1) / kChunkBlocks},
      {&disk.base, &launch_disk.plan, &base_disk_f, &launch_disk_f, spec.disk_bytes, spec.launch_disk_bytes(),
       (launch_disk.plan.size() + kChunkBlocks - 1) / kChunkBlocks},
  };
  write_images(jobs, gen, total, progress, cancel, st);

  std::vector<std::byte> dev = devstate_bytes(gen, spec.devstate_bytes, spec.seed);
  write_small(base.file(kDevStateName), dev);
  change_bytes(dev, spec.devstate_changed_bytes, spec.seed);
  write_small(launch.file(kDevStateName), dev);
  for (const auto& [dir, role, size] :
       {std::tuple{&base, "base", spec.disk_bytes}, std::tuple{&launch, "launch", spec.launch_disk_bytes()}}) {
    const std::string j = vm_json(spec, role, size);
    write_small(dir->file(kVmJsonName), std::as_bytes(std::span(j)));
  }
  return st;
}

}  // namespace vmsynth
