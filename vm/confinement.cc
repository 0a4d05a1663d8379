#include "vm/confinement.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "io/file.h"
#include "vm/subprocess.h"

extern char** environ;

namespace vmsynth::vm {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kCpuPeriodUs = 100000;

std::string errno_text(int e) { return std::strerror(e); }

bool in_groups(const ConfinedUser& u, gid_t g) {
  return g == u.gid || std::find(u.groups.begin(), u.groups.end(), g) != u.groups.end();
}

// Whether the mode bits of `st` grant `mode` (R_OK/W_OK/X_OK) to `u`.
bool granted(const ConfinedUser& u, const struct stat& st, int mode) {
  int shift = st.st_uid == u.uid ? 6 : in_groups(u, st.st_gid) ? 3 : 0;
  int bits = (st.st_mode >> shift) & 7;
  return (mode & bits) == mode;
}

std::string mode_text(const struct stat& st) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return std::string(buf) + " uid " + std::to_string(st.st_uid) + " gid " + std::to_string(st.st_gid);
}

// Writes `text` to a cgroup file; 0 or errno.
int write_file(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  io::File f(fd, path);
  ssize_t n = ::write(fd, text.data(), text.size());
  if (n < 0) return errno;
  return static_cast<size_t>(n) == text.size() ? 0 : EIO;
}

std::string read_file(const std::string& path) {
  try {
    return io::read_small_file(path, 1 << 16);
  } catch (const Error&) {
    return "";
  }
}

// Stable per run directory, so that stop_vm finds the cgroup without reading
// anything the (untrusted) VM's user can write.
std::string cgroup_name(const std::string& run_dir) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : run_dir) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[24];
  std::snprintf(buf, sizeof buf, "vm-%016llx", static_cast<unsigned long long>(h));
  return buf;
}

constexpr const char* kV2Root = "/sys/fs/cgroup";
constexpr const char* kV1Memory = "/sys/fs/cgroup/memory";
constexpr const char* kV1Cpu = "/sys/fs/cgroup/cpu";
constexpr const char* kParentName = "vmsynth";

std::vector<std::string> cgroup_candidates(const std::string& run_dir) {
  const std::string leaf = std::string("/") + kParentName + "/" + cgroup_name(run_dir);
  return {kV2Root + leaf, kV1Memory + leaf, kV1Cpu + leaf};
}

// rmdir, retrying while the kernel still accounts an exiting task (EBUSY).
int remove_cgroup_dir(const std::string& dir) {
  for (int i = 0; i < 100; ++i) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return 0;
    if (errno != EBUSY) return errno;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return EBUSY;
}

// mkdir of a fresh leaf; a stale one (left by a VM whose daemon died) is
// replaced. 0 or errno.
int make_leaf(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) return 0;
  if (errno != EEXIST) return errno;
  if (int e = remove_cgroup_dir(dir)) return e;
  return ::mkdir(dir.c_str(), 0755) == 0 ? 0 : errno;
}

int make_parent(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) return 0;
  return errno;
}

struct CgroupAttempt {
  std::vector<std::string> dirs;
  std::vector<std::string> settings;
  std::string failure;  // empty: success
};

void fail(CgroupAttempt& a, const std::string& what, int e) { a.failure = what + ": " + errno_text(e); }

