// Qcow2Writer: the images it writes are checked by QEMU's own tools
// (qemu-img check / info / convert), not by re-reading our own layout.
#include "io/qcow2_writer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/file.h"
#include "tests/io/test_temp_dir.h"
#include "testutil/run_command.h"

namespace vmsynth::io {
namespace {

using testing::TestTempDir;
constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB;
constexpr uint64_t kCluster = Qcow2Writer::kClusterSize;

using testutil::run_command;
using CmdResult = testutil::CommandResult;

bool have_qemu_img() { return testutil::have_program("qemu-img"); }

std::vector<std::byte> random_bytes(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = std::byte(rng() & 0xff);
  return v;
}

std::vector<std::byte> read_all(const std::string& path) {
  File f = File::open_read(path);
  std::vector<std::byte> v(f.size());
  f.pread_full(v, 0);
  return v;
}

class Qcow2WriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_qemu_img()) GTEST_SKIP() << "qemu-img not installed (apt-get install -y qemu-utils)";
  }

  // Writes `data` at guest `offset` through the writer and into `expect`.
  void put(Qcow2Writer& w, std::vector<std::byte>& expect, uint64_t offset, std::span<const std::byte> data) {
    uint64_t at = w.allocate(offset, data.size());
    w.file().pwrite_full(data, at);
    std::copy(data.begin(), data.end(), expect.begin() + static_cast<ptrdiff_t>(offset));
  }
  void zero(Qcow2Writer& w, std::vector<std::byte>& expect, uint64_t offset, uint64_t len) {
    w.set_zero(offset, len);
    std::fill_n(expect.begin() + static_cast<ptrdiff_t>(offset), len, std::byte{0});
  }

  TestTempDir dir_{"qcow2-writer"};
};

TEST_F(Qcow2WriterTest, QemuReadsWhatWasWrittenOverTheBackingFile) {
  // A backing file shorter than the virtual disk (the rest reads as zeros)
  // and a virtual size that ends inside a subcluster.
  const uint64_t base_size = 3 * kMiB, vsize = 5 * kMiB + 1536;
  const std::string base = dir_ / "base.raw", img = dir_ / "disk.qcow2";
  std::vector<std::byte> base_bytes = random_bytes(base_size, 1);
  File::create(base).pwrite_full(base_bytes, 0);
  std::vector<std::byte> expect(vsize, std::byte{0});
  std::copy(base_bytes.begin(), base_bytes.end(), expect.begin());

  Qcow2Writer w(img, vsize, base);
  auto blk = [](uint32_t seed) { return random_bytes(4096, seed); };
  put(w, expect, 4096, blk(2));                 // one block inside cluster 0
  put(w, expect, 3 * 4096, blk(3));             // a second one, same cluster, not adjacent
  for (uint64_t b = 0; b < 16; ++b) put(w, expect, 7 * kCluster + b * 4096, blk(10 + b));  // a whole cluster
  put(w, expect, 4 * kMiB, blk(30));            // beyond the backing file
  zero(w, expect, 2 * kCluster, 4096);          // zero over backing data, no host cluster
  zero(w, expect, 9 * 4096, 4096);              // then written: data wins
  put(w, expect, 9 * 4096, blk(31));
  put(w, expect, 11 * 4096, blk(32));           // written, then zeroed: zero wins
  zero(w, expect, 11 * 4096, 4096);
  const uint64_t tail = vsize - vsize % 4096;   // the last, partial block
  const std::vector<std::byte> last = blk(33);
  put(w, expect, tail, std::span(last).first(vsize - tail));

  EXPECT_EQ(w.lookup(4096).source, Qcow2Writer::Source::kData);
  EXPECT_EQ(w.lookup(2 * 4096).source, Qcow2Writer::Source::kBacking);
  EXPECT_EQ(w.lookup(2 * kCluster).source, Qcow2Writer::Source::kZero);
  EXPECT_EQ(w.lookup(11 * 4096 + 100).source, Qcow2Writer::Source::kZero);
  EXPECT_EQ(w.lookup(9 * 4096).source, Qcow2Writer::Source::kData);
  Qcow2Writer::Location l = w.lookup(7 * kCluster + 5 * 4096 + 17);
  ASSERT_EQ(l.source, Qcow2Writer::Source::kData);
  std::vector<std::byte> one(1);
  w.file().pread_full(one, l.file_offset);
  EXPECT_EQ(one[0], expect[7 * kCluster + 5 * 4096 + 17]);
  EXPECT_EQ(w.data_clusters(), 4u);  // clusters 0, 7, the one at 4 MiB, the tail's
  w.finish();

  CmdResult check = run_command("qemu-img check '" + img + "'");
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_NE(check.output.find("No errors were found"), std::string::npos) << check.output;
  CmdResult info = run_command("qemu-img info --output=json '" + img + "'");
  ASSERT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("\"backing-filename\": \"" + base + "\""), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("\"backing-filename-format\": \"raw\""), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("\"extended-l2\": true"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("\"virtual-size\": " + std::to_string(vsize)), std::string::npos) << info.output;

  const std::string flat = dir_ / "flat.raw";
  CmdResult conv = run_command("qemu-img convert -O raw '" + img + "' '" + flat + "'");
  ASSERT_EQ(conv.exit_code, 0) << conv.output;
  std::vector<std::byte> got = read_all(flat);
  ASSERT_EQ(got.size(), expect.size());
  EXPECT_TRUE(got == expect);
  // The base is only read.
  EXPECT_TRUE(read_all(base) == base_bytes);
}

