#include "io/image_clone.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <random>
#include <vector>

#include "common/error.h"
#include "io/file.h"
#include "tests/io/test_temp_dir.h"

namespace vmsynth::io {
namespace {

using testing::TestTempDir;

constexpr uint64_t kMiB = 1 << 20;

std::vector<std::byte> file_bytes(const std::string& path) {
  File f = File::open_read(path);
  std::vector<std::byte> out(f.size());
  f.pread_full(out, 0);
  return out;
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st;
}

uint64_t allocated_bytes(const std::string& path) {
  return uint64_t(stat_of(path).st_blocks) * 512;
}

// A sparse 16 MiB + 123 byte image: random data at a few places, one MiB of
// explicitly written zeros, holes elsewhere. Returns the expected content.
std::vector<std::byte> make_sparse_image(const std::string& path) {
  constexpr uint64_t kSize = 16 * kMiB + 123;
  std::vector<std::byte> content(kSize);
  std::mt19937_64 rng(11);
  auto put_random = [&](uint64_t off, uint64_t len) {
    for (uint64_t i = off; i < off + len; ++i) content[i] = std::byte(rng() & 0xff);
  };
  put_random(0, 64 * 1024);
  put_random(4 * kMiB, 4096 + 100);
  put_random(kSize - 10, 10);
  File f = File::create(path);
  f.truncate(kSize);
  f.pwrite_full(std::span(content).first(64 * 1024), 0);
  f.pwrite_full(std::span(content).subspan(4 * kMiB, 4096 + 100), 4 * kMiB);
  f.pwrite_full(std::span(content).subspan(8 * kMiB, kMiB), 8 * kMiB);  // zeros, but data
  f.pwrite_full(std::span(content).subspan(kSize - 10), kSize - 10);
  f.sync();
  return content;
}

class ImageCloneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_ / "base.img";
    content_ = make_sparse_image(src_);
    src_mtime_ = stat_of(src_).st_mtim;
    if (allocated_bytes(src_) >= content_.size() / 2) {
      GTEST_SKIP() << "this filesystem does not keep the test image sparse";
    }
  }
  void TearDown() override {
    if (IsSkipped()) return;
    // The base image is never changed.
    EXPECT_TRUE(file_bytes(src_) == content_);
    struct timespec m = stat_of(src_).st_mtim;
    EXPECT_EQ(m.tv_sec, src_mtime_.tv_sec);
    EXPECT_EQ(m.tv_nsec, src_mtime_.tv_nsec);
  }

  TestTempDir dir_;
  std::string src_;
  std::vector<std::byte> content_;
  struct timespec src_mtime_ {};
};

TEST_F(ImageCloneTest, EachMethodCopiesContentAndKeepsHoles) {
  for (CloneMethod m : {CloneMethod::kAuto, CloneMethod::kCopyRange, CloneMethod::kReadWrite,
                        CloneMethod::kReflink}) {
    SCOPED_TRACE(clone_method_name(m));
    std::string dst = dir_ / ("out-" + std::string(clone_method_name(m)) + ".img");
    CloneResult r;
    try {
      r = clone_image(src_, dst, content_.size(), m);
    } catch (const Error& e) {
      // Reflink is refused on ext4/tmpfs; that must be a clean kUnsupported.
      ASSERT_EQ(m, CloneMethod::kReflink) << e.what();
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
      continue;
    }
    EXPECT_NE(r.method, CloneMethod::kAuto);
    if (m != CloneMethod::kAuto) {
      EXPECT_EQ(r.method, m);
    }
    EXPECT_TRUE(file_bytes(dst) == content_);
    EXPECT_LT(allocated_bytes(dst), 4 * kMiB) << "holes were filled in";
    if (r.method == CloneMethod::kReflink) {
      EXPECT_EQ(r.bytes_shared, content_.size());
    } else {
      EXPECT_GT(r.bytes_copied, 64u * 1024);
      EXPECT_LT(r.bytes_copied, 4 * kMiB);
    }
    if (m == CloneMethod::kAuto && r.method != CloneMethod::kReflink) {
      EXPECT_NE(r.fallback_reason.find("FICLONE"), std::string::npos) << r.fallback_reason;
    }
  }
}