void try_v2(CgroupAttempt& a, const std::string& run_dir, uint64_t mem_bytes, uint64_t quota_us) {
  const std::string controllers = read_file(std::string(kV2Root) + "/cgroup.controllers");
  for (const char* c : {"memory", "cpu"}) {
    if (controllers.find(c) == std::string::npos) {
      a.failure = std::string("cgroup v2 has no '") + c + "' controller";
      return;
    }
  }
  const std::string parent = std::string(kV2Root) + "/" + kParentName;
  // Enabling controllers for the children may fail when they already are
  // (or cannot be, e.g. not delegated); the leaf's files decide below.
  write_file(std::string(kV2Root) + "/cgroup.subtree_control", "+memory +cpu");
  if (int e = make_parent(parent)) return fail(a, "mkdir " + parent, e);
  write_file(parent + "/cgroup.subtree_control", "+memory +cpu");
  const std::string leaf = parent + "/" + cgroup_name(run_dir);
  if (int e = make_leaf(leaf)) return fail(a, "mkdir " + leaf, e);
  a.dirs.push_back(leaf);
  const std::string mem = std::to_string(mem_bytes);
  const std::string cpu = std::to_string(quota_us) + " " + std::to_string(kCpuPeriodUs);
  if (int e = write_file(leaf + "/memory.max", mem)) return fail(a, "write " + leaf + "/memory.max", e);
  if (int e = write_file(leaf + "/cpu.max", cpu)) return fail(a, "write " + leaf + "/cpu.max", e);
  a.settings = {"cgroup v2 " + leaf + ": memory.max=" + mem, "cpu.max=" + cpu};
}

void try_v1(CgroupAttempt& a, const std::string& run_dir, uint64_t mem_bytes, uint64_t quota_us) {
  const std::string leaf = std::string("/") + kParentName + "/" + cgroup_name(run_dir);
  struct Controller {
    const char* root;
    std::vector<std::pair<std::string, std::string>> files;
  };
  const Controller controllers[] = {
      {kV1Memory, {{"memory.limit_in_bytes", std::to_string(mem_bytes)}}},
      {kV1Cpu, {{"cpu.cfs_period_us", std::to_string(kCpuPeriodUs)}, {"cpu.cfs_quota_us", std::to_string(quota_us)}}},
  };
  for (const auto& c : controllers) {
    if (::access((std::string(c.root) + "/" + c.files.back().first).c_str(), F_OK) != 0) {
      a.failure = std::string("no cgroup v1 controller at ") + c.root;
      return;
    }
  }
  for (const auto& c : controllers) {
    const std::string parent = std::string(c.root) + "/" + kParentName;
    if (int e = make_parent(parent)) return fail(a, "mkdir " + parent, e);
    const std::string dir = std::string(c.root) + leaf;
    if (int e = make_leaf(dir)) return fail(a, "mkdir " + dir, e);
    a.dirs.push_back(dir);
    std::string set;
    for (const auto& [file, value] : c.files) {
      if (int e = write_file(dir + "/" + file, value)) return fail(a, "write " + dir + "/" + file, e);
      set += (set.empty() ? "" : " ") + file + "=" + value;
    }
    a.settings.push_back((a.settings.empty() ? "cgroup v1 " : "") + dir + ": " + set);
  }
}

// Child-side failure report: which step, and errno.
struct ChildReport {
  int32_t step;
  int32_t value;  // pid for kPid, else errno
};
enum ChildStep : int32_t {
  kPid = 0,
  kFork,
  kSetsid,
  kCgroup,
  kRlimit,
  kFds,
  kSetgroups,
  kSetgid,
  kSetuid,
  kExec,
};
constexpr const char* kStepNames[] = {
    "pid",    "fork",   "setsid", "joining the cgroup", "setrlimit", "setting up fds", "setgroups",
    "setgid", "setuid", "exec"};

[[noreturn]] void child_fail(int fd, ChildStep step) {
  ChildReport r{step, errno};
  ssize_t ignored = ::write(fd, &r, sizeof r);
  (void)ignored;
  ::_exit(127);
}

// Duplicates `fd` to a number >= 10 (close-on-exec), so that dup2 onto 0..3
// never overwrites a source still needed. -1 stays -1.
int high_fd(int fd, int report) {
  if (fd < 0) return -1;
  int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  if (h < 0) child_fail(report, kFds);
  return h;
}

}  // namespace

VmCgroup::~VmCgroup() {
  for (int fd : procs) ::close(fd);
}

