// What a new user hit (issue #12), each as a regression test through the real
// vmsynth binary: outputs that alias inputs, thread counts, signals on every
// long command, stale staging, space released after a disk-full failure,
// consistent frame counts, unaligned memory images, and the progress line.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "codec/block_hash.h"
#include "testutil/run_command.h"
#include "testutil/temp_dir.h"
#include "testutil/vm_files.h"

extern char** environ;

namespace vmsynth {
namespace {

using namespace vmfiles;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

Hash128 tree_hash(const std::string& dir) {
  StreamHash128 h;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().string();
    h.update(std::as_bytes(std::span(name)));
    h.update(read_file(e.path()));
  }
  return h.digest();
}

// Names in `dir` that look like staging leftovers (".X.partial-..." / ".X.old-...").
std::vector<std::string> staging_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename();
    if (n.find(".partial-") != std::string::npos || n.find(".old-") != std::string::npos) out.push_back(n);
  }
  return out;
}

// A small base/launch pair with an overlay, made once per test.
class Hardening : public ::testing::Test {
 protected:
  void SetUp() override {
    write_sample_pair(dir_.path());
    auto r = run_vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o",
                          dir_ / "app.vmo"},
                         dir_.path());
    ASSERT_EQ(r.status, 0) << r.err;
    base_hash_ = tree_hash(dir_ / "base");
    launch_hash_ = tree_hash(dir_ / "launch");
    overlay_ = read_file(dir_ / "app.vmo");
  }

  void expect_inputs_untouched() {
    EXPECT_EQ(tree_hash(dir_ / "base"), base_hash_);
    EXPECT_EQ(tree_hash(dir_ / "launch"), launch_hash_);
    EXPECT_EQ(read_file(dir_ / "app.vmo"), overlay_);
  }

  RunResult vmsynth(const std::vector<std::string>& args) { return run_vmsynth(args, dir_.path()); }

  testutil::TempDir dir_{"vmsynth-harden"};
  Hash128 base_hash_, launch_hash_;
  Bytes overlay_;
};

// ---- outputs that are, contain or lie inside an input --------------------

TEST_F(Hardening, SynthesizeOutThatIsContainsOrLiesInsideAnInputIsRefusedEvenWithForce) {
  fs::create_symlink(dir_ / "base", dir_ / "base-link");
  ASSERT_EQ(::link((dir_ / "app.vmo").c_str(), (dir_ / "hardlinked.vmo").c_str()), 0);
  fs::create_directory(dir_ / "holder");
  fs::create_directory_symlink(dir_.path(), dir_ / "holder/up");
  struct Case {
    std::string out, overlay, relation;
  };
  const std::vector<Case> cases = {
      {dir_ / "base", dir_ / "app.vmo", "is the base VM directory"},                 // --out X --base X
      {dir_ / "base-link", dir_ / "app.vmo", "is the base VM directory"},            // through a link
      {dir_ / "base/../base", dir_ / "app.vmo", "is the base VM directory"},         // another spelling
      {dir_.path(), dir_ / "app.vmo", "contains the base VM"},                       // P holds the base
      {dir_ / "base/launch", dir_ / "app.vmo", "lies inside the base VM directory"}, // written into the base
      {dir_ / "base-link/sub/deeper", dir_ / "app.vmo", "lies inside the base VM directory"},
      {dir_ / "hardlinked.vmo", dir_ / "app.vmo", "is the overlay"},                 // same inode, other name
      {dir_ / "holder/up", dir_ / "app.vmo", "contains the base VM"},                // a link to an ancestor
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.out);
    auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", c.overlay, "--out", c.out, "--force"});
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_NE(r.err.find(c.relation), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--force does not change that"), std::string::npos) << r.err;
    expect_inputs_untouched();
    EXPECT_TRUE(staging_in(dir_.path()).empty());
    EXPECT_TRUE(staging_in(dir_ / "base").empty());
  }
  // The overlay given as a file inside --out: --out contains an input.
  fs::create_directory(dir_ / "outdir");
  fs::copy_file(dir_ / "app.vmo", dir_ / "outdir/app.vmo");
  auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "outdir/app.vmo", "--out",
                    dir_ / "outdir", "--force"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("contains the overlay"), std::string::npos) << r.err;
  EXPECT_TRUE(exists(dir_ / "outdir/app.vmo"));
  // An unrelated --out next to the inputs is fine.
  r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "vm"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST_F(Hardening, OverlayCreateOutputOverAnInputIsRefusedEvenWithForce) {
  fs::create_symlink(dir_ / "base/disk.img", dir_ / "disk-link");
  struct Case {
    std::string out, relation;
  };
  const std::vector<Case> cases = {
      {dir_ / "base/disk.img", "is the base VM's disk.img"},
      {dir_ / "launch/memory.img", "is the launch VM's memory.img"},
      {dir_ / "disk-link", "is the base VM's disk.img"},
      {dir_ / "base", "is the base VM directory"},
      {dir_.path(), "contains the base VM"},
      {dir_ / "launch/new.vmo", "lies inside the launch VM directory"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.out);
    auto r = vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o", c.out,
                      "--force"});
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_NE(r.err.find(c.relation), std::string::npos) << r.err;
    expect_inputs_untouched();
  }
}

