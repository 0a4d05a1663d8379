// Tests of the synthetic base/launch pair generator (tools/gen_pair/synthetic_pair.h):
// determinism, exact sizes, sparseness and that every phenomenon is present in
// the bytes (not just in the statistics).
#include "tools/gen_pair/synthetic_pair.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "testutil/temp_dir.h"

#if __has_include(<zstd.h>)
#include <zstd.h>
#define VMSYNTH_HAVE_ZSTD 1
#endif

namespace vmsynth {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr size_t kPage = kSyntheticBlockSize;

using testutil::TempDir;


std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint64_t file_size(const std::string& path) { return std::filesystem::file_size(path); }

// Splits an image into 4 KiB blocks (the last may be partial).
std::vector<std::string_view> blocks_of(const std::string& img) {
  std::vector<std::string_view> out;
  for (size_t off = 0; off < img.size(); off += kPage) {
    out.emplace_back(img.data() + off, std::min(kPage, img.size() - off));
  }
  return out;
}

bool is_zero(std::string_view b) {
  return std::all_of(b.begin(), b.end(), [](char c) { return c == 0; });
}

size_t bytes_differing(std::string_view a, std::string_view b) {
  size_t n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n + std::max(a.size(), b.size()) - std::min(a.size(), b.size());
}

struct Pair {
  std::string base_mem, launch_mem, base_disk, launch_disk;
};

Pair load(const std::string& dir) {
  return {read_file(dir + "/base/memory.img"), read_file(dir + "/launch/memory.img"), read_file(dir + "/base/disk.img"),
          read_file(dir + "/launch/disk.img")};
}

// Indices of launch blocks that differ from the base block at the same offset
// (blocks past the base's end count when non-zero).
std::vector<size_t> differing(const std::vector<std::string_view>& base, const std::vector<std::string_view>& launch) {
  std::vector<size_t> out;
  for (size_t i = 0; i < launch.size(); ++i) {
    if (i >= base.size()) {
      if (!is_zero(launch[i])) out.push_back(i);
    } else if (base[i].size() == launch[i].size()) {
      if (base[i] != launch[i]) out.push_back(i);
    } else if (launch[i].substr(0, base[i].size()) != base[i] || !is_zero(launch[i].substr(base[i].size()))) {
      out.push_back(i);  // the block straddling the end of a grown disk
    }
  }
  return out;
}

PairSpec small_typical(uint64_t seed = 7) {
  // Memory deliberately not a multiple of 4 KiB; disk a multiple of 512 only.
  return PairSpec::profile("typical", 8 * kMiB + 1000, 16 * kMiB + 3 * 512, seed);
}

// Everything off: base and launch identical except what a test turns on.
PairSpec quiet_spec(uint64_t seed = 3) {
  PairSpec s;
  s.memory_bytes = 4 * kMiB;
  s.disk_bytes = 8 * kMiB;
  s.seed = seed;
  return s;
}

class SyntheticPairTest : public ::testing::Test {
 protected:
  TempDir tmp_;
};

TEST_F(SyntheticPairTest, SameSeedGivesIdenticalFilesAndOtherSeedDiffers) {
  const PairSpec spec = small_typical(11);
  generate_pair(spec, tmp_.sub("a"));
  generate_pair(spec, tmp_.sub("b"));
  PairSpec other = spec;
  other.seed = 12;
  generate_pair(other, tmp_.sub("c"));
  for (const char* vm : {"base", "launch"}) {
    for (const char* f : {"memory.img", "disk.img", "devstate.bin", "vm.json"}) {
      const std::string rel = std::string("/") + vm + "/" + f;
      EXPECT_EQ(read_file(tmp_.sub("a") + rel), read_file(tmp_.sub("b") + rel)) << rel;
    }
    for (const char* f : {"memory.img", "disk.img", "devstate.bin"}) {
      const std::string rel = std::string("/") + vm + "/" + f;
      EXPECT_NE(read_file(tmp_.sub("a") + rel), read_file(tmp_.sub("c") + rel)) << rel;
    }
  }
}

TEST_F(SyntheticPairTest, SizesAreExactAndDiskGrows) {
  const PairSpec spec = small_typical();
  ASSERT_GT(spec.disk_growth_bytes, 0u);
  const PairStats st = generate_pair(spec, tmp_.path());
  const std::string d = tmp_.path();
  EXPECT_EQ(file_size(d + "/base/memory.img"), 8 * kMiB + 1000);
  EXPECT_EQ(file_size(d + "/launch/memory.img"), 8 * kMiB + 1000);
  EXPECT_EQ(file_size(d + "/base/disk.img"), 16 * kMiB + 1536);
  EXPECT_EQ(file_size(d + "/launch/disk.img"), 16 * kMiB + 1536 + spec.disk_growth_bytes);
  EXPECT_EQ(file_size(d + "/base/devstate.bin"), 365556u);
  EXPECT_EQ(file_size(d + "/launch/devstate.bin"), 365556u);
  EXPECT_EQ(st.memory_pages, (8 * kMiB + 1000 + kPage - 1) / kPage);

  // The grown region holds data.
  const std::string launch_disk = read_file(d + "/launch/disk.img");
  EXPECT_FALSE(is_zero(std::string_view(launch_disk).substr(spec.disk_bytes)));
  EXPECT_GT(st.disk_grown_data_blocks, 0u);

  for (const char* vm : {"base", "launch"}) {
    const std::string j = read_file(d + "/" + vm + "/vm.json");
    EXPECT_NE(j.find("\"synthetic\": true"), std::string::npos) << j;
    EXPECT_NE(j.find("\"memory_bytes\": " + std::to_string(8 * kMiB + 1000)), std::string::npos) << j;
  }
  EXPECT_NE(read_file(d + "/launch/vm.json").find(std::to_string(spec.launch_disk_bytes())), std::string::npos);
}

TEST_F(SyntheticPairTest, DiskImagesAreSparse) {
  const PairSpec spec = small_typical();
  generate_pair(spec, tmp_.path());
  struct stat st {};
  ASSERT_EQ(::stat((tmp_.path() + "/base/disk.img").c_str(), &st), 0);
  const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  EXPECT_LT(allocated, spec.disk_bytes * 6 / 10) << "allocated " << allocated;
  // Used blocks are allocated, not holes only.
  EXPECT_GT(allocated, spec.disk_bytes / 10);
}

TEST_F(SyntheticPairTest, TypicalPairHasEveryPhenomenon) {
  const PairSpec spec = small_typical();
  const PairStats st = generate_pair(spec, tmp_.path());
  const Pair p = load(tmp_.path());
  const auto bm = blocks_of(p.base_mem), lm = blocks_of(p.launch_mem);
  const auto bd = blocks_of(p.base_disk), ld = blocks_of(p.launch_disk);
  ASSERT_EQ(bm.size(), lm.size());

  // Base memory mixes zero, compressible and random pages.
  const size_t base_zero = std::count_if(bm.begin(), bm.end(), is_zero);
  EXPECT_GT(base_zero, bm.size() / 5);
  EXPECT_LT(base_zero, bm.size() * 4 / 5);
  EXPECT_EQ(base_zero, st.base_memory_zero_pages);

  const auto mem_diff = differing(bm, lm);
  const auto disk_diff = differing(bd, ld);
  EXPECT_EQ(mem_diff.size(), st.memory_pages_differing);
  EXPECT_EQ(disk_diff.size(), st.disk_blocks_differing);

  // Zeroed pages.
  size_t zeroed = 0;
  for (size_t i : mem_diff) zeroed += is_zero(lm[i]) && !is_zero(bm[i]);
  EXPECT_GE(zeroed, 1u);
  EXPECT_EQ(zeroed, st.memory_zeroed_pages);

  // Moved pages: a differing launch page equal to a base page elsewhere.
  std::unordered_map<std::string_view, size_t> base_pages;
  for (size_t i = 0; i < bm.size(); ++i) {
    if (!is_zero(bm[i])) base_pages.emplace(bm[i], i);
  }
  size_t moved = 0;
  for (size_t i : mem_diff) {
    auto it = base_pages.find(lm[i]);
    moved += it != base_pages.end() && it->second != i;
  }
  EXPECT_GE(moved, st.memory_moved_pages);
  EXPECT_GT(st.memory_moved_pages, 0u);

  // Page-cache copies: launch pages equal to launch disk blocks that changed.
  std::set<std::string_view> new_disk;
  for (size_t i : disk_diff) new_disk.insert(ld[i]);
  size_t cached = 0;
  for (size_t i : mem_diff) cached += new_disk.count(lm[i]);
  EXPECT_GE(cached, st.memory_page_cache_copies);
  EXPECT_GT(st.memory_page_cache_copies, 0u);

  // Small in-place edits, in memory and on disk.
  size_t mem_edits = 0, disk_edits = 0;
  for (size_t i : mem_diff) {
    const size_t n = bytes_differing(bm[i], lm[i]);
    mem_edits += !is_zero(bm[i]) && n > 0 && n <= spec.edit_max_bytes;
  }
  for (size_t i : disk_diff) {
    if (i >= bd.size()) continue;
    const size_t n = bytes_differing(bd[i], ld[i]);
    disk_edits += !is_zero(bd[i]) && n > 0 && n <= spec.edit_max_bytes;
  }
  EXPECT_EQ(mem_edits, st.memory_edited_pages);
  EXPECT_EQ(disk_edits, st.disk_edited_blocks);
  EXPECT_GT(mem_edits, 0u);
  EXPECT_GT(disk_edits, 0u);

  // Duplicates inside the launch disk: changed blocks that occur twice or more.
  std::map<std::string_view, size_t> counts;
  for (size_t i : disk_diff) ++counts[ld[i]];
  size_t dup_blocks = 0;
  for (const auto& [content, n] : counts) dup_blocks += n > 1 ? n - 1 : 0;
  EXPECT_GE(dup_blocks, st.disk_duplicate_blocks);
  EXPECT_GT(st.disk_duplicate_blocks, 0u);

  // Fresh data of both kinds was placed.
  EXPECT_GT(st.memory_fresh_compressible_pages, 0u);
  EXPECT_GT(st.memory_fresh_random_pages, 0u);
  EXPECT_GT(st.disk_fresh_compressible_blocks, 0u);
  EXPECT_GT(st.disk_fresh_random_blocks, 0u);

  // devstate.bin: the launch's differs in a few hundred bytes at most.
  const std::string bdev = read_file(tmp_.path() + "/base/devstate.bin");
  const std::string ldev = read_file(tmp_.path() + "/launch/devstate.bin");
  EXPECT_EQ(bytes_differing(bdev, ldev), spec.devstate_changed_bytes);
}

// The proportions background.md reports for a real pair, at a 1:4 memory:disk
// ratio like its 512 MiB / 2 GiB VM.
TEST_F(SyntheticPairTest, TypicalProportionsFollowRealPair) {
  const PairSpec spec = PairSpec::profile("typical", 8 * kMiB, 32 * kMiB, 5);
  const PairStats st = generate_pair(spec, tmp_.path());
  const double pages = static_cast<double>(st.memory_pages);
  const double blocks = static_cast<double>(st.base_disk_blocks);
  EXPECT_NEAR(st.memory_pages_differing / pages, 0.46, 0.05);
  EXPECT_GT(st.memory_page_cache_copies, st.memory_pages_differing / 2);
  EXPECT_NEAR(st.disk_blocks_differing / blocks, 0.065, 0.015);
  EXPECT_NEAR(static_cast<double>(st.disk_duplicate_blocks) / st.disk_blocks_differing, 0.07, 0.03);
}

TEST_F(SyntheticPairTest, DecodeHeavyIsMostlyFreshCompressible) {
  const PairSpec spec = PairSpec::profile("decode-heavy", 8 * kMiB, 32 * kMiB, 5);
  const PairStats st = generate_pair(spec, tmp_.path());
  EXPECT_GT(st.memory_fresh_compressible_pages, st.memory_pages_differing * 8 / 10);
  EXPECT_GT(st.disk_fresh_compressible_blocks, st.disk_blocks_differing * 8 / 10);
  EXPECT_LT(st.memory_page_cache_copies, st.memory_pages_differing / 10);
}

// A custom shape: everything off except N fresh compressible disk blocks.
TEST_F(SyntheticPairTest, CustomShapeOnlyFreshBlocks) {
  PairSpec s = quiet_spec();
  s.disk_fresh_compressible_blocks = 300;
  const PairStats st = generate_pair(s, tmp_.path());
  const Pair p = load(tmp_.path());
  EXPECT_EQ(p.base_mem, p.launch_mem);
  EXPECT_EQ(p.base_disk.size(), p.launch_disk.size());
  const auto bd = blocks_of(p.base_disk), ld = blocks_of(p.launch_disk);
  const auto diff = differing(bd, ld);
  EXPECT_EQ(diff.size(), 300u);
  EXPECT_EQ(st.disk_fresh_compressible_blocks, 300u);
  EXPECT_EQ(st.disk_blocks_differing, 300u);
  EXPECT_EQ(st.memory_pages_differing, 0u);
  // New files land in free space: the base blocks there were holes.
  for (size_t i : diff) EXPECT_TRUE(is_zero(bd[i])) << i;
  // All distinct: fresh data does not dedup.
  std::set<std::string_view> distinct;
  for (size_t i : diff) distinct.insert(ld[i]);
  EXPECT_EQ(distinct.size(), diff.size());
}

TEST_F(SyntheticPairTest, CountsAreClampedToWhatFits) {
  PairSpec s = quiet_spec();
  s.memory_bytes = 64 * kPage;
  s.memory_edited_pages = 1000;     // more than there are non-zero pages
  s.memory_page_cache_copies = 10;  // no changed disk blocks to copy
  const PairStats st = generate_pair(s, tmp_.path());
  EXPECT_LE(st.memory_edited_pages, 64u);
  EXPECT_GT(st.memory_edited_pages, 0u);
  EXPECT_EQ(st.memory_page_cache_copies, 0u);
}

#ifdef VMSYNTH_HAVE_ZSTD
double zstd_ratio(const std::string& data, int level) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), level);
  EXPECT_FALSE(ZSTD_isError(n));
  return static_cast<double>(data.size()) / static_cast<double>(n);
}