ConfinedUser resolve_user(const Confinement& c) {
  ConfinedUser u;
  const bool root = ::geteuid() == 0;
  if (!root) {
    if (c.uid && *c.uid != ::geteuid()) {
      throw Error(ErrorCode::kUsage, "a confined launch can run QEMU as uid " + std::to_string(*c.uid) +
                                         " only when vmsynth runs as root (it runs as uid " +
                                         std::to_string(::geteuid()) + "); leave Confinement::uid unset");
    }
    u.uid = ::geteuid();
    u.gid = ::getegid();
    int n = ::getgroups(0, nullptr);
    if (n > 0) {
      u.groups.resize(static_cast<size_t>(n));
      n = ::getgroups(n, u.groups.data());
      u.groups.resize(n > 0 ? static_cast<size_t>(n) : 0);
    }
  } else {
    if (!c.uid || *c.uid == 0) {
      throw Error(ErrorCode::kUsage,
                  "a confined launch by root needs an unprivileged user for QEMU (Confinement::uid, "
                  "not 0), e.g. a dedicated 'vmsynth-vm' system user");
    }
    u.switch_user = true;
    u.uid = *c.uid;
  }
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  ::getpwuid_r(u.uid, &pw, buf.data(), buf.size(), &found);
  u.name = found ? found->pw_name : "uid " + std::to_string(u.uid);
  if (u.switch_user) {
    u.gid = c.gid ? *c.gid : found ? found->pw_gid : static_cast<gid_t>(u.uid);
    if (found) {
      int n = 64;
      std::vector<gid_t> g(static_cast<size_t>(n));
      if (::getgrouplist(found->pw_name, u.gid, g.data(), &n) < 0) {
        g.resize(static_cast<size_t>(n));
        ::getgrouplist(found->pw_name, u.gid, g.data(), &n);
      }
      g.resize(static_cast<size_t>(std::max(n, 0)));
      u.groups = g;
    } else {
      u.groups = {u.gid};
    }
  }
  return u;
}

void require_access(const ConfinedUser& u, const std::string& path_in, int mode, const std::string& what) {
  const std::string who = "QEMU's user '" + u.name + "' (uid " + std::to_string(u.uid) + ")";
  if (!u.switch_user) {
    if (::access(path_in.c_str(), mode) != 0) {
      throw Error(ErrorCode::kUsage, who + " cannot access " + what + " '" + path_in + "': " + errno_text(errno));
    }
    return;
  }
  const fs::path p = fs::absolute(path_in).lexically_normal();
  fs::path prefix = "/";
  for (auto it = p.begin(); it != p.end(); ++it) {
    if (it != p.begin()) prefix /= *it;
    const bool last = std::next(it) == p.end();
    struct stat st;
    if (::stat(prefix.c_str(), &st) != 0) {
      throw Error(ErrorCode::kUsage,
                  "cannot check " + what + " '" + path_in + "': " + prefix.string() + ": " + errno_text(errno));
    }
    const int need = last ? mode : X_OK;
    if (!granted(u, st, need)) {
      throw Error(
          ErrorCode::kUsage,
          who + " cannot " +
              (last ? std::string(mode & W_OK ? "write" : "read") + " " + what + " '" + path_in + "'"
                    : "reach " + what + " '" + path_in + "': no search permission on '" + prefix.string() + "'") +
              " (" + mode_text(st) + "); make it accessible to that user");
    }
  }
}

void require_kvm_access(const ConfinedUser& u) {
  const char* kvm = "/dev/kvm";
  struct stat st;
  bool ok = false;
  if (::stat(kvm, &st) == 0) ok = u.switch_user ? granted(u, st, R_OK | W_OK) : ::access(kvm, R_OK | W_OK) == 0;
  if (!ok) {
    throw Error(ErrorCode::kUnsupported,
                "this VM needs KVM, but QEMU's user '" + u.name + "' (uid " + std::to_string(u.uid) +
                    ") cannot open /dev/kvm read-write" +
                    (::stat(kvm, &st) == 0 ? " (" + mode_text(st) + ")" : " (it does not exist)") +
                    ": add the user to group 'kvm' (usermod -aG kvm " + u.name +
                    ") and make /dev/kvm root:kvm "
                    "0660, or run TCG VMs");
  }
}