TEST_F(Hardening, VmCreateOutThatHoldsItsDiskImageIsRefused) {
  write_file(dir_ / "vmd/disk.img", random_bytes(64 * kBlock, 9));
  const Bytes disk = read_file(dir_ / "vmd/disk.img");
  for (const char* force : {"", "--force"}) {
    std::vector<std::string> args = {"vm", "create", "--out", dir_ / "vmd", "--disk", dir_ / "vmd/disk.img",
                                     "--memory-mib", "16"};
    if (*force) args.push_back(force);
    auto r = vmsynth(args);
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_NE(r.err.find("contains the --disk image"), std::string::npos) << r.err;
    EXPECT_EQ(read_file(dir_ / "vmd/disk.img"), disk);
  }
}

// ---- thread counts ---------------------------------------------------------

TEST_F(Hardening, ThreadCountsOutOfRangeAreUsageErrorsThatLeaveNothing) {
  for (const char* n : {"100000", "5000", "257", "4294967295", "-1"}) {
    SCOPED_TRACE(n);
    auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
                      "--threads", n});
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_NE(r.err.find("--threads"), std::string::npos) << r.err;
    EXPECT_FALSE(exists(dir_ / "out"));
    EXPECT_TRUE(staging_in(dir_.path()).empty());
    r = vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o", dir_ / "x.vmo",
                 "--threads", n});
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_FALSE(exists(dir_ / "x.vmo"));
  }
  // --help says the range.
  auto h = vmsynth({"synthesize", "--help"});
  EXPECT_NE(h.out.find("0-256"), std::string::npos) << h.out;
  // The serial engine refuses more than one thread instead of ignoring it.
  auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
                    "--engine", "serial", "--threads", "4"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("serial engine runs on one thread"), std::string::npos) << r.err;
  r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
               "--engine", "serial"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("1 thread,"), std::string::npos) << r.out;
}

TEST_F(Hardening, TheLargestThreadCountRunsWithoutWarnings) {
  auto r = vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o",
                    dir_ / "x.vmo", "--threads", "256"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");  // no oneTBB warning about the worker limit
  r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "x.vmo", "--out", dir_ / "out",
               "--threads", "256", "--json"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(nlohmann::json::parse(r.out)["threads"], 256);
}

// A thread that cannot be created (here: too little address space for the
// stacks) fails inside oneTBB's own threads, where nothing can catch it; the
// process still ends with a message and exit 70, and removes its staging.
TEST_F(Hardening, FailingThreadCreationIsAnInternalErrorThatLeavesNothing) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's shadow memory does not fit in a limited address space";
#else
  auto r = testutil::run_command("ulimit -v 400000; exec " + shell_quote(VMSYNTH_BIN) + " synthesize --base " +
                                 shell_quote(dir_ / "base") + " --overlay " + shell_quote(dir_ / "app.vmo") +
                                 " --out " + shell_quote(dir_ / "out") + " --threads 256");
  if (r.exit_code == 0) GTEST_SKIP() << "256 threads fit in 400 MB of address space here";
  EXPECT_EQ(r.exit_code, 70) << r.output;
  EXPECT_NE(r.output.find("vmsynth: internal error:"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(dir_ / "out"));
  EXPECT_TRUE(staging_in(dir_.path()).empty());
  expect_inputs_untouched();
#endif
}