std::string fresh_disk_data(const Pair& p) {
  const auto bd = blocks_of(p.base_disk), ld = blocks_of(p.launch_disk);
  std::string out;
  for (size_t i : differing(bd, ld)) out.append(ld[i]);
  return out;
}

TEST_F(SyntheticPairTest, FreshCompressibleDataCompressesLikeTextOrCode) {
  PairSpec s = quiet_spec();
  s.disk_fresh_compressible_blocks = 512;  // 2 MiB
  generate_pair(s, tmp_.path());
  const std::string data = fresh_disk_data(load(tmp_.path()));
  ASSERT_EQ(data.size(), 512 * kPage);
  const double r3 = zstd_ratio(data, 3);
  const double r19 = zstd_ratio(data, 19);
  RecordProperty("zstd3_ratio", std::to_string(r3));
  RecordProperty("zstd19_ratio", std::to_string(r19));
  EXPECT_GT(r3, 2.5);
  EXPECT_LT(r19, 6.0);
  // Single 4 KiB blocks still compress (not just long-range repetition).
  EXPECT_GT(zstd_ratio(data.substr(0, kPage), 3), 1.8);
}

TEST_F(SyntheticPairTest, FreshRandomDataIsIncompressible) {
  PairSpec s = quiet_spec();
  s.disk_fresh_random_blocks = 256;
  generate_pair(s, tmp_.path());
  const std::string data = fresh_disk_data(load(tmp_.path()));
  ASSERT_EQ(data.size(), 256 * kPage);
  EXPECT_LT(zstd_ratio(data, 3), 1.02);
}