void reclaim_run_dir(const ConfinedUser& u, const std::string& dir) {
  if (!u.switch_user) return;
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) throw Error(ErrorCode::kUsage, "'" + dir + "' is not a directory");
  if (::lchown(dir.c_str(), ::geteuid(), ::getegid()) != 0 || ::chmod(dir.c_str(), 0755) != 0) {
    throw io_error("cannot take back the run directory", dir, errno);
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string p = e.path().string();
    if (::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode) && ::unlink(p.c_str()) != 0) {
      throw io_error("cannot remove the symlink", p, errno);
    }
  }
  if (ec) throw io_error("cannot list", dir, ec.value());
}

void chown_run_dir(const ConfinedUser& u, const std::string& dir) {
  if (!u.switch_user) return;
  auto give = [&](const std::string& p) {
    if (::lchown(p.c_str(), u.uid, u.gid) != 0) throw io_error("cannot chown to QEMU's user", p, errno);
  };
  give(dir);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    struct stat st;
    const std::string p = e.path().string();
    if (::lstat(p.c_str(), &st) != 0) continue;
    if (S_ISREG(st.st_mode) && st.st_nlink == 1) give(p);
  }
  if (ec) throw io_error("cannot list", dir, ec.value());
}

void make_vm_cgroup(const std::string& run_dir, const MachineSpec& spec, const Confinement& c, VmCgroup& out) {
  if (!c.cgroup) {
    out.limits = "no cgroup (Confinement::cgroup is false)";
    return;
  }
  const uint64_t tcg_mib = spec.accel == Accel::kTcg ? kTcgCodeBufferMib : 0;
  const uint64_t mem_bytes = (spec.memory_mib + c.memory_overhead_mib + tcg_mib) << 20;
  const uint64_t quota_us = static_cast<uint64_t>(spec.cpus) * kCpuPeriodUs;
  CgroupAttempt a;
  if (::access((std::string(kV2Root) + "/cgroup.controllers").c_str(), F_OK) == 0) {
    try_v2(a, run_dir, mem_bytes, quota_us);
  } else {
    try_v1(a, run_dir, mem_bytes, quota_us);
  }
  if (a.failure.empty()) {
    for (const auto& d : a.dirs) {
      const std::string procs = d + "/cgroup.procs";
      int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) {
        fail(a, "open " + procs, errno);
        break;
      }
      out.procs.push_back(fd);
    }
  }
  if (!a.failure.empty()) {
    for (int fd : out.procs) ::close(fd);
    out.procs.clear();
    for (const auto& d : a.dirs) ::rmdir(d.c_str());
    out.limits = "no cgroup (" + a.failure + ")";
    return;
  }
  out.dirs = a.dirs;
  std::string s;
  for (const auto& x : a.settings) s += (s.empty() ? "" : ", ") + x;
  out.limits = s + " (guest " + std::to_string(spec.memory_mib) + " MiB + " + std::to_string(c.memory_overhead_mib) +
               " MiB overhead" +
               (tcg_mib ? " + " + std::to_string(tcg_mib) + " MiB TCG translation cache" : std::string()) + ", " +
               std::to_string(spec.cpus) + " vCPU)";
}

std::vector<std::string> remove_vm_cgroups(const std::string& run_dir) {
  std::vector<std::string> errors;
  for (const auto& d : cgroup_candidates(run_dir)) {
    if (int e = remove_cgroup_dir(d)) errors.push_back("cannot remove cgroup '" + d + "': " + errno_text(e));
  }
  return errors;
}