// ---- consistent reports, bad base directories ------------------------------

TEST_F(Hardening, SynthesizeCountsTheFramesInfoCounts) {
  auto info = vmsynth({"overlay", "info", dir_ / "app.vmo", "--json"});
  ASSERT_EQ(info.status, 0) << info.err;
  const auto frames = nlohmann::json::parse(info.out)["frames"].get<uint64_t>();
  EXPECT_GT(frames, 2u);  // file frames and block frames
  for (const char* engine : {"serial", "parallel"}) {
    SCOPED_TRACE(engine);
    auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out",
                      dir_ / ("out-" + std::string(engine)), "--engine", engine, "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["frames"].get<uint64_t>(), frames);
  }
}

TEST_F(Hardening, MissingBaseDirectoryAndUnalignedMemoryAreNamed) {
  auto r = vmsynth({"synthesize", "--base", dir_ / "nope", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("base VM directory '" + (dir_ / "nope") + "' does not exist"), std::string::npos) << r.err;
  write_file(dir_ / "odd/memory.img", Bytes(1000));
  write_file(dir_ / "odd/disk.img", Bytes(8192));
  r = vmsynth({"overlay", "create", "--base", dir_ / "odd", "--launch", dir_ / "launch", "-o", dir_ / "x.vmo"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("memory.img has 1000 bytes, not a whole number of 4096-byte pages"), std::string::npos)
      << r.err;
  EXPECT_FALSE(exists(dir_ / "x.vmo"));
}

TEST_F(Hardening, SynthesizeMemoryBudgetHasItsOwnName) {
  // --memory-mib means guest RAM (gen-pair, vm create); synthesize's frame budget is --memory-budget-mib.
  auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
                    "--memory-mib", "64"});
  EXPECT_EQ(r.status, 2) << r.err;
  r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
               "--memory-budget-mib", "15"});
  EXPECT_EQ(r.status, 2) << r.err;
  r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "out",
               "--memory-budget-mib", "64"});
  EXPECT_EQ(r.status, 0) << r.err;
}

// ---- --launch of a VM that cannot be launched ---------------------------------

