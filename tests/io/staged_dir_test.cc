#include "io/staged_dir.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string_view>

#include "common/error.h"
#include "io/file.h"
#include "tests/io/test_temp_dir.h"

namespace vmsynth::io {
namespace {

using testing::TestTempDir;

std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.insert(n);
  }
  ::closedir(d);
  return out;
}

void write_text(const std::string& path, std::string_view text) {
  File f = File::create(path);
  f.write_all(std::as_bytes(std::span(text)));
}

std::string read_text(const std::string& path) { return read_small_file(path, 1 << 20); }

bool is_dir(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

TEST(StagedDirectoryTest, CommitMakesTheDirectoryAppear) {
  TestTempDir tmp;
  std::string final_path = tmp / "vm";
  StagedDirectory sd(final_path, false);
  std::string staging = sd.path();
  EXPECT_TRUE(is_dir(staging));
  EXPECT_EQ(staging.rfind(tmp / ".vm.partial-" + std::to_string(::getpid()) + "-", 0), 0u)
      << staging;
  EXPECT_FALSE(path_exists(final_path));

  write_text(sd.path() + "/disk.img", "disk");
  ASSERT_EQ(::mkdir((sd.path() + "/sub").c_str(), 0755), 0);
  write_text(sd.path() + "/sub/memory.img", "memory");
  sd.commit();

  EXPECT_TRUE(sd.committed());
  EXPECT_EQ(sd.path(), final_path);
  EXPECT_FALSE(path_exists(staging));
  EXPECT_EQ(read_text(final_path + "/disk.img"), "disk");
  EXPECT_EQ(read_text(final_path + "/sub/memory.img"), "memory");
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"});
  EXPECT_THROW(sd.commit(), Error);
}

TEST(StagedDirectoryTest, DestructionWithoutCommitLeavesNothing) {
  TestTempDir tmp;
  {
    StagedDirectory sd(tmp / "vm", false);
    write_text(sd.path() + "/disk.img", "half written");
    ASSERT_EQ(::mkdir((sd.path() + "/sub").c_str(), 0755), 0);
    write_text(sd.path() + "/sub/x", "x");
  }
  EXPECT_TRUE(names_in(tmp.path()).empty());
}

TEST(StagedDirectoryTest, ExistingTargetIsRefusedWithoutForce) {
  TestTempDir tmp;
  ASSERT_EQ(::mkdir((tmp / "vm").c_str(), 0755), 0);
  try {
    StagedDirectory sd(tmp / "vm", false);
    FAIL() << "existing output accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kExists);
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"});
}

TEST(StagedDirectoryTest, ForceReplacesAnExistingDirectory) {
  TestTempDir tmp;
  std::string final_path = tmp / "vm";
  ASSERT_EQ(::mkdir(final_path.c_str(), 0755), 0);
  write_text(final_path + "/old.img", "old");
  ASSERT_EQ(::mkdir((final_path + "/olddir").c_str(), 0755), 0);
  write_text(final_path + "/olddir/f", "f");

  StagedDirectory sd(final_path, true);
  write_text(sd.path() + "/new.img", "new");
  EXPECT_EQ(read_text(final_path + "/old.img"), "old") << "replaced before commit";
  sd.commit();

  EXPECT_EQ(names_in(final_path), std::set<std::string>{"new.img"});
  EXPECT_EQ(read_text(final_path + "/new.img"), "new");
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"}) << "old tree left behind";
}

TEST(StagedDirectoryTest, ForceReplacesARegularFile) {
  TestTempDir tmp;
  write_text(tmp / "vm", "i am a file");
  StagedDirectory sd(tmp / "vm/", true);  // trailing slash is fine
  write_text(sd.path() + "/a", "a");
  sd.commit();
  EXPECT_TRUE(is_dir(tmp / "vm"));
  EXPECT_EQ(read_text(tmp / "vm/a"), "a");
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"});
}

TEST(StagedDirectoryTest, ForceWithoutExistingTargetJustCommits) {
  TestTempDir tmp;
  StagedDirectory sd(tmp / "vm", true);
  sd.commit();
  EXPECT_TRUE(is_dir(tmp / "vm"));
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"});
}

TEST(StagedDirectoryTest, TargetAppearingBeforeCommitIsNotOverwritten) {
  TestTempDir tmp;
  {
    StagedDirectory sd(tmp / "vm", false);
    write_text(sd.path() + "/mine", "mine");
    ASSERT_EQ(::mkdir((tmp / "vm").c_str(), 0755), 0);  // somebody else was faster
    try {
      sd.commit();
      FAIL() << "commit replaced a directory without force";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kExists);
    }
    EXPECT_FALSE(sd.committed());
  }
  EXPECT_EQ(names_in(tmp.path()), std::set<std::string>{"vm"});
  EXPECT_TRUE(names_in(tmp / "vm").empty());
}

TEST(StagedDirectoryTest, MovedFromObjectDoesNotRemoveTheStagingDirectory) {
  TestTempDir tmp;
  StagedDirectory a(tmp / "vm", false);
  std::string staging = a.path();
  StagedDirectory b(std::move(a));
  EXPECT_EQ(b.path(), staging);
  EXPECT_TRUE(is_dir(staging));
  b.commit();
  EXPECT_TRUE(is_dir(tmp / "vm"));
}

TEST(StagedDirectoryTest, MissingParentIsAnIoError) {
  TestTempDir tmp;
  try {
    StagedDirectory sd(tmp / "no/such/dir/vm", false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
}

TEST(RemoveTreeTest, RemovesNestedTreeButNotSymlinkTargets) {
  TestTempDir tmp;
  std::string keep = tmp / "keep";
  ASSERT_EQ(::mkdir(keep.c_str(), 0755), 0);
  write_text(keep + "/precious", "p");

  std::string victim = tmp / "victim";
  ASSERT_EQ(::mkdir(victim.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((victim + "/a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((victim + "/a/b").c_str(), 0755), 0);
  write_text(victim + "/a/b/f", "f");
  write_text(victim + "/g", "g");
  ASSERT_EQ(::symlink(keep.c_str(), (victim + "/link").c_str()), 0);

  StagedDirectory::remove_tree(victim);
  EXPECT_FALSE(path_exists(victim));
  EXPECT_EQ(read_text(keep + "/precious"), "p");

  StagedDirectory::remove_tree(victim);  // missing: no error
  write_text(tmp / "file", "x");
  StagedDirectory::remove_tree(tmp / "file");
  EXPECT_FALSE(path_exists(tmp / "file"));
}

}  // namespace
}  // namespace vmsynth::io
