#include "io/write_queue.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <random>
#include <vector>

#include "common/error.h"
#include "io/file.h"
#include "tests/io/test_temp_dir.h"

namespace vmsynth::io {
namespace {

using testing::TestTempDir;

enum class Backend { kUring, kPwrite };

std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kUring ? "io_uring" : "pwrite";
}

std::vector<std::byte> file_bytes(const std::string& path) {
  File f = File::open_read(path);
  std::vector<std::byte> out(f.size());
  f.pread_full(out, 0);
  return out;
}

void fill_random(std::span<std::byte> b, std::mt19937_64& rng) {
  for (auto& x : b) x = static_cast<std::byte>(rng() & 0xff);
}

class WriteQueueTest : public ::testing::TestWithParam<Backend> {
 protected:
  // Opens a queue of the parameter's backend; skips when io_uring is refused.
  std::unique_ptr<WriteQueue> open_queue(std::vector<int> fds, WriteQueueOptions opts,
                                         WriteQueue::Completion cb,
                                         std::vector<std::string> names = {}) {
    opts.force_pwrite = GetParam() == Backend::kPwrite;
    auto q = WriteQueue::open(std::move(fds), opts, std::move(cb), std::move(names));
    if (GetParam() == Backend::kUring && q->backend() != "io_uring") {
      skip_reason_ = std::string(q->fallback_reason());
      return nullptr;
    }
    EXPECT_EQ(q->backend(), GetParam() == Backend::kUring ? "io_uring" : "pwrite");
    return q;
  }
  std::string skip_reason_;
  TestTempDir dir_;
};

#define OPEN_OR_SKIP(var, ...)        \
  auto var = open_queue(__VA_ARGS__); \
  if (!var) GTEST_SKIP() << "io_uring not available: " << skip_reason_

// Many writes of odd sizes at shuffled offsets over two files, with a buffer
// pool only one larger than the queue depth whose buffers are overwritten as
// soon as they come back: an early completion would corrupt the output.
TEST_P(WriteQueueTest, RandomWritesReadBackWithRecycledBuffers) {
  constexpr unsigned kDepth = 16;
  constexpr size_t kFileBytes = 8 << 20;
  std::mt19937_64 rng(42);

  struct Piece {
    unsigned file;
    uint64_t offset;
    size_t size;
  };
  std::vector<Piece> pieces;
  for (unsigned f = 0; f < 2; ++f) {
    for (uint64_t off = 0; off < kFileBytes;) {
      size_t len = std::min<size_t>(1 + rng() % 70000, kFileBytes - off);
      pieces.push_back({f, off, len});
      off += len;
    }
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);

  std::vector<std::vector<std::byte>> expected(2, std::vector<std::byte>(kFileBytes));
  File f0 = File::create(dir_ / "a.img");
  File f1 = File::create(dir_ / "b.img");

  std::vector<std::vector<std::byte>> pool(kDepth + 1, std::vector<std::byte>(70000));
  std::vector<size_t> free_buffers;
  for (size_t i = 0; i < pool.size(); ++i) free_buffers.push_back(i);
  std::map<uint64_t, int> completions;
  uint64_t next_tag = 0;
  std::map<uint64_t, size_t> buffer_of_tag;

  WriteQueueOptions opts;
  opts.queue_depth = kDepth;
  OPEN_OR_SKIP(q, {f0.fd(), f1.fd()}, opts, [&](uint64_t tag) {
    ++completions[tag];
    size_t b = buffer_of_tag.at(tag);
    std::fill(pool[b].begin(), pool[b].end(), std::byte{0xEE});  // scribble: must be unused now
    free_buffers.push_back(b);
  });

  for (const Piece& p : pieces) {
    ASSERT_FALSE(free_buffers.empty()) << "a pool of depth+1 buffers must never run dry";
    size_t b = free_buffers.back();
    free_buffers.pop_back();
    std::span<std::byte> data(pool[b].data(), p.size);
    fill_random(data, rng);
    std::copy(data.begin(), data.end(),
              expected[p.file].begin() + static_cast<ptrdiff_t>(p.offset));
    uint64_t tag = next_tag++;
    buffer_of_tag[tag] = b;
    q->write(p.file, p.offset, data, tag);
  }
  q->drain();

  EXPECT_EQ(completions.size(), pieces.size());
  for (const auto& [tag, n] : completions) EXPECT_EQ(n, 1) << "tag " << tag;
  EXPECT_EQ(free_buffers.size(), pool.size());
  EXPECT_TRUE(file_bytes(dir_ / "a.img") == expected[0]);
  EXPECT_TRUE(file_bytes(dir_ / "b.img") == expected[1]);
}

// Requests larger than max_request_bytes go out in pieces through the path
// that resubmits short writes; with a tiny limit every write takes it.
TEST_P(WriteQueueTest, LargeWritesAndResubmittedRemainders) {
  std::mt19937_64 rng(7);
  for (size_t max_request : {size_t{4096}, size_t{1} << 30}) {
    SCOPED_TRACE(max_request);
    std::vector<std::byte> big(24 << 20);
    fill_random(big, rng);
    File f = File::create(dir_ / "big.img");
    WriteQueueOptions opts;
    opts.queue_depth = 4;
    opts.max_request_bytes = max_request;
    int done = 0;
    OPEN_OR_SKIP(q, {f.fd()}, opts, [&](uint64_t) { ++done; });
    // Three writes: 16 MiB, 1 MiB + 1 and the rest, out of order.
    q->write(0, 17 << 20, std::span(big).subspan(17 << 20), 3);
    q->write(0, 0, std::span(big).first(16 << 20), 1);
    q->write(0, 16 << 20, std::span(big).subspan(16 << 20, (1 << 20) + 1), 2);
    q->drain();
    EXPECT_EQ(done, 3);
    std::vector<std::byte> got = file_bytes(dir_ / "big.img");
    ASSERT_EQ(got.size(), big.size());
    EXPECT_TRUE(got == big);
  }
}

TEST_P(WriteQueueTest, FailedWriteNamesFileAndOffsetAndStillCompletes) {
  { File w = File::create(dir_ / "ro.img"); }
  File ro = File::open_read(dir_ / "ro.img");  // writes to it fail with EBADF
  std::vector<std::byte> buf(4096, std::byte{1});
  std::vector<uint64_t> done;
  OPEN_OR_SKIP(q, {ro.fd()}, WriteQueueOptions{}, [&](uint64_t t) { done.push_back(t); },
               {dir_ / "ro.img"});
  try {
    q->write(0, 12288, buf, 5);
    q->drain();
    FAIL() << "drain did not report the failed write";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    std::string what = e.what();
    EXPECT_NE(what.find("ro.img"), std::string::npos) << what;
    EXPECT_NE(what.find("12288"), std::string::npos) << what;
  }
  EXPECT_EQ(done, std::vector<uint64_t>{5});
  // The error is sticky: nothing more is accepted, and no callback comes.
  EXPECT_THROW(q->write(0, 0, buf, 6), Error);
  EXPECT_THROW(q->drain(), Error);
  EXPECT_EQ(done, std::vector<uint64_t>{5});
}

TEST_P(WriteQueueTest, UnnamedFileIsNamedByIndex) {
  { File w = File::create(dir_ / "ro.img"); }
  File ro = File::open_read(dir_ / "ro.img");
  File ok = File::create(dir_ / "ok.img");
  std::vector<std::byte> buf(100, std::byte{1});
  OPEN_OR_SKIP(q, {ok.fd(), ro.fd()}, WriteQueueOptions{}, nullptr);
  q->write(1, 7, buf, 0);
  try {
    q->drain();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file #1"), std::string::npos) << e.what();
  }
}

TEST_P(WriteQueueTest, EmptyWriteCompletesAtOnceAndBadIndexIsRefused) {
  File f = File::create(dir_ / "e.img");
  std::vector<uint64_t> done;
  OPEN_OR_SKIP(q, {f.fd()}, WriteQueueOptions{}, [&](uint64_t t) { done.push_back(t); });
  q->write(0, 100, {}, 9);
  EXPECT_EQ(done, std::vector<uint64_t>{9});
  std::vector<std::byte> buf(10);
  try {
    q->write(1, 0, buf, 10);
    FAIL() << "bad index accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
  }
  q->drain();
  EXPECT_EQ(done, std::vector<uint64_t>{9});
  EXPECT_EQ(f.size(), 0u);
}

// Destroying a queue with requests in flight waits for them (the buffers
// must not be reused while the kernel reads them) and calls no callback.
TEST_P(WriteQueueTest, DestructorWaitsForRequestsInFlight) {
  File f = File::create(dir_ / "d.img");
  std::vector<std::byte> buf(4 << 20);
  std::mt19937_64 rng(3);
  fill_random(buf, rng);
  int callbacks = 0;
  {
    WriteQueueOptions opts;
    opts.queue_depth = 8;
    opts.submit_batch = 1;
    OPEN_OR_SKIP(q, {f.fd()}, opts, [&](uint64_t) { ++callbacks; });
    for (uint64_t i = 0; i < 4; ++i) {
      q->write(0, i << 20, std::span(buf).subspan(i << 20, 1 << 20), i);
    }
    callbacks = 0;  // completions reaped early during write() do not count
  }
  EXPECT_EQ(callbacks, 0);
  EXPECT_TRUE(file_bytes(dir_ / "d.img") == buf);
}

TEST_P(WriteQueueTest, QueueDepthOneAndSubmitBatchLargerThanDepth) {
  File f = File::create(dir_ / "q1.img");
  std::vector<std::byte> buf(64 << 10);
  std::mt19937_64 rng(5);
  fill_random(buf, rng);
  WriteQueueOptions opts;
  opts.queue_depth = 1;
  opts.submit_batch = 100;  // clamped to 1
  int done = 0;
  OPEN_OR_SKIP(q, {f.fd()}, opts, [&](uint64_t) { ++done; });
  for (size_t i = 0; i < 16; ++i) q->write(0, i * 4096, std::span(buf).subspan(i * 4096, 4096), i);
  q->submit();
  q->drain();
  EXPECT_EQ(done, 16);
  EXPECT_TRUE(file_bytes(dir_ / "q1.img") == buf);
}

INSTANTIATE_TEST_SUITE_P(Backends, WriteQueueTest,
                         ::testing::Values(Backend::kUring, Backend::kPwrite), backend_name);

TEST(WriteQueueOptionsTest, QueueDepthOutOfRangeIsUsageError) {
  for (unsigned depth : {0u, 4097u}) {
    WriteQueueOptions opts;
    opts.queue_depth = depth;
    try {
      WriteQueue::open({}, opts, nullptr);
      FAIL() << "depth " << depth << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUsage);
    }
  }
}

