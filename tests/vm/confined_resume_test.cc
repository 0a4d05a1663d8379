// Confined resume (ResumeOptions::confinement, trusted_base_dir) under TCG
// with real QEMU and the tiny test guest (tests/guest/build-guest.sh): the
// guest goes on counting, QEMU runs under seccomp (Seccomp: 2) as the
// unprivileged user, in its own cgroup with the limits, detached from the
// caller; stop_vm removes the cgroup. One guest build + boot + capture is
// shared by the suite (~15 s); each resume is well under a second.
//
// As root QEMU runs as nobody (65534:65534); as another user, as that user.
// Skipped when qemu-system-x86_64 is not installed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "vm/confinement.h"
#include "vm/machine_spec.h"
#include "vm/subprocess.h"
#include "vm/vm_control.h"

namespace vmsynth::vm {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr uid_t kNobody = 65534;

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The n of every "COUNTER n" line of a serial log.
std::vector<int> counters(const std::string& serial) {
  std::vector<int> v;
  std::istringstream in(read_text(serial));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("COUNTER ", 0) != 0) continue;
    int n = 0;
    auto [end, ec] = std::from_chars(line.data() + 8, line.data() + line.size(), n);
    if (ec == std::errc() && end == line.data() + line.size()) v.push_back(n);
  }
  return v;
}

bool wait_for_counter(const std::string& serial, int at_least, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto c = counters(serial);
    if (!c.empty() && c.back() >= at_least) return true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  return false;
}

