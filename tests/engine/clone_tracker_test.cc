// CloneTracker + io::clone_image hooks: a base clone running beside a writer
// of the same output never overwrites a block the writer wrote, wherever the
// clone is when the write comes; a clone failure reaches a waiting writer.
// (Suite names start with "Parallel" so that CI's ThreadSanitizer step runs them.)
#include "engine/clone_tracker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "io/file.h"
#include "io/image_clone.h"
#include "tests/engine/synthesis_test_util.h"

namespace vmsynth {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kRegion = CloneTracker::kRegionBytes;

TEST(ParallelCloneTracker, WritesBeforeDuringAndAfterTheCloneAllSurvive) {
  testutil::TempDir dir("clone-tracker");
  const uint64_t size = 4 * kRegion + 3 * kBlock;  // five regions, the last one short
  const std::string base = dir / "base", out = dir / "out";
  const std::string base_bytes = testutil::random_bytes(size, 1);
  testutil::write_file(base, base_bytes);
  std::string expect = base_bytes;

  CloneTracker tracker(size);
  io::CloneHooks hooks = tracker.hooks();
  std::promise<void> started, first_batch_written;
  hooks.started = [&] {
    started.set_value();
    first_batch_written.get_future().wait();  // the clone waits until the writer went first
  };
  std::future<io::CloneResult> clone = std::async(std::launch::async, [&] {
    return io::clone_image(base, out, size, io::CloneMethod::kCopyRange, &hooks);
  });
  started.get_future().wait();
  io::File f = io::File::open_rw(out);
  std::mt19937_64 rng(2);
  auto write = [&](uint64_t block) {
    const std::string data = testutil::random_bytes(kBlock, rng());
    const uint64_t len = std::min(kBlock, size - block * kBlock);
    tracker.before_write(block * kBlock, len);
    f.pwrite_full(std::as_bytes(std::span(data.data(), len)), block * kBlock);
    expect.replace(block * kBlock, len, data.substr(0, len));
  };
  // Before the clone copies anything: in every region, the image's last
  // (partial) block and a run of adjacent blocks.
  const uint64_t blocks = (size + kBlock - 1) / kBlock;
  std::vector<uint64_t> first = {0, 1, 2, kRegion / kBlock - 1, kRegion / kBlock, 3 * kRegion / kBlock + 7,
                                 blocks - 1};
  for (uint64_t b : first) write(b);
  first_batch_written.set_value();
  // While it copies and after: random blocks anywhere.
  for (int i = 0; i < 400; ++i) write(rng() % blocks);
  io::CloneResult r = clone.get();
  EXPECT_EQ(r.method, io::CloneMethod::kCopyRange);
  EXPECT_GE(tracker.blocks_skipped(), first.size());
  EXPECT_LT(r.bytes_copied, size) << "blocks written first must not be copied";
  EXPECT_TRUE(testutil::read_file(out) == expect) << "the clone overwrote a written block, or missed base data";
  EXPECT_EQ(testutil::read_file(base), base_bytes);
}

TEST(ParallelCloneTracker, AWriterWaitingOnACopyGetsTheCloneError) {
  CloneTracker tracker(2 * kRegion);
  io::CloneHooks hooks = tracker.hooks();
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ASSERT_TRUE(hooks.claim(0, kRegion, ranges));  // region 0 is being copied
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0], std::make_pair(uint64_t{0}, kRegion));
  std::atomic<bool> returned{false};
  std::future<void> writer = std::async(std::launch::async, [&] {
    tracker.before_write(kBlock, kBlock);
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(returned.load()) << "a write into a region being copied must wait";
  tracker.before_write(kRegion, kBlock);  // another region: no wait
  tracker.fail(std::make_exception_ptr(Error(ErrorCode::kIo, "disk full while cloning")));
  try {
    writer.get();
    FAIL() << "the waiting writer did not get the clone's error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_STREQ(e.what(), "disk full while cloning");
  }
  ranges.clear();
  EXPECT_FALSE(hooks.claim(kRegion, 2 * kRegion, ranges)) << "a failed clone must stop";
}

TEST(ParallelCloneTracker, CancelStopsTheCloneAndReleasesWriters) {
  CloneTracker tracker(3 * kRegion);
  io::CloneHooks hooks = tracker.hooks();
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ASSERT_TRUE(hooks.claim(0, kRegion, ranges));
  tracker.cancel();
  tracker.before_write(0, kBlock);  // would wait forever without the cancel
  ranges.clear();
  EXPECT_FALSE(hooks.claim(kRegion, 2 * kRegion, ranges));
}

}  // namespace
}  // namespace vmsynth