TEST_F(ImageCloneTest, ReadWriteTurnsZeroRunsIntoHoles) {
  std::string dst = dir_ / "rw.img";
  CloneResult r = clone_image(src_, dst, content_.size(), CloneMethod::kReadWrite);
  // 64 KiB + 4196 + 10 non-zero bytes, each run rounded up to whole 4 KiB
  // blocks; the MiB of written zeros is skipped.
  EXPECT_LE(r.bytes_copied, 64u * 1024 + 2 * 4096 + 4096);
  EXPECT_TRUE(file_bytes(dst) == content_);
}

TEST_F(ImageCloneTest, ShrinkCopiesOnlyThePrefix) {
  for (CloneMethod m : {CloneMethod::kAuto, CloneMethod::kCopyRange, CloneMethod::kReadWrite}) {
    SCOPED_TRACE(clone_method_name(m));
    std::string dst = dir_ / "small.img";
    uint64_t size = 4 * kMiB + 50;
    clone_image(src_, dst, size, m);
    std::vector<std::byte> want(content_.begin(), content_.begin() + static_cast<ptrdiff_t>(size));
    EXPECT_TRUE(file_bytes(dst) == want);
  }
}

TEST_F(ImageCloneTest, GrowExtendsWithAHole) {
  for (CloneMethod m : {CloneMethod::kAuto, CloneMethod::kCopyRange, CloneMethod::kReadWrite}) {
    SCOPED_TRACE(clone_method_name(m));
    std::string dst = dir_ / "big.img";
    uint64_t size = 64 * kMiB + 1;
    clone_image(src_, dst, size, m);
    std::vector<std::byte> want = content_;
    want.resize(size);
    EXPECT_TRUE(file_bytes(dst) == want);
    EXPECT_LT(allocated_bytes(dst), 4 * kMiB);
  }
}

TEST_F(ImageCloneTest, ExistingDestinationIsReplaced) {
  std::string dst = dir_ / "old.img";
  {
    File f = File::create(dst);
    std::vector<std::byte> junk(20 * kMiB, std::byte{0x77});
    f.pwrite_full(junk, 0);
  }
  clone_image(src_, dst, content_.size(), CloneMethod::kCopyRange);
  EXPECT_TRUE(file_bytes(dst) == content_);
}

TEST_F(ImageCloneTest, CloningOntoItselfIsRefused) {
  try {
    clone_image(src_, src_, 10, CloneMethod::kAuto);
    FAIL() << "clone onto itself accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
  }
  // TearDown checks the source is intact.
}

TEST(ImageCloneNoSourceTest, MissingAndEmptySourceGiveAHoleOfDstSize) {
  TestTempDir dir;
  { File empty = File::create(dir / "empty.img"); }
  for (std::string src : {dir / "missing.img", dir / "empty.img"}) {
    for (CloneMethod m : {CloneMethod::kAuto, CloneMethod::kReflink, CloneMethod::kReadWrite}) {
      SCOPED_TRACE(src + " " + std::string(clone_method_name(m)));
      std::string dst = dir / "out.img";
      CloneResult r = clone_image(src, dst, 3 * kMiB, m);
      EXPECT_EQ(r.bytes_copied, 0u);
      EXPECT_EQ(r.method, m);
      std::vector<std::byte> got = file_bytes(dst);
      ASSERT_EQ(got.size(), 3 * kMiB);
      EXPECT_TRUE(
          std::all_of(got.begin(), got.end(), [](std::byte b) { return b == std::byte{0}; }));
    }
  }
  EXPECT_FALSE(path_exists(dir / "missing.img"));
}

TEST(ImageCloneNoSourceTest, NonRegularSourceIsUnsupported) {
  TestTempDir dir;
  try {
    clone_image(dir.path(), dir / "out.img", 10);
    FAIL() << "a directory was accepted as a base image";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
}

TEST(CloneMethodTest, NamesRoundTripAndBadNameIsUsageError) {
  for (CloneMethod m : {CloneMethod::kAuto, CloneMethod::kReflink, CloneMethod::kCopyRange,
                        CloneMethod::kReadWrite}) {
    EXPECT_EQ(parse_clone_method(clone_method_name(m)), m);
  }
  EXPECT_EQ(clone_method_name(CloneMethod::kCopyRange), "copy-range");
  try {
    parse_clone_method("copy_range");
    FAIL() << "bad name accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("read-write"), std::string::npos);
  }
}

}  // namespace
}  // namespace vmsynth::io