// "Name:\tvalue" from /proc/PID/status.
std::string proc_status(pid_t pid, const std::string& key) {
  std::istringstream in(read_text("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

// Gone, or a zombie waiting for its reaper.
bool process_gone_for_test(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  const std::string st = read_text("/proc/" + std::to_string(pid) + "/stat");
  const auto close = st.rfind(')');
  return close != std::string::npos && st.size() > close + 2 && st[close + 2] == 'Z';
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

class ConfinedResume : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!find_program("qemu-system-x86_64") || !find_program("qemu-img")) return;
    char tmpl[] = "/tmp/vmsynth-conf-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    // The unprivileged QEMU must reach its run directories.
    ::chmod(root_.c_str(), 0755);
    const std::string guest = root_ + "/guest";
    ProcessResult g = run_process({"sh", std::string(VMSYNTH_SOURCE_DIR) + "/tests/guest/build-guest.sh", guest},
                                  milliseconds(600000));
    if (g.exit_code != 0) {
      setup_error_ = "building the test guest failed:\n" + g.out + g.err;
      return;
    }
    const std::string append = read_text(guest + "/append.txt");
    try {
      CreateOptions c;
      c.out_dir = root_ + "/vm";
      c.disk_image = guest + "/disk.img";
      c.memory_mib = 128;
      c.kernel = guest + "/vmlinuz";
      c.initrd = guest + "/initrd.img";
      c.append = append.substr(0, append.find('\n'));
      c.accel = "tcg";
      create_vm(c);
      start_vm(c.out_dir);
      if (!wait_for_counter(c.out_dir + "/serial.log", 3, seconds(180))) {
        setup_error_ = "the guest did not count: " + read_text(c.out_dir + "/serial.log");
      } else {
        CaptureOptions co;
        co.out_dir = base();
        capture_vm(c.out_dir, co);
        base_counter_ = counters(c.out_dir + "/serial.log").back();
      }
      stop_vm(c.out_dir);
    } catch (const Error& e) {
      setup_error_ = e.what();
    }
  }
  static void TearDownTestSuite() {
    if (!root_.empty() && std::getenv("VMSYNTH_KEEP_TEST_DIR") == nullptr) {
      std::error_code ec;
      fs::remove_all(root_, ec);
    }
  }
  void SetUp() override {
    if (root_.empty()) GTEST_SKIP() << "qemu-system-x86_64 / qemu-img not installed";
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }
  void TearDown() override {
    if (leaked_fd_ >= 0) ::close(leaked_fd_);
    for (const auto& d : running_) {
      try {
        if (query_vm(d).running) stop_vm(d);
      } catch (const Error&) {
      }
    }
  }
  static std::string base() { return root_ + "/base"; }
  std::string dir(const std::string& name) {
    running_.push_back(root_ + "/" + name);
    return running_.back();
  }
  static Confinement confinement() {
    Confinement c;
    if (::geteuid() == 0) c.uid = kNobody;
    return c;
  }

  static inline std::string root_;
  static inline std::string setup_error_;
  static inline int base_counter_ = 0;
  std::vector<std::string> running_;
  int leaked_fd_ = -1;
};

TEST_F(ConfinedResume, GuestContinuesUnderSeccompUserAndCgroup) {
  {
    const int fd = ::open("/dev/null", O_RDONLY);
    leaked_fd_ = ::fcntl(fd, F_DUPFD, 20);  // deliberately without FD_CLOEXEC
    ::close(fd);
  }
  ASSERT_GE(leaked_fd_, 20);
  ResumeOptions o;
  o.work_dir = dir("w");
  o.confinement = confinement();
  ResumeResult r = resume_vm(base(), o);
  std::cout << "confined resume: " << r.resume_ms << " ms; limits: " << r.limits << "\n";
  ASSERT_GT(r.pid, 0);
  EXPECT_TRUE(r.sandboxed);
  EXPECT_EQ(proc_status(r.pid, "Seccomp"), "2") << "QEMU must run under its seccomp filter";
  const uid_t expect_uid = ::geteuid() == 0 ? kNobody : ::geteuid();
  EXPECT_EQ(r.uid, expect_uid);
  EXPECT_EQ(proc_status(r.pid, "Uid").substr(0, proc_status(r.pid, "Uid").find('\t')), std::to_string(expect_uid));
  EXPECT_NE(proc_status(r.pid, "PPid"), std::to_string(::getpid())) << "QEMU is detached, not our child";
  EXPECT_NE(r.limits.find("rlimits: core=0 nofile=1024"), std::string::npos) << r.limits;
  // Only 0-3 of ours reach QEMU; a descriptor we leave open (no CLOEXEC) must not.
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(r.pid) + "/fd/" + std::to_string(leaked_fd_)));
  EXPECT_EQ(proc_status(r.pid, "Uid").find(std::to_string(expect_uid)), 0u);

  ASSERT_TRUE(wait_for_counter(o.work_dir + "/serial.log", base_counter_ + 2, seconds(30)))
      << read_text(o.work_dir + "/serial.log") << read_text(o.work_dir + "/qemu.log");
  EXPECT_EQ(counters(o.work_dir + "/serial.log").front(), base_counter_ + 1) << "resumed, not rebooted";
  EXPECT_TRUE(query_vm(o.work_dir).running);

  // The cgroup, where one can be made (root with cgroup v1 or v2).
  std::vector<std::string> cgroups;
  if (r.limits.rfind("cgroup v1 ", 0) == 0) {
    const std::string leaf = r.limits.substr(10, r.limits.find(':') - 10);
    const std::string name = leaf.substr(leaf.rfind('/'));
    const std::string mem = "/sys/fs/cgroup/memory/vmsynth" + name, cpu = "/sys/fs/cgroup/cpu/vmsynth" + name;
    cgroups = {mem, cpu};
    EXPECT_EQ(std::stoull(read_text(mem + "/memory.limit_in_bytes")), (128ull + 256 + kTcgCodeBufferMib) << 20);
    EXPECT_EQ(std::stoll(read_text(cpu + "/cpu.cfs_quota_us")), 100000);
    EXPECT_EQ(std::stoll(read_text(cpu + "/cpu.cfs_period_us")), 100000);
    std::cout << "cgroup memory.max_usage_in_bytes after resume: "
              << std::stoull(read_text(mem + "/memory.max_usage_in_bytes")) / (1 << 20) << " MiB\n";
  } else if (r.limits.rfind("cgroup v2 ", 0) == 0) {
    const std::string leaf = r.limits.substr(10, r.limits.find(':') - 10);
    cgroups = {leaf};
    EXPECT_EQ(std::stoull(read_text(leaf + "/memory.max")), (128ull + 256 + kTcgCodeBufferMib) << 20);
    EXPECT_EQ(read_text(leaf + "/cpu.max"), "100000 100000\n");
  } else {
    std::cout << "no cgroup here: " << r.limits << "\n";
    // As root a cgroup is expected wherever a hierarchy is mounted (a
    // container or chroot without /sys/fs/cgroup has none, and says so).
    const bool mounted = fs::exists("/sys/fs/cgroup/cgroup.controllers") || fs::exists("/sys/fs/cgroup/memory/tasks");
    EXPECT_FALSE(::geteuid() == 0 && mounted) << "as root with cgroups mounted, a cgroup is expected: " << r.limits;
    EXPECT_NE(r.limits.find("no cgroup"), std::string::npos) << "limits must say why there is none: " << r.limits;
  }
  for (const auto& cg : cgroups) {
    EXPECT_NE(read_text(cg + "/cgroup.procs").find(std::to_string(r.pid) + "\n"), std::string::npos) << cg;
  }
  StopResult s = stop_vm(o.work_dir);
  EXPECT_TRUE(s.warnings.empty()) << s.warnings.front();
  for (const auto& cg : cgroups) EXPECT_FALSE(fs::exists(cg)) << "stop must remove " << cg;
}