TEST_F(Qcow2WriterTest, ManyL2TablesAndRefcountBlocks) {
  // 2.6 GB virtual, blocks spread so that several L2 tables (256 MiB each)
  // and more data clusters than one refcount block counts (32768) are used.
  const uint64_t vsize = 40000 * kCluster;
  const std::string base = dir_ / "base.raw", img = dir_ / "disk.qcow2";
  File::create(base).truncate(vsize);
  Qcow2Writer w(img, vsize, base);
  std::vector<std::byte> b = random_bytes(4096, 7);
  for (uint64_t c = 0; c < 40000; ++c) {
    b[0] = std::byte(c & 0xff);
    w.file().pwrite_full(b, w.allocate(c * kCluster + (c % 16) * 4096, 4096));
  }
  w.finish();
  CmdResult check = run_command("qemu-img check '" + img + "'");
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_NE(check.output.find("No errors were found"), std::string::npos) << check.output;
  // Spot-check a block in the last L2 table through QEMU.
  const uint64_t c = 39999;
  char pattern[8];
  std::snprintf(pattern, sizeof pattern, "0x%02x", unsigned(c & 0xff));
  CmdResult rd = run_command(std::string("qemu-io -f qcow2 -c 'read -P ") + pattern + " " +
                     std::to_string(c * kCluster + (c % 16) * 4096) + " 1' '" + img + "'");
  EXPECT_EQ(rd.exit_code, 0) << rd.output;
  EXPECT_EQ(rd.output.find("Pattern verification failed"), std::string::npos) << rd.output;
}

TEST(Qcow2WriterRules, RefusesOddSizesAndMisalignedRanges) {
  TestTempDir dir("qcow2-rules");
  try {
    Qcow2Writer w(dir / "a.qcow2", 1000, "/nonexistent");
    FAIL() << "a size that is not whole sectors was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("1000"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Qcow2Writer(dir / "b.qcow2", kMiB, std::string(2000, 'x')), Error);
  Qcow2Writer w(dir / "c.qcow2", kMiB, "/base");
  EXPECT_THROW(w.allocate(100, 4096), Error);                 // not on a subcluster boundary
  EXPECT_THROW(w.allocate(kCluster - 2048, 4096), Error);     // crosses a cluster
  EXPECT_THROW(w.allocate(kMiB - 2048, 4096), Error);         // past the end
  EXPECT_THROW(w.set_zero(0, 0), Error);
  EXPECT_EQ(w.allocate(kCluster, 2048), Qcow2Writer::kClusterSize);  // first data cluster follows the header
  w.finish();
  EXPECT_THROW(w.finish(), Error);
}

}  // namespace
}  // namespace vmsynth::io
