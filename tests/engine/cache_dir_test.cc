// The cache directory: base ids stay bounded with the least recently used
// dropped first, and clearing removes only vmsynth's own entries.
#include "engine/cache_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "engine/base_id.h"
#include "testutil/temp_dir.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

namespace fs = std::filesystem;
using namespace vmfiles;

void touch(const fs::path& p, int age_seconds) {
  std::ofstream(p) << "entry";
  const auto t = fs::file_time_type::clock::now() - std::chrono::seconds(age_seconds);
  fs::last_write_time(p, t);
}

TEST(CacheDir, PruneKeepsTheMostRecentlyUsedBaseIds) {
  testutil::TempDir dir("vmsynth-cache");
  for (int i = 0; i < 10; ++i) touch(dir / ("base-id-" + std::to_string(i)), 100 - i);  // 9 is the newest
  touch(dir / "notes.txt", 1000);
  prune_base_id_cache(dir.path(), 4);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(fs::exists(dir / ("base-id-" + std::to_string(i))), i >= 6) << i;
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
}

TEST(CacheDir, BaseIdEntriesAreBoundedAndAHitKeepsAnEntry) {
  testutil::TempDir dir("vmsynth-cache");
  const std::string cache = dir / "cache";
  fs::create_directory(cache);
  for (unsigned i = 0; i < kMaxBaseIdEntries + 20; ++i) touch(cache + "/base-id-old" + std::to_string(i), 1000);
  // Two real bases: computing the first id writes an entry and prunes.
  VmImages vm{random_bytes(8 * kBlock, 1), random_bytes(8 * kBlock, 2), std::nullopt, std::nullopt};
  write_vm(dir / "a", vm);
  BaseIdOptions o;
  o.cache_dir = cache;
  const Hash128 a = compute_base_id(VmDir{dir / "a"}, o);
  EXPECT_EQ(measure_cache(cache).base_id_entries, kMaxBaseIdEntries);
  // The entry just written is the newest, so it survived; a hit returns the same id.
  EXPECT_EQ(compute_base_id(VmDir{dir / "a"}, o), a);
  o.use_cache = false;
  EXPECT_EQ(compute_base_id(VmDir{dir / "a"}, o), a);
}

TEST(CacheDir, ClearRemovesOnlyVmsynthsEntries) {
  testutil::TempDir dir("vmsynth-cache");
  touch(dir / "base-id-1", 0);
  touch(dir / "base-id-2", 0);
  fs::create_directories(dir / "guest/kernel/boot");
  std::ofstream(dir / "guest/kernel/boot/vmlinuz") << std::string(10000, 'k');
  touch(dir / "my-precious-file", 0);
  fs::create_directory(dir / "photos");
  // A link inside guest/ must not lead the removal outside the cache.
  fs::create_directory_symlink(dir / "photos", dir / "guest/link");
  CacheUsage before = measure_cache(dir.path());
  EXPECT_EQ(before.base_id_entries, 2u);
  EXPECT_EQ(before.guest_bytes, 10000u);
  EXPECT_EQ(before.unknown, (std::vector<std::string>{"my-precious-file", "photos"}));
  CacheUsage removed = clear_cache(dir.path());
  EXPECT_EQ(removed.base_id_entries, 2u);
  CacheUsage after = measure_cache(dir.path());
  EXPECT_EQ(after.base_id_entries, 0u);
  EXPECT_EQ(after.guest_bytes, 0u);
  EXPECT_FALSE(fs::exists(dir / "guest"));
  EXPECT_TRUE(fs::exists(dir / "my-precious-file"));
  EXPECT_TRUE(fs::is_directory(dir / "photos"));
}

}  // namespace
}  // namespace vmsynth