// gen-pair VMs are synthetic data without a machine description: synthesize
// --launch keeps the synthesis (exit 0), says why nothing was launched, and
// does not call the overlay corrupt.
TEST_F(Hardening, LaunchOfAVmWithoutAMachineDescriptionKeepsTheSynthesis) {
  ASSERT_EQ(vmsynth({"gen-pair", "--out", dir_ / "pair", "--memory-mib", "4", "--disk-mib", "4"}).status, 0);
  ASSERT_EQ(vmsynth({"overlay", "create", "--base", dir_ / "pair/base", "--launch", dir_ / "pair/launch", "-o",
                     dir_ / "pair.vmo"})
                .status,
            0);
  auto r = vmsynth({"synthesize", "--base", dir_ / "pair/base", "--overlay", dir_ / "pair.vmo", "--out",
                    dir_ / "vm", "--launch", "--json"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("did not launch it"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not a machine description"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("corrupt"), std::string::npos) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["launch"]["ok"], false);
  EXPECT_EQ(j["launch"]["error"]["code"], "unsupported");
  EXPECT_EQ(read_file(dir_ / "vm/memory.img"), read_file(dir_ / "pair/launch/memory.img"));
  EXPECT_EQ(read_file(dir_ / "vm/disk.img"), read_file(dir_ / "pair/launch/disk.img"));
}

// ---- the cache directory ----------------------------------------------------

TEST_F(Hardening, CacheInfoShowsWhatSynthesisCachedAndClearRemovesIt) {
  const std::string cache = dir_ / "cache";
  const char* was = std::getenv("VMSYNTH_CACHE_DIR");
  const std::string previous = was ? was : "";
  ::setenv("VMSYNTH_CACHE_DIR", cache.c_str(), 1);
  auto r = vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "vm"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto info = vmsynth({"cache", "info", "--json"});
  ASSERT_EQ(info.status, 0) << info.err;
  auto j = nlohmann::json::parse(info.out)["cache"];
  EXPECT_EQ(j["dir"], cache);
  EXPECT_EQ(j["base_id_entries"], 1);
  auto cleared = vmsynth({"cache", "clear", "--json"});
  ASSERT_EQ(cleared.status, 0) << cleared.err;
  EXPECT_EQ(nlohmann::json::parse(cleared.out)["removed"]["base_id_entries"], 1);
  info = vmsynth({"cache", "info", "--json", "--dir", cache});
  EXPECT_EQ(nlohmann::json::parse(info.out)["cache"]["base_id_entries"], 0);
  if (was) {
    ::setenv("VMSYNTH_CACHE_DIR", previous.c_str(), 1);
  } else {
    ::unsetenv("VMSYNTH_CACHE_DIR");
  }
}

// ---- stale staging -----------------------------------------------------------

// A pid that certainly belonged to a process that has exited.
pid_t dead_pid() {
  pid_t p = ::fork();
  if (p == 0) ::_exit(0);
  int st;
  ::waitpid(p, &st, 0);
  return p;
}

TEST_F(Hardening, StagingOfDeadProcessesIsRemovedForEveryCommandsOutput) {
  const std::string dead = std::to_string(dead_pid());
  const std::string live = std::to_string(::getpid());
  // Leftovers of killed runs: directories for gen-pair and synthesize, a file for overlay create.
  fs::create_directories(dir_ / (".pair.partial-" + dead + "-0123456789ab/base"));
  fs::create_directories(dir_ / (".vm.partial-" + dead + "-0123456789ab"));
  fs::create_directories(dir_ / (".vm.old-" + dead + "-0123456789ab"));
  write_file(dir_ / (".new.vmo.partial-" + dead + "-0123456789ab"), Bytes(100));
  // Staging of a live process (this test) stays.
  fs::create_directories(dir_ / (".vm.partial-" + live + "-0123456789ab"));

  EXPECT_EQ(vmsynth({"gen-pair", "--out", dir_ / "pair", "--memory-mib", "1", "--disk-mib", "1"}).status, 0);
  EXPECT_EQ(vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o",
                     dir_ / "new.vmo"})
                .status,
            0);
  EXPECT_EQ(vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "app.vmo", "--out", dir_ / "vm"})
                .status,
            0);
  EXPECT_EQ(staging_in(dir_.path()), std::vector<std::string>{".vm.partial-" + live + "-0123456789ab"});
}

// ---- signals -----------------------------------------------------------------

