// engine/cancel.h: a job's token, and a token that follows a group token.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "engine/cancel.h"
#include "io/byte_source.h"

namespace vmsynth {
namespace {

TEST(CancelToken, RequestIsStickyAndThrowsInterrupted) {
  CancelToken t;
  EXPECT_FALSE(t.requested());
  EXPECT_NO_THROW(throw_if_cancelled(&t));
  EXPECT_NO_THROW(throw_if_cancelled(nullptr));
  t.request();
  t.request();
  EXPECT_TRUE(t.requested());
  try {
    throw_if_cancelled(&t);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted);
  }
}

// A job's token follows its group: the group's request stops the job, the
// job's own request leaves the group and the group's other jobs alone.
TEST(CancelToken, FollowsItsGroupButDoesNotRequestIt) {
  CancelToken group;
  CancelToken a(&group), b(&group);
  a.request();
  EXPECT_TRUE(a.requested());
  EXPECT_FALSE(group.requested());
  EXPECT_FALSE(b.requested());
  group.request();
  EXPECT_TRUE(b.requested());
}

// A read waiting on a stalled pipe ends when the group is requested: the
// wait polls the group's eventfd too, not only the job's.
TEST(CancelToken, GroupRequestEndsAWaitForInput) {
  const std::string fifo =
      (std::filesystem::temp_directory_path() / ("vmsynth-cancel-" + std::to_string(::getpid()))).string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  CancelToken group;
  CancelToken job(&group);
  // The writer end open, nothing written: the reader waits. The writer
  // closes its end only after the read has ended, or after 10 s if the
  // request did not wake it (then `closed` tells).
  std::atomic<bool> read_ended{false}, closed{false};
  std::thread writer([&] {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    group.request();
    for (int i = 0; i < 1000 && !read_ended; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    closed = true;
    ::close(fd);
  });
  auto src = io::open_source(fifo, job.stop_check());
  std::array<std::byte, 16> buf;
  try {
    src->read_some(buf);
    ADD_FAILURE() << "the read returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted) << e.what();
  }
  EXPECT_FALSE(closed) << "the read ended only when the writer closed its end";
  read_ended = true;
  writer.join();
  ::unlink(fifo.c_str());
}

}  // namespace
}  // namespace vmsynth