pid_t spawn_detached(const DetachedSpawn& s) {
  if (s.argv.empty()) throw Error(ErrorCode::kUsage, "internal: empty argument vector");
  const std::optional<std::string> prog = find_program(s.argv[0]);
  if (!prog) {
    throw Error(ErrorCode::kUnsupported, "'" + s.argv[0] +
                                             "' is not installed or not in PATH (on Debian: "
                                             "apt-get install -y qemu-system-x86 qemu-utils)");
  }
  std::vector<char*> argv;
  for (const auto& a : s.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  struct rlimit nofile {};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  const rlim_t want = static_cast<rlim_t>(s.nofile);
  nofile.rlim_cur = nofile.rlim_max = std::min(want, nofile.rlim_max);
  const struct rlimit core { 0, 0 };
  const std::vector<gid_t> no_groups;
  const std::vector<gid_t>& groups = s.user ? s.user->groups : no_groups;
  const std::vector<int> no_procs;
  const std::vector<int>& procs = s.cgroup_procs ? *s.cgroup_procs : no_procs;

  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) throw io_error("cannot open", "/dev/null", errno);
  io::File null_file(devnull, "/dev/null");
  int pfd[2];
  if (::pipe2(pfd, O_CLOEXEC) != 0) throw io_error("cannot create a pipe for", s.argv[0], errno);
  io::File rd(pfd[0], "spawn pipe"), wr(pfd[1], "spawn pipe");

  const pid_t mid = ::fork();
  if (mid < 0) throw io_error("cannot fork to start", s.argv[0], errno);
  if (mid == 0) {
    // Intermediate child: new session, fork QEMU, report its pid, exit.
    const int report = wr.fd();
    if (::setsid() < 0) child_fail(report, kSetsid);
    const pid_t q = ::fork();
    if (q < 0) child_fail(report, kFork);
    if (q > 0) {
      ChildReport r{kPid, static_cast<int32_t>(q)};
      ssize_t ignored = ::write(report, &r, sizeof r);
      (void)ignored;
      ::_exit(0);
    }
    // QEMU's process. Only async-signal-safe calls from here on.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    }
    const int rep = high_fd(report, report);
    for (int fd : procs) {
      if (::write(fd, "0", 1) != 1) child_fail(rep, kCgroup);
    }
    if (s.rlimits) {
      if (::setrlimit(RLIMIT_CORE, &core) != 0) child_fail(rep, kRlimit);
      if (::setrlimit(RLIMIT_NOFILE, &nofile) != 0) child_fail(rep, kRlimit);
    }
    const int in = high_fd(null_file.fd(), rep);
    const int log = high_fd(s.log_fd >= 0 ? s.log_fd : null_file.fd(), rep);
    const int inherit = high_fd(s.inherit_fd, rep);
    if (::dup2(in, 0) < 0 || ::dup2(log, 1) < 0 || ::dup2(log, 2) < 0) child_fail(rep, kFds);
    if (inherit >= 0 && ::dup2(inherit, 3) < 0) child_fail(rep, kFds);
    // Nothing else of the caller's reaches QEMU, whether or not the caller
    // opened it close-on-exec (a daemon's sockets, other VMs' files). The
    // report pipe closes on exec by itself. ENOSYS (kernel < 5.9): skipped.
    const unsigned first = inherit >= 0 ? 4 : 3;
    if (static_cast<unsigned>(rep) > first) ::close_range(first, static_cast<unsigned>(rep) - 1, 0);
    ::close_range(static_cast<unsigned>(rep) + 1, ~0U, 0);
    if (s.user && s.user->switch_user) {
      if (::setgroups(groups.size(), groups.data()) != 0) child_fail(rep, kSetgroups);
      if (::setgid(s.user->gid) != 0) child_fail(rep, kSetgid);
      if (::setuid(s.user->uid) != 0) child_fail(rep, kSetuid);
    }
    ::execve(prog->c_str(), argv.data(), environ);
    child_fail(rep, kExec);
  }
  wr.close();
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  pid_t pid = -1;
  std::string failure;
  while (true) {
    ChildReport r{};
    ssize_t n = ::read(rd.fd(), &r, sizeof r);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof r)) break;  // EOF: QEMU exec'd (close-on-exec)
    if (r.step == kPid) {
      pid = r.value;
    } else if (r.step > 0 && r.step <= kExec) {
      failure = std::string(kStepNames[r.step]) + " failed: " + errno_text(r.value);
    }
  }
  if (!failure.empty() || pid <= 0) {
    throw Error(ErrorCode::kIo, "cannot start " + s.argv[0] + ": " +
                                    (failure.empty() ? std::string("the detaching child died") : failure));
  }
  return pid;
}

}  // namespace vmsynth::vm
