// Crash safety of synthesis, with the real `vmsynth` binary in a child
// process: a full disk mid-synthesis (RLIMIT_FSIZE with SIGXFSZ ignored, so
// writes fail with EFBIG; and a small tmpfs in a private mount namespace, so
// writes fail with ENOSPC, when unprivileged namespaces are available) must
// end in a clear kIo error with no output and no temporaries; a SIGKILL
// mid-synthesis must leave nothing at --out, and a rerun must succeed and
// clear the killed run's staging directory.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "synthesis_test_util.h"

namespace vmsynth {
namespace {

using testutil::TempDir;
constexpr uint64_t kB = 4096;

struct Child {
  pid_t pid = -1;
  int stdin_fd = -1;  // write end of the child's stdin, when piped
};

// Starts `vmsynth args...` with stdout/stderr to `log`; optionally a pipe as
// stdin and a file-size limit (with SIGXFSZ ignored, so writes fail with EFBIG).
Child spawn(const std::vector<std::string>& args, const std::string& log, bool pipe_stdin, rlim_t fsize_limit = 0) {
  int fds[2] = {-1, -1};
  if (pipe_stdin && ::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(out, 2);
    if (pipe_stdin) ::dup2(fds[0], 0);
    if (fsize_limit) {
      ::signal(SIGXFSZ, SIG_IGN);
      rlimit r{fsize_limit, fsize_limit};
      ::setrlimit(RLIMIT_FSIZE, &r);
    }
    std::vector<char*> argv;
    std::string bin = VMSYNTH_BIN;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  Child c;
  c.pid = pid;
  if (pipe_stdin) {
    ::close(fds[0]);
    c.stdin_fd = fds[1];
  }
  return c;
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

class CrashSafety : public ::testing::TestWithParam<std::string> {
 protected:
  // base: sparse-ish images; launch: new data in memory, a bigger devstate.
  void make_pair(uint64_t image_blocks, uint64_t fresh_blocks, size_t devstate_bytes) {
    testutil::VmContent base;
    base.memory = std::string(image_blocks * kB, '\0');
    base.disk = testutil::text_bytes(image_blocks * kB, 1);
    testutil::VmContent launch = base;
    for (uint64_t i = 0; i < fresh_blocks; ++i) {
      launch.memory.replace(i * kB, kB, testutil::random_bytes(kB, 1000 + i));
    }
    launch.devstate = testutil::random_bytes(devstate_bytes, 5);
    testutil::write_vm(base_, base);
    testutil::write_vm(launch_, launch);
    testutil::make_overlay(base_, launch_, overlay_, 2, 1);
  }
  std::vector<std::string> synth_args(const std::string& out, const std::string& overlay) {
    return {"synthesize", "--base", base_, "--overlay", overlay, "--out", out, "--engine", GetParam()};
  }
  void expect_no_output(const std::string& parent, const std::string& name) {
    EXPECT_FALSE(std::filesystem::exists(parent + "/" + name));
    EXPECT_TRUE(testutil::entries_with_prefix(parent, "." + name + ".").empty());
  }

  TempDir dir_{"vmsynth-crash"};
  std::string base_ = dir_.sub("base"), launch_ = dir_.sub("launch"), overlay_ = dir_.sub("app.vmo");
  std::string out_ = dir_.sub("out"), log_ = dir_.sub("log");
};

TEST_P(CrashSafety, FileSizeLimitMidSynthesisIsAnIoErrorAndLeavesNothing) {
  // Images of 256 KiB fit under the 1 MiB limit; the 2 MiB devstate.bin does not.
  make_pair(64, 32, 2 << 20);
  Child c = spawn(synth_args(out_, overlay_), log_, false, 1 << 20);
  EXPECT_EQ(wait_exit(c.pid), static_cast<int>(ErrorCode::kIo)) << testutil::read_file(log_);
  EXPECT_NE(testutil::read_file(log_).find("File too large"), std::string::npos) << testutil::read_file(log_);
  expect_no_output(dir_.path(), "out");
  // A limit below the image size fails while the images are being created.
  Child c2 = spawn(synth_args(out_, overlay_), log_, false, 64 << 10);
  EXPECT_EQ(wait_exit(c2.pid), static_cast<int>(ErrorCode::kIo)) << testutil::read_file(log_);
  expect_no_output(dir_.path(), "out");
}

TEST_P(CrashSafety, FullFilesystemMidSynthesisIsAnIoErrorAndLeavesNothing) {
  if (std::system("unshare -Urm true >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no private mount namespace (unshare -Urm) here to mount a small tmpfs";
  }
  // 4 MiB images whose memory is a hole in the base; 3 MiB of fresh data
  // must be written into a 1 MiB tmpfs: the block writes fail with ENOSPC.
  make_pair(1024, 768, 1000);
  const std::string mnt = dir_.sub("mnt"), result = dir_.sub("result");
  std::filesystem::create_directories(mnt);
  std::string cmd = "unshare -Urm sh -c 'mount -t tmpfs -o size=1m tmpfs " + mnt + " || exit 99; " +
                    VMSYNTH_BIN + " synthesize --base " + base_ + " --overlay " + overlay_ + " --out " + mnt +
                    "/out --engine " + GetParam() + " >" + log_ + " 2>&1; echo $? >" + result + "; ls -A " + mnt +
                    " >>" + result + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::string r = testutil::read_file(result);
  if (r.rfind("99", 0) == 0) GTEST_SKIP() << "cannot mount tmpfs in a user namespace here";
  EXPECT_EQ(r, std::to_string(static_cast<int>(ErrorCode::kIo)) + "\n") << testutil::read_file(log_);
  EXPECT_NE(testutil::read_file(log_).find("No space left"), std::string::npos) << testutil::read_file(log_);
}

TEST_P(CrashSafety, SigkillMidSynthesisThenRerunSucceeds) {
  make_pair(256, 200, 1000);
  std::vector<std::byte> overlay = testutil::read_bytes(overlay_);
  ::signal(SIGPIPE, SIG_IGN);  // a child that died early is a failed write, not a dead test
  Child c = spawn(synth_args(out_, "-"), log_, true);
  // Half the overlay, then hold the pipe open: the child waits for the rest.
  size_t half = overlay.size() / 2;
  ASSERT_EQ(::write(c.stdin_fd, overlay.data(), half), static_cast<ssize_t>(half)) << testutil::read_file(log_);
  // Wait (bounded, not a timing assertion) until the staging directory exists.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (testutil::entries_with_prefix(dir_.path(), ".out.partial-").empty() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(c.pid, SIGKILL);
  EXPECT_EQ(wait_exit(c.pid), -SIGKILL);
  ::close(c.stdin_fd);
  EXPECT_FALSE(std::filesystem::exists(out_));
  EXPECT_EQ(testutil::entries_with_prefix(dir_.path(), ".out.partial-").size(), 1u) << "the killed run's staging dir";

  Child again = spawn(synth_args(out_, overlay_), log_, false);
  EXPECT_EQ(wait_exit(again.pid), 0) << testutil::read_file(log_);
  EXPECT_EQ(testutil::vm_dir_difference(out_, launch_), "");
  EXPECT_TRUE(testutil::entries_with_prefix(dir_.path(), ".out.").empty()) << "stale staging dir not cleaned";
}

INSTANTIATE_TEST_SUITE_P(Engine, CrashSafety, ::testing::Values("serial", "parallel"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace vmsynth