TEST_F(SyntheticPairTest, DevStateIsMostlyCompressible) {
  generate_pair(quiet_spec(), tmp_.path());
  EXPECT_GT(zstd_ratio(read_file(tmp_.path() + "/base/devstate.bin"), 3), 2.0);
}
#endif

TEST_F(SyntheticPairTest, ProgressReachesTotalMonotonically) {
  uint64_t last = 0, total = 0, calls = 0;
  bool monotonic = true;
  std::vector<std::string> phases;
  generate_pair(small_typical(), tmp_.path(), [&](const Progress& p) {
    if (phases.empty() || phases.back() != p.phase) phases.emplace_back(p.phase);
    if (p.phase != "writing images") return;
    monotonic = monotonic && p.done >= last;
    last = p.done;
    total = p.total;
    ++calls;
  });
  EXPECT_TRUE(monotonic);
  EXPECT_GT(calls, 1u);
  EXPECT_GT(total, 0u);
  EXPECT_EQ(last, total);
  EXPECT_EQ(phases, (std::vector<std::string>{"planning", "writing images"}));
}

TEST(PairSpecTest, InvalidSpecsAndProfilesAreUsageErrors) {
  try {
    PairSpec::profile("bogus", kMiB, kMiB, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("typical"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("decode-heavy"), std::string::npos);
  }
  TempDir tmp;
  PairSpec s = quiet_spec();
  s.disk_bytes = 1000;  // not a multiple of 512
  try {
    generate_pair(s, tmp.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
  }
  s = quiet_spec();
  s.base_memory_zero_fraction = 0.9;
  s.base_memory_random_fraction = 0.2;
  EXPECT_THROW(generate_pair(s, tmp.path()), Error);
}

}  // namespace
}  // namespace vmsynth