// A vmsynth process started in the background, its output in files.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& workdir, int stdin_fd = -1)
      : out_(workdir + "/.child.out"), err_(workdir + "/.child.err") {
    std::vector<std::string> argv = {VMSYNTH_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (stdin_fd >= 0) {
      posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
    } else {
      posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    }
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (::posix_spawn(&pid_, VMSYNTH_BIN, &fa, nullptr, cargv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  bool running() {
    int st;
    if (waited_) return false;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      waited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return !waited_;
  }
  // True once the process catches SIGINT, SIGTERM and SIGHUP (its handlers are installed).
  bool catches_stop_signals() {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("SigCgt:", 0) != 0) continue;
      const unsigned long long mask = std::stoull(line.substr(7), nullptr, 16);
      auto bit = [&](int s) { return (mask >> (s - 1)) & 1; };
      return bit(SIGINT) && bit(SIGTERM) && bit(SIGHUP);
    }
    return false;
  }
  int wait() {
    if (!waited_) {
      int st;
      ::waitpid(pid_, &st, 0);
      waited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return status_;
  }
  std::string err() { return testutil::run_command("cat '" + err_ + "'").output; }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  bool waited_ = false;
  int status_ = -1;
};

// Waits (bounded: a guard against a hang, not a timing assertion) until cond() or the child ends.
template <class Cond>
bool wait_until(Child& c, Cond cond) {
  const auto limit = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < limit) {
    if (cond()) return true;
    if (!c.running()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP"; }

void expect_interrupted(Child& c, int sig) {
  EXPECT_EQ(c.wait(), 9) << c.err();
  EXPECT_NE(c.err().find(std::string("interrupted by ") + signal_name(sig)), std::string::npos) << c.err();
}

class Signals : public Hardening, public ::testing::WithParamInterface<int> {};

TEST_P(Signals, GenPairStopsRemovesItsStagingAndExits9) {
  const int sig = GetParam();
  Child c({"gen-pair", "--out", dir_ / "pair", "--memory-mib", "256", "--disk-mib", "1024"}, dir_.path());
  ASSERT_GT(c.pid(), 0);
  ASSERT_TRUE(wait_until(c, [&] { return c.catches_stop_signals() && !staging_in(dir_.path()).empty(); }))
      << "gen-pair ended before it could be interrupted: " << c.err();
  ::kill(c.pid(), sig);
  expect_interrupted(c, sig);
  EXPECT_FALSE(exists(dir_ / "pair"));
  EXPECT_TRUE(staging_in(dir_.path()).empty());
}

TEST_P(Signals, OverlayCreateStopsRemovesItsTemporaryFileAndExits9) {
  const int sig = GetParam();
  ASSERT_EQ(vmsynth({"gen-pair", "--out", dir_ / "big", "--memory-mib", "128", "--disk-mib", "512", "--profile",
                     "decode-heavy"})
                .status,
            0);
  Child c({"overlay", "create", "--base", dir_ / "big/base", "--launch", dir_ / "big/launch", "-o",
           dir_ / "big.vmo"},
          dir_.path());
  // Interrupted while it writes the overlay (encoding frames), when there is something to remove.
  ASSERT_TRUE(wait_until(c, [&] { return !staging_in(dir_.path()).empty(); }))
      << "overlay create ended before it could be interrupted: " << c.err();
  ::kill(c.pid(), sig);
  expect_interrupted(c, sig);
  EXPECT_FALSE(exists(dir_ / "big.vmo"));
  EXPECT_TRUE(staging_in(dir_.path()).empty());
}

TEST_P(Signals, SynthesizeStopsRemovesItsStagingAndExits9) {
  const int sig = GetParam();
  for (const char* engine : {"serial", "parallel"}) {
    for (const bool sender_stalls : {false, true}) {
      SCOPED_TRACE(std::string(engine) + (sender_stalls ? ", sender stalls" : ", sender goes on"));
      // The overlay arrives through a pipe: half of it, then the signal, then (unless the
      // sender stalls for good) the rest, so the engine is certainly mid-stream.
      int fds[2];
      ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);  // the child must not hold the write end itself
      Child c({"synthesize", "--base", dir_ / "base", "--overlay", "-", "--out", dir_ / "out", "--engine", engine},
              dir_.path(), fds[0]);
      ::close(fds[0]);
      const size_t half = overlay_.size() / 2;
      ASSERT_EQ(::write(fds[1], overlay_.data(), half), static_cast<ssize_t>(half));
      ASSERT_TRUE(wait_until(c, [&] { return c.catches_stop_signals() && !staging_in(dir_.path()).empty(); }))
          << c.err();
      ::kill(c.pid(), sig);
      if (!sender_stalls) {
        ::signal(SIGPIPE, SIG_IGN);  // the process may have stopped reading already
        (void)::write(fds[1], overlay_.data() + half, overlay_.size() - half);
      }
      // A stalled sender keeps its end open: the engine must not wait for it.
      EXPECT_TRUE(wait_until(c, [] { return false; }) || !c.running()) << "still running after the signal";
      expect_interrupted(c, sig);
      ::close(fds[1]);
      EXPECT_FALSE(exists(dir_ / "out"));
      EXPECT_TRUE(staging_in(dir_.path()).empty());
      expect_inputs_untouched();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EachStopSignal, Signals, ::testing::Values(SIGINT, SIGTERM, SIGHUP),
                         [](const ::testing::TestParamInfo<int>& i) { return std::string(signal_name(i.param)); });

// ---- disk full -----------------------------------------------------------------

// After the parallel engine fails on a full disk, the space it used is free
// when the process has exited, so an immediate retry finds it. (io_uring's
// asynchronous ring teardown used to hold the deleted files for ~0.5 s.)
TEST_F(Hardening, SpaceIsFreeTheMomentAFailedSynthesisExits) {
  ASSERT_EQ(vmsynth({"gen-pair", "--out", dir_ / "pair", "--memory-mib", "64", "--disk-mib", "256"}).status, 0);
  ASSERT_EQ(vmsynth({"overlay", "create", "--base", dir_ / "pair/base", "--launch", dir_ / "pair/launch", "-o",
                     dir_ / "pair.vmo"})
                .status,
            0);
  const std::string small = dir_ / "small";
  fs::create_directory(small);
  if (::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=48m") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (" << std::strerror(errno) << "); needs root";
  }
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{small};
  auto used = [&] {
    struct statvfs s;
    ::statvfs(small.c_str(), &s);
    return (s.f_blocks - s.f_bfree) * s.f_frsize;
  };
  const auto before = used();
  for (const char* backend : {"io_uring", "pwrite"}) {
    SCOPED_TRACE(backend);
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto r = vmsynth({"synthesize", "--base", dir_ / "pair/base", "--overlay", dir_ / "pair.vmo", "--out",
                        small + "/vm", "--write-backend", backend});
      EXPECT_EQ(r.status, 6) << r.err;
      EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
      EXPECT_EQ(used(), before) << "space still held right after the failed run exited";
      EXPECT_TRUE(staging_in(small).empty());
    }
  }
}

// ---- progress ---------------------------------------------------------------------

// On a terminal (script(1) gives the command one) the progress line names the
// phase, the bytes, the rate and a clock that keeps moving while the engine
// waits; --quiet draws nothing.
TEST_F(Hardening, ProgressOnATerminalShowsPhaseRateAndAMovingClockAndQuietHidesIt) {
  if (!testutil::have_program("script")) GTEST_SKIP() << "script(1) (bsdutils) not installed";
  write_file(dir_ / "head.vmo", Bytes(overlay_.begin(), overlay_.begin() + overlay_.size() / 2));
  write_file(dir_ / "tail.vmo", Bytes(overlay_.begin() + overlay_.size() / 2, overlay_.end()));
  auto run = [&](const std::string& extra, const std::string& out) {
    const std::string inner = "{ cat " + shell_quote(dir_ / "head.vmo") + "; sleep 2.5; cat " +
                              shell_quote(dir_ / "tail.vmo") + "; } | " + shell_quote(VMSYNTH_BIN) +
                              " synthesize --base " + shell_quote(dir_ / "base") + " --overlay - --out " +
                              shell_quote(out) + extra;
    return testutil::run_command("script -qefc " + shell_quote(inner) + " /dev/null");
  };
  auto shown = run("", dir_ / "vm1");
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_NE(shown.output.find("synthesizing: applying"), std::string::npos) << shown.output;
  EXPECT_NE(shown.output.find("/s"), std::string::npos) << shown.output;
  // The clock moved while no overlay byte arrived.
  EXPECT_NE(shown.output.find("[0:01]"), std::string::npos) << shown.output;
  EXPECT_NE(shown.output.find("[0:02]"), std::string::npos) << shown.output;
  auto quiet = run(" --quiet", dir_ / "vm2");
  ASSERT_EQ(quiet.exit_code, 0) << quiet.output;
  EXPECT_EQ(quiet.output.find("synthesizing:"), std::string::npos) << quiet.output;
  EXPECT_NE(quiet.output.find("synthesized"), std::string::npos) << quiet.output;
}

}  // namespace
}  // namespace vmsynth