TEST(WriteQueueOptionsTest, EnvironmentForcesPwrite) {
  const char* before = std::getenv("VMSYNTH_NO_IO_URING");
  std::string saved = before ? before : "";
  ::setenv("VMSYNTH_NO_IO_URING", "1", 1);
  auto q = WriteQueue::open({}, WriteQueueOptions{}, nullptr);
  if (before) {
    ::setenv("VMSYNTH_NO_IO_URING", saved.c_str(), 1);
  } else {
    ::unsetenv("VMSYNTH_NO_IO_URING");
  }
  EXPECT_EQ(q->backend(), "pwrite");
  EXPECT_NE(q->fallback_reason().find("VMSYNTH_NO_IO_URING"), std::string_view::npos);
}

TEST(WriteQueueOptionsTest, ForcedPwriteSaysWhy) {
  WriteQueueOptions opts;
  opts.force_pwrite = true;
  auto q = WriteQueue::open({}, opts, nullptr);
  EXPECT_EQ(q->backend(), "pwrite");
  EXPECT_FALSE(q->fallback_reason().empty());
}

TEST(WriteQueueOptionsTest, UnregisteredFilesWork) {
  TestTempDir dir;
  File f = File::create(dir / "u.img");
  WriteQueueOptions opts;
  opts.register_files = false;
  auto q = WriteQueue::open({f.fd()}, opts, nullptr);
  if (q->backend() != "io_uring")
    GTEST_SKIP() << "io_uring not available: " << q->fallback_reason();
  std::vector<std::byte> buf(10000, std::byte{0x5a});
  q->write(0, 3, buf, 0);
  q->drain();
  std::vector<std::byte> got = file_bytes(dir / "u.img");
  ASSERT_EQ(got.size(), 10003u);
  EXPECT_TRUE(
      std::all_of(got.begin() + 3, got.end(), [](std::byte b) { return b == std::byte{0x5a}; }));
}

}  // namespace
}  // namespace vmsynth::io