// The daemon's case: a VM directory synthesized from an untrusted overlay
// (no boot files, vm.json from the sender), resumed in place against its
// trusted base.
TEST_F(ConfinedResume, UntrustedDirectoryResumesAgainstItsBase) {
  const std::string u = dir("u");
  fs::create_directories(u);
  ::chmod(u.c_str(), 0755);
  for (const char* f : {"memory.img", "disk.img", "devstate.bin", "vm.json"}) {
    fs::copy_file(base() + "/" + f, u + "/" + f);
  }
  // The sender's vm.json says its kernel came from elsewhere: never used.
  nlohmann::json j = read_vm_json(u);
  j["boot"]["kernel"]["origin"] = "/nonexistent/evil";
  write_vm_json(u, j);
  ResumeOptions o;
  o.trusted_base_dir = base();
  o.confinement = confinement();
  ResumeResult r = resume_vm(u, o);
  EXPECT_EQ(proc_status(r.pid, "Seccomp"), "2");
  ASSERT_TRUE(wait_for_counter(u + "/serial.log", base_counter_ + 2, seconds(30)))
      << read_text(u + "/serial.log") << read_text(u + "/qemu.log");
  stop_vm(u);

  // A tampered vm.json is refused before QEMU starts, naming the field.
  j = read_vm_json(u);
  j["machine"]["cpu_model"] = "qemu64,+vmx";
  write_vm_json(u, j);
  try {
    resume_vm(u, o);
    ADD_FAILURE() << "a cpu_model with QEMU option syntax must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("vm.json field 'machine.cpu_model': 'qemu64,+vmx'"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(query_vm(u).running);
}

TEST_F(ConfinedResume, QemuThatCannotStartIsReportedAndCleanedUp) {
  ResumeOptions o;
  o.work_dir = dir("bad");
  o.confinement = confinement();
  fs::create_directories(o.work_dir);
  // Make the run directory unreachable for QEMU's user: refused up front.
  if (::geteuid() == 0) {
    const std::string hidden = root_ + "/hidden";
    fs::create_directories(hidden);
    ::chmod(hidden.c_str(), 0700);
    o.work_dir = hidden + "/w";
    try {
      resume_vm(base(), o);
      ADD_FAILURE() << "an unreachable run directory must be refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUsage);
      EXPECT_NE(std::string(e.what()).find("no search permission on '" + hidden + "'"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(hidden + "/w/qemu.pid"));
    EXPECT_TRUE(remove_vm_cgroups(hidden + "/w").empty());
  }
}

// Capture hands QEMU its output file with `getfd` instead of `exec:cat`, so
// a confined (spawn=deny) VM can be captured, and the result resumes.
TEST_F(ConfinedResume, ConfinedVmCanBeCapturedAndResumed) {
  ResumeOptions o;
  o.work_dir = dir("cw");
  o.confinement = confinement();
  ResumeResult r = resume_vm(base(), o);
  ASSERT_TRUE(wait_for_counter(o.work_dir + "/serial.log", base_counter_ + 2, seconds(30)))
      << read_text(o.work_dir + "/qemu.log");
  CaptureOptions co;
  co.out_dir = root_ + "/recaptured";
  CaptureResult c = capture_vm(o.work_dir, co);
  EXPECT_GT(c.devstate_bytes, 0u);
  EXPECT_TRUE(query_vm(o.work_dir).running) << "capturing must not kill the sandboxed QEMU";
  EXPECT_EQ(proc_status(r.pid, "Seccomp"), "2");
  stop_vm(o.work_dir);
  const int captured_at = counters(o.work_dir + "/serial.log").back();

  // Regression: the recorded command line lacked -kernel/-initrd/-append
  // (capture built it from a layout without boot files).
  const nlohmann::json j = read_vm_json(co.out_dir);
  const auto args = j["captured"]["qemu_args"].get<std::vector<std::string>>();
  auto kernel = std::find(args.begin(), args.end(), "-kernel");
  ASSERT_NE(kernel, args.end()) << j["captured"]["qemu_args"].dump();
  EXPECT_EQ(*std::next(kernel), co.out_dir + "/kernel");
  EXPECT_NE(std::find(args.begin(), args.end(), "-append"), args.end());

  ResumeOptions again;
  again.work_dir = dir("cw2");
  resume_vm(co.out_dir, again);
  ASSERT_TRUE(wait_for_counter(again.work_dir + "/serial.log", captured_at + 2, seconds(30)));
  EXPECT_EQ(counters(again.work_dir + "/serial.log").front(), captured_at + 1);
  stop_vm(again.work_dir);
}

// Between runs QEMU's user owns the run directory; symlinks it planted must
// not redirect vmsynth's (root's) writes when the directory is reused.
TEST_F(ConfinedResume, ReusedRunDirectoryIsTakenBack) {
  ResumeOptions o;
  o.work_dir = dir("reuse");
  o.confinement = confinement();
  resume_vm(base(), o);
  stop_vm(o.work_dir);
  const std::string victim = root_ + "/victim";
  { std::ofstream(victim) << "precious\n"; }
  for (const char* name : {"qemu.log", "vm.json.tmp", "disk.qcow2"}) {
    const std::string link = o.work_dir + "/" + name;
    fs::remove(link);
    fs::create_symlink(victim, link);
  }
  ResumeResult r = resume_vm(base(), o);
  EXPECT_EQ(read_text(victim), "precious\n");
  EXPECT_FALSE(fs::is_symlink(o.work_dir + "/qemu.log"));
  EXPECT_EQ(proc_status(r.pid, "Seccomp"), "2");
  stop_vm(o.work_dir);
}

TEST(Confinement, RootNeedsAnUnprivilegedUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  Confinement c;
  EXPECT_THROW(resolve_user(c), Error);
  c.uid = 0;
  EXPECT_THROW(resolve_user(c), Error);
  c.uid = kNobody;
  ConfinedUser u = resolve_user(c);
  EXPECT_TRUE(u.switch_user);
  EXPECT_EQ(u.name, "nobody");
  EXPECT_EQ(u.gid, 65534u);
}

TEST(Confinement, KvmWithoutAccessSaysToAddTheUserToGroupKvm) {
  ConfinedUser u;
  u.switch_user = true;
  u.uid = kNobody;
  u.gid = kNobody;
  u.groups = {kNobody};
  u.name = "nobody";
  struct stat st;
  if (::stat("/dev/kvm", &st) == 0 && (st.st_mode & 0006) == 0006) GTEST_SKIP() << "/dev/kvm is world-writable";
  try {
    require_kvm_access(u);
    ADD_FAILURE() << "nobody must not open /dev/kvm here";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("add the user to group 'kvm'"), std::string::npos) << e.what();
  }
}

// The daemon may be SIGKILLed: the confined QEMU it started runs on, and a
// new process finds it by its pidfile lock, stops it and removes its cgroup.
TEST_F(ConfinedResume, VmOutlivesAKilledCaller) {
  const std::string w = dir("orphan");
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t caller = ::fork();
  ASSERT_GE(caller, 0);
  if (caller == 0) {
    ::close(p[0]);
    pid_t qemu = -1;
    try {
      ResumeOptions o;
      o.work_dir = w;
      o.confinement = confinement();
      qemu = resume_vm(base(), o).pid;
    } catch (...) {
    }
    ssize_t n = ::write(p[1], &qemu, sizeof qemu);
    (void)n;
    ::pause();
    ::_exit(0);
  }
  ::close(p[1]);
  pid_t qemu = -1;
  ASSERT_EQ(::read(p[0], &qemu, sizeof qemu), static_cast<ssize_t>(sizeof qemu));
  ::close(p[0]);
  ::kill(caller, SIGKILL);
  ::waitpid(caller, nullptr, 0);
  ASSERT_GT(qemu, 0) << "the confined resume in the child failed";
  VmStatus st = query_vm(w);
  EXPECT_TRUE(st.running);
  EXPECT_EQ(st.pid, qemu);
  EXPECT_EQ(st.qmp_status, "running");
  ASSERT_TRUE(wait_for_counter(w + "/serial.log", base_counter_ + 2, seconds(30)));
  StopResult s = stop_vm(w);
  EXPECT_TRUE(s.warnings.empty()) << s.warnings.front();
  EXPECT_TRUE(process_gone_for_test(qemu));
  for (const char* root : {"/sys/fs/cgroup/memory/vmsynth", "/sys/fs/cgroup/cpu/vmsynth", "/sys/fs/cgroup/vmsynth"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec)) {
      EXPECT_EQ(read_text(e.path().string() + "/cgroup.procs").find(std::to_string(qemu) + "\n"), std::string::npos)
          << e.path();
    }
  }
}

// Not a timing assertion: prints resume_ms (spawn to `cont`) and total_ms -
// prepare_ms (adds the confinement set-up: chown, cgroup) per measure,
// medians of 5, for docs/vm.md.
TEST_F(ConfinedResume, ResumeTimeConfinedVsNot) {
  struct Variant {
    const char* name;
    bool confined, seccomp, cgroup;
  };
  const Variant variants[] = {{"unconfined", false, false, false},
                              {"confined (seccomp + user + cgroup + rlimits)", true, true, true},
                              {"confined without seccomp", true, false, true},
                              {"confined without cgroup", true, true, false}};
  std::vector<std::vector<double>> ms(std::size(variants)), total(std::size(variants));
  for (int i = 0; i < 5; ++i) {
    for (size_t v = 0; v < std::size(variants); ++v) {
      ResumeOptions o;
      o.work_dir = dir("t" + std::to_string(v) + "-" + std::to_string(i));
      if (variants[v].confined) {
        o.confinement = confinement();
        o.confinement->seccomp = variants[v].seccomp;
        o.confinement->cgroup = variants[v].cgroup;
      }
      ResumeResult r = resume_vm(base(), o);
      ms[v].push_back(r.resume_ms);
      total[v].push_back(r.total_ms - r.prepare_ms);
      stop_vm(o.work_dir);
    }
  }
  for (size_t v = 0; v < std::size(variants); ++v) {
    std::cout << "resume_ms median of 5, " << variants[v].name << ": " << median(ms[v]) << " ms (min "
              << *std::min_element(ms[v].begin(), ms[v].end()) << "); total_ms - prepare_ms " << median(total[v])
              << " ms\n";
  }
  SUCCEED();
}

}  // namespace
}  // namespace vmsynth::vm
