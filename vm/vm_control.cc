#include "vm/vm_control.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>
#include <thread>

#include "common/error.h"
#include "engine/vm_dir.h"
#include "io/file.h"
#include "io/image_clone.h"
#include "io/path_alias.h"
#include "vm/confinement.h"
#include "vm/machine_policy.h"
#include "vm/qmp_client.h"
#include "vm/subprocess.h"

namespace vmsynth::vm {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using Json = nlohmann::json;

namespace {

constexpr const char* kQemu = "qemu-system-x86_64";
constexpr const char* kDevStateFdName = "vmsynth-devstate";  // capture's `getfd` name
constexpr const char* kQemuImg = "qemu-img";
// Kernel arguments the KVM probe appends: early output on ttyS0 with every
// message shown (the VM's own command line may say `quiet`), and a root
// device that cannot exist, so that a working kernel panics right after its
// init, and with panic=-1 + -no-reboot QEMU then exits by itself.
constexpr const char* kProbeAppend =
    "earlyprintk=ttyS0 console=ttyS0 ignore_loglevel panic=-1 root=/dev/vmsynth-kvm-probe";

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string file_in(const std::string& dir, std::string_view name) {
  return dir + "/" + std::string(name);
}

void require_qemu() {
  if (!find_program(kQemu)) {
    throw Error(ErrorCode::kUnsupported,
                "QEMU is not installed ('qemu-system-x86_64' not in PATH): apt-get install -y "
                "qemu-system-x86 qemu-utils");
  }
}

void make_dirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw io_error("cannot create directory", dir, ec.value());
}

uint64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw io_error("cannot stat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw io_error("cannot remove", path, errno);
}

std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Hard-links src to dst (free, and the bytes are immutable by convention),
// falling back to a clone when they are on different filesystems.
void link_or_clone(const std::string& src, const std::string& dst) {
  if (fs::exists(dst) && fs::equivalent(src, dst)) return;
  remove_file(dst);
  if (::link(src.c_str(), dst.c_str()) == 0) return;
  io::clone_image(src, dst, file_size(src));
}

bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string dummy, comm, state;
  // A zombie waiting for a reaper (e.g. PID 1 in a container) has exited.
  return (stat >> dummy >> comm >> state) && state == "Z";
}

// The pid of the QEMU that holds run_dir/qemu.pid locked, if any. QEMU keeps
// its pidfile open and locked (OFD lock) for its whole life, so a lock held
// means "running" even if the pid number was reused.
std::optional<pid_t> running_pid(const std::string& run_dir) {
  const std::string pidfile = file_in(run_dir, kPidFileName);
  int fd = ::open(pidfile.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  io::File f(fd, pidfile);
  struct flock fl{};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  const bool lock_known = ::fcntl(fd, F_OFD_GETLK, &fl) == 0;
  char buf[32] = {};
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  pid_t pid = n > 0 ? static_cast<pid_t>(std::atol(buf)) : -1;
  if (pid <= 0) return std::nullopt;
  if (lock_known) {
    if (fl.l_type == F_UNLCK) return std::nullopt;  // stale pidfile
  } else if (process_gone(pid)) {
    return std::nullopt;  // no OFD locks here: trust the pid
  }
  return pid;
}

bool wait_gone(pid_t pid, const std::string& run_dir, Ms timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (process_gone(pid) || !running_pid(run_dir)) return true;
    std::this_thread::sleep_for(Ms(10));
  }
  return process_gone(pid) || !running_pid(run_dir);
}

void clear_run_files(const RunLayout& run) {
  remove_file(run.qmp_socket());
  remove_file(run.pid_file());
}

void require_not_running(const std::string& run_dir) {
  if (auto pid = running_pid(run_dir)) {
    throw Error(ErrorCode::kExists, "a VM is already running in '" + run_dir + "' (QEMU pid " +
                                        std::to_string(*pid) + "); stop it first with `vmsynth vm stop " +
                                        run_dir + "`");
  }
}

pid_t require_running(const std::string& run_dir) {
  auto pid = running_pid(run_dir);
  if (!pid) {
    throw Error(ErrorCode::kUsage, "no VM is running in '" + run_dir +
                                       "'; start one with `vmsynth vm start` or `vmsynth vm resume`");
  }
  return *pid;
}

// Finds a boot file by content: in each of `dirs` under its name, then at its
// recorded origin. Size is checked first (cheap), then SHA-256.
std::string resolve_boot_file(const BootFile& b, const std::vector<std::string>& dirs) {
  std::vector<std::string> candidates;
  for (const auto& d : dirs) candidates.push_back(file_in(d, b.name));
  candidates.push_back(b.origin);
  for (const auto& c : candidates) {
    struct stat st;
    if (::stat(c.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (static_cast<uint64_t>(st.st_size) != b.size) continue;
    if (sha256_file(c) == b.sha256) return absolute_path(c);
  }
  std::string where;
  for (const auto& c : candidates) where += (where.empty() ? "" : ", ") + c;
  throw Error(ErrorCode::kUsage, "boot file '" + b.name + "' (" + std::to_string(b.size) +
                                     " bytes, sha256 " + b.sha256.substr(0, 16) +
                                     "...) was not found in: " + where +
                                     ". The VM must resume with the exact kernel/initrd it booted; "
                                     "copy them into the VM directory");
}

void resolve_boot_files(const MachineSpec& spec, RunLayout& run, const std::vector<std::string>& dirs) {
  run.kernel_path = spec.kernel ? resolve_boot_file(*spec.kernel, dirs) : "";
  run.initrd_path = spec.initrd ? resolve_boot_file(*spec.initrd, dirs) : "";
}

// Places the boot files into `dir` (hard link or clone) so that `dir` is self-contained.
void place_boot_files(const MachineSpec& spec, const RunLayout& run, const std::string& dir) {
  if (spec.kernel) link_or_clone(run.kernel_path, file_in(dir, spec.kernel->name));
  if (spec.initrd) link_or_clone(run.initrd_path, file_in(dir, spec.initrd->name));
}

std::string qemu_version() {
  try {
    ProcessResult r = run_process({kQemu, "--version"}, Ms(10000));
    auto nl = r.out.find('\n');
    return r.out.substr(0, nl);
  } catch (const Error&) {
    return "";
  }
}

// A daemonized QEMU we started: killed unless release()d, so a failing
// start/resume never leaves a half-started VM behind.
class QemuGuard {
 public:
  explicit QemuGuard(RunLayout run) : run_(std::move(run)) {}
  ~QemuGuard() {
    if (!armed_) return;
    // The pid we spawned counts too: QEMU may die or fail before its pidfile.
    std::optional<pid_t> pid = running_pid(run_.run_dir);
    if (!pid && spawned_ > 0 && !process_gone(spawned_)) pid = spawned_;
    if (pid) {
      ::kill(*pid, SIGKILL);
      wait_gone(*pid, run_.run_dir, Ms(3000));
    }
    try {
      clear_run_files(run_);
    } catch (const Error&) {
    }
    if (cgroup_) remove_vm_cgroups(run_.run_dir);
  }
  QemuGuard(const QemuGuard&) = delete;
  QemuGuard& operator=(const QemuGuard&) = delete;
  void set_spawned(pid_t pid) { spawned_ = pid; }
  void remove_cgroup_on_failure() { cgroup_ = true; }
  void release() { armed_ = false; }

 private:
  RunLayout run_;
  pid_t spawned_ = -1;
  bool cgroup_ = false;
  bool armed_ = true;
};

// Starts QEMU daemonized with `argv`; returns once the parent process has
// exited successfully (QEMU then has its sockets open).
void launch_daemon(const std::vector<std::string>& argv, Ms timeout) {
  ProcessResult r = run_process(argv, timeout);
  if (!r.ok()) {
    throw Error(ErrorCode::kIo, "QEMU failed to start: " + r.describe());
  }
}

std::string qmp_status(QmpClient& q) {
  return q.execute("query-status").value("status", std::string("unknown"));
}

// Polls query-migrate until "completed"; throws on "failed"/"cancelled" or timeout.
void wait_migration(QmpClient& q, Ms timeout, std::string_view what) {
  const auto deadline = Clock::now() + timeout;
  Ms nap(1);
  while (true) {
    Json info = q.execute("query-migrate");
    std::string status = info.value("status", std::string());
    if (status == "completed") return;
    if (status == "failed" || status == "cancelled") {
      throw Error(ErrorCode::kIo, std::string(what) + " " + status + ": " +
                                      info.value("error-desc", std::string("(no reason given)")));
    }
    if (Clock::now() > deadline) {
      throw Error(ErrorCode::kIo, std::string(what) + " did not complete within " +
                                      std::to_string(timeout.count()) + " ms (status '" + status + "')");
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, Ms(20));
  }
}

void set_ignore_shared(QmpClient& q) {
  q.execute("migrate-set-capabilities",
            {{"capabilities", Json::array({{{"capability", "x-ignore-shared"}, {"state", true}}})}});
}

struct ImageInfo {
  std::string format;
  uint64_t virtual_size = 0;
};

ImageInfo image_info(const std::string& path) {
  ProcessResult r = run_checked({kQemuImg, "info", "-U", "--output=json", path}, Ms(30000),
                                "qemu-img info '" + path + "'");
  Json j = Json::parse(r.out, nullptr, false);
  if (j.is_discarded() || !j.contains("format")) {
    throw Error(ErrorCode::kIo, "qemu-img info gave unexpected output for '" + path + "'");
  }
  return {j["format"].get<std::string>(), j.value("virtual-size", uint64_t{0})};
}

// Lines a Linux kernel prints once its whole init has run, right before user
// space: with the probe's bogus root= it panics at the root mount, with the
// VM's own `rootwait` it waits for the root device instead, and a built-in
// initramfs starts /init. A KVM that cannot run the guest never gets there
// (on the development machine it prints the real-mode setup's
// "Probing EDD (edd=off to disable)... ok" and hangs).
constexpr std::string_view kProbeProgressMarkers[] = {
    "VFS: Unable to mount root fs",
    "Waiting for root device",
    " as init process",
};

std::optional<std::string_view> probe_progress(std::string_view serial) {
  for (std::string_view m : kProbeProgressMarkers) {
    if (serial.find(m) != std::string_view::npos) return m;
  }
  return std::nullopt;
}

// The last non-empty line of serial output, printable and short, for messages.
std::string last_line(std::string_view serial) {
  while (!serial.empty() && (serial.back() == '\n' || serial.back() == '\r' || serial.back() == ' ')) {
    serial.remove_suffix(1);
  }
  auto nl = serial.find_last_of("\r\n");
  std::string_view line = nl == std::string_view::npos ? serial : serial.substr(nl + 1);
  std::string out;
  for (char c : line.substr(0, 100)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

std::string read_serial(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// What KVM-or-TCG decision to record, and why.
std::pair<Accel, std::string> choose_accel(const CreateOptions& opt, const MachineSpec& spec,
                                           const RunLayout& run) {
  if (opt.accel == "tcg") return {Accel::kTcg, "requested (--accel tcg)"};
  if (opt.accel == "kvm") return {Accel::kKvm, "requested (--accel kvm)"};
  if (::access("/dev/kvm", R_OK | W_OK) != 0) {
    return {Accel::kTcg, std::string("/dev/kvm not usable: ") + std::strerror(errno)};
  }
  if (!spec.kernel) {
    return {Accel::kTcg, "no --kernel to probe KVM with; TCG is the safe choice (force with --accel kvm)"};
  }
  KvmProbeResult p = probe_kvm(spec, run, opt.kvm_probe_timeout);
  return {p.kvm_ok ? Accel::kKvm : Accel::kTcg, p.reason};
}

}  // namespace

std::string absolute_path(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  if (ec) throw io_error("cannot resolve path", path, ec.value());
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

// ---------------------------------------------------------------- KVM probe

KvmProbeResult probe_kvm(const MachineSpec& spec, const RunLayout& run, Ms timeout) {
  const auto t0 = Clock::now();
  const std::string probe_dir = file_in(run.run_dir, ".kvm-probe");
  make_dirs(probe_dir);
  RunLayout prun = run;
  prun.run_dir = probe_dir;
  prun.disk_file = run.path(run.disk_file);
  prun.initrd_path.clear();  // no initrd: the kernel goes straight to the (bogus) root mount
  remove_file(prun.serial_log());
  MachineSpec pspec = spec;
  pspec.accel = Accel::kKvm;
  QemuArgvOptions po;
  po.daemonize = false;
  po.ram_in_file = false;
  po.snapshot_disk = true;
  po.no_reboot = true;
  po.extra_append = kProbeAppend;
  const std::string limit = std::to_string(timeout.count()) + " ms";
  KvmProbeResult res;
  {
    Subprocess p = Subprocess::spawn(qemu_argv(pspec, prun, po), true);
    std::optional<ProcessResult> exited;
    std::string serial;
    std::optional<std::string_view> reached;
    const auto deadline = Clock::now() + timeout;
    while (true) {
      // Read the log after the exit check: a guest that panics and resets
      // makes QEMU exit, and its last lines are then already in the file.
      exited = p.wait_for(Ms(50));
      serial = read_serial(prun.serial_log());
      reached = probe_progress(serial);
      if (reached || exited || Clock::now() >= deadline) break;
    }
    res.probe_ms = ms_since(t0);
    const std::string took = std::to_string(static_cast<long>(res.probe_ms)) + " ms";
    if (reached) {
      res.kvm_ok = true;
      res.reason = "KVM probe: the kernel ran its whole init under KVM ('" + std::string(*reached) +
                   "' on the serial port after " + took + ")";
    } else {
      std::string what = exited ? "QEMU exited (" + exited->describe() + ")"
                                : "no progress within " + limit;
      if (serial.empty()) {
        res.reason = "KVM probe: " + what + " and the guest wrote nothing to its serial port";
      } else {
        res.reason = "KVM probe: " + what + ": the guest printed " + std::to_string(serial.size()) +
                     " bytes but made no progress past '" + last_line(serial) +
                     "' (its kernel never reached the root file system mount)";
      }
      res.reason += "; KVM here cannot run this guest, so TCG (force KVM with --accel kvm)";
    }
    if (!exited) p.terminate(SIGKILL, Ms(2000));
  }
  std::error_code ec;
  fs::remove_all(probe_dir, ec);
  return res;
}

// ---------------------------------------------------------------- create

CreateResult create_vm(const CreateOptions& opt) {
  const auto t0 = Clock::now();
  require_qemu();
  if (opt.memory_mib < 16 || opt.memory_mib > (1u << 20)) {
    throw Error(ErrorCode::kUsage, "--memory-mib must be between 16 and 1048576");
  }
  if (opt.cpus < 1 || opt.cpus > 64) throw Error(ErrorCode::kUsage, "--cpus must be between 1 and 64");
  if (opt.accel != "auto" && opt.accel != "kvm" && opt.accel != "tcg") {
    throw Error(ErrorCode::kUsage, "--accel must be auto, kvm or tcg");
  }
  if (opt.kernel.empty() && (!opt.initrd.empty() || !opt.append.empty())) {
    throw Error(ErrorCode::kUsage, "--initrd and --append need --kernel");
  }
  for (const auto* f : {&opt.disk_image, &opt.kernel, &opt.initrd}) {
    if (!f->empty() && !io::path_exists(*f)) throw Error(ErrorCode::kUsage, "no such file: '" + *f + "'");
  }
  const std::string dir = absolute_path(opt.out_dir);
  std::vector<io::NamedInput> inputs = {{"--disk image", opt.disk_image}};
  if (!opt.kernel.empty()) inputs.push_back({"--kernel", opt.kernel});
  if (!opt.initrd.empty()) inputs.push_back({"--initrd", opt.initrd});
  io::refuse_output_over_input("--out", dir, inputs);
  if (io::path_exists(file_in(dir, kVmJsonName)) && !opt.force) {
    throw Error(ErrorCode::kExists, "'" + dir + "' already holds a VM (vm.json); use --force to replace it");
  }
  make_dirs(dir);
  require_not_running(dir);

  CreateResult res;
  res.dir = dir;
  RunLayout run;
  run.run_dir = dir;

  // Disk: raw stays raw (cloned); anything else is converted.
  const std::string disk = file_in(dir, kDiskImageName);
  ImageInfo info = image_info(opt.disk_image);
  res.source_format = info.format;
  if (info.format == "raw") {
    io::clone_image(opt.disk_image, disk, file_size(opt.disk_image));
  } else {
    remove_file(disk);
    run_checked({kQemuImg, "convert", "-U", "-f", info.format, "-O", "raw", opt.disk_image, disk},
                Ms(3600 * 1000), "qemu-img convert of '" + opt.disk_image + "' to raw");
    res.converted = true;
  }
  res.disk_bytes = file_size(disk);

  // RAM file: sparse, exactly the RAM size.
  {
    io::File m = io::File::create(file_in(dir, kMemoryImageName));
    m.truncate(opt.memory_mib << 20);
  }
  remove_file(file_in(dir, kDevStateName));  // a powered-off VM has no device state

  MachineSpec spec;
  spec.memory_mib = opt.memory_mib;
  spec.cpus = opt.cpus;
  spec.cpu_model = opt.cpu_model;
  spec.append = opt.append;
  spec.disk_bytes = res.disk_bytes;
  spec.qemu_version = qemu_version();
  auto add_boot = [&](const std::string& src, const char* name) -> std::optional<BootFile> {
    if (src.empty()) return std::nullopt;
    const std::string dst = file_in(dir, name);
    if (!(fs::exists(dst) && fs::equivalent(src, dst))) io::clone_image(src, dst, file_size(src));
    return BootFile{name, absolute_path(src), sha256_file(dst), file_size(dst)};
  };
  spec.kernel = add_boot(opt.kernel, kKernelName);
  spec.initrd = add_boot(opt.initrd, kInitrdName);
  if (spec.kernel) run.kernel_path = file_in(dir, kKernelName);
  if (spec.initrd) run.initrd_path = file_in(dir, kInitrdName);

  const auto tp = Clock::now();
  auto [accel, reason] = choose_accel(opt, spec, run);
  res.probe_ms = ms_since(tp);
  spec.accel = accel;
  spec.accel_reason = reason;
  res.accel = accel;
  res.accel_reason = reason;

  Json j = to_json(spec, run);
  j["created"] = {{"at", now_iso8601()}, {"disk_source", absolute_path(opt.disk_image)},
                  {"disk_source_format", info.format}};
  write_vm_json(dir, j);
  res.create_ms = ms_since(t0);
  return res;
}

// ---------------------------------------------------------------- start

namespace {

uint64_t size_or_zero(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

std::string seconds_text(Ms d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

}  // namespace

StartResult start_vm(const std::string& dir_in, const StartOptions& opt) {
  const std::string dir = absolute_path(dir_in);
  VmDescription d = load_machine(dir, "started");
  require_qemu();
  const MachineSpec& spec = d.spec;
  RunLayout run = run_from_json(d.json, dir);
  require_not_running(dir);
  resolve_boot_files(spec, run, {dir});
  clear_run_files(run);
  // serial.log is appended across runs: this boot's output is what follows.
  const uint64_t serial_before = size_or_zero(run.serial_log());

  const auto t0 = Clock::now();
  QemuGuard guard(run);
  launch_daemon(qemu_argv(spec, run, {}), Ms(60000));
  QmpClient q = QmpClient::connect(run.qmp_socket(), Ms(30000));
  StartResult r;
  r.run_dir = dir;
  r.pid = running_pid(dir).value_or(-1);
  r.accel = spec.accel;
  r.start_ms = ms_since(t0);
  if (opt.boot_timeout.count() > 0) {
    // A guest that never writes to its console has not booted (e.g. a KVM
    // that hangs in the kernel's real-mode setup): say so now rather than
    // leave a VM that only looks started. The guard stops QEMU on throw.
    const auto deadline = t0 + opt.boot_timeout;
    const std::string pid_text = r.pid > 0 ? " (pid " + std::to_string(r.pid) + ")" : "";
    while (size_or_zero(run.serial_log()) <= serial_before) {
      if (!running_pid(dir)) {
        throw Error(ErrorCode::kIo, "QEMU" + pid_text + " of the VM in '" + dir +
                                        "' exited " + std::to_string(static_cast<long>(ms_since(t0))) +
                                        " ms after starting, before the guest wrote anything to its "
                                        "serial console '" + run.serial_log() + "'");
      }
      if (Clock::now() >= deadline) {
        std::string accel = accel_name(spec.accel);
        if (!spec.accel_reason.empty()) accel += " (recorded at vm create: " + spec.accel_reason + ")";
        throw Error(ErrorCode::kIo,
                    "the VM in '" + dir + "' wrote nothing to its serial console '" + run.serial_log() +
                        "' within " + seconds_text(opt.boot_timeout) +
                        " of starting, so it has not booted; its QEMU" + pid_text +
                        " was stopped. Accelerator " + accel +
                        ". If the accelerator cannot run this guest, recreate the VM with --accel tcg; "
                        "if the guest boots but does not write to ttyS0 (no console=ttyS0 on its kernel "
                        "command line), start it with --boot-timeout 0");
      }
      std::this_thread::sleep_for(Ms(20));
    }
    r.first_output_ms = ms_since(t0);
  }
  guard.release();
  return r;
}

// ---------------------------------------------------------------- capture

CaptureResult capture_vm(const std::string& dir_in, const CaptureOptions& opt) {
  const std::string dir = absolute_path(dir_in);
  VmDescription d = load_machine(dir, "captured");
  const Json& j = d.json;
  const MachineSpec& spec = d.spec;
  RunLayout run = run_from_json(j, dir);
  require_running(dir);
  if (!run.memory_shared) {
    throw Error(ErrorCode::kUnsupported,
                "the VM in '" + dir + "' maps its RAM copy-on-write (resumed with --shared-memory); "
                "x-ignore-shared cannot capture such a VM. Resume it with --work but without "
                "--shared-memory to get a VM that can be captured");
  }
  if (opt.out_dir.empty()) throw Error(ErrorCode::kUsage, "capture needs --out DIR");
  const std::string out = absolute_path(opt.out_dir);
  io::refuse_output_over_input("--out", out,
                               {{"directory of the VM being captured", dir},
                                {"running VM's memory image", run.path(run.memory_file)},
                                {"running VM's disk image", run.path(run.disk_file)}});
  if (io::path_exists(file_in(out, kVmJsonName)) && !opt.force) {
    throw Error(ErrorCode::kExists, "'" + out + "' already holds a VM (vm.json); use --force to replace it");
  }
  make_dirs(out);
  require_not_running(out);
  resolve_boot_files(spec, run, {dir});

  CaptureResult res;
  res.out_dir = out;
  res.accel = spec.accel;
  QmpClient q = QmpClient::connect(run.qmp_socket(), Ms(10000));
  const std::string devstate = file_in(out, kDevStateName);
  const std::string devstate_tmp = devstate + ".tmp";

  const auto t0 = Clock::now();
  q.execute("stop");
  try {
    set_ignore_shared(q);
    const auto tm = Clock::now();
    // QEMU 7.2 has no file: URI. Hand QEMU the open file (`getfd`, SCM_RIGHTS)
    // and migrate to it: no shell, and it works under -sandbox spawn=deny
    // (an `exec:` URI would fork, and seccomp kills the confined QEMU).
    {
      int fd = ::open(devstate_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) throw io_error("cannot create", devstate_tmp, errno);
      io::File out_file(fd, devstate_tmp);
      q.execute_with_fd("getfd", {{"fdname", kDevStateFdName}}, out_file.fd());
    }
    q.execute("migrate", {{"uri", std::string("fd:") + kDevStateFdName}});
    wait_migration(q, Ms(120000), "migration of the device state to '" + devstate_tmp + "'");
    res.migrate_ms = ms_since(tm);

    const auto tmem = Clock::now();
    const std::string mem_src = run.path(run.memory_file);
    res.memory_bytes = file_size(mem_src);
    io::clone_image(mem_src, file_in(out, kMemoryImageName), res.memory_bytes);
    res.copy_memory_ms = ms_since(tmem);

    const auto tdisk = Clock::now();
    const std::string disk_src = run.path(run.disk_file);
    const std::string disk_dst = file_in(out, kDiskImageName);
    if (run.disk_format == "raw") {
      auto c = io::clone_image(disk_src, disk_dst, file_size(disk_src));
      res.disk_method = "clone:" + std::string(io::clone_method_name(c.method));
    } else {
      // An overlay: flatten it (with its backing chain) into a raw image. The
      // guest is paused and QEMU flushed on `stop`; -U because QEMU holds it.
      remove_file(disk_dst);
      run_checked({kQemuImg, "convert", "-U", "-f", run.disk_format, "-O", "raw", disk_src, disk_dst},
                  Ms(3600 * 1000), "qemu-img convert of the overlay disk '" + disk_src + "'");
      res.disk_method = "qemu-img convert";
    }
    res.disk_bytes = file_size(disk_dst);
    res.copy_disk_ms = ms_since(tdisk);

    place_boot_files(spec, run, out);
    if (::rename(devstate_tmp.c_str(), devstate.c_str()) != 0) {
      throw io_error("cannot rename into place", devstate, errno);
    }
    res.devstate_bytes = file_size(devstate);

    RunLayout out_run;  // a captured VM runs in place: raw disk.img, shared memory.img
    out_run.run_dir = out;
    // Its own boot files (place_boot_files above), so that the recorded
    // command line is the one resume runs, -kernel/-initrd/-append included.
    if (spec.kernel) out_run.kernel_path = file_in(out, spec.kernel->name);
    if (spec.initrd) out_run.initrd_path = file_in(out, spec.initrd->name);
    QemuArgvOptions resume_args;
    resume_args.incoming = true;
    Json oj = to_json(spec, out_run);
    if (j.contains("created")) oj["created"] = j["created"];
    oj["captured"] = {{"at", now_iso8601()},
                      {"from", dir},
                      {"devstate_bytes", res.devstate_bytes},
                      {"qemu_args", qemu_argv(spec, out_run, resume_args)}};
    write_vm_json(out, oj);
    res.capture_ms = ms_since(t0);
  } catch (...) {
    remove_file(devstate_tmp);
    if (opt.keep_running) {
      try {
        q.execute("cont");
      } catch (const Error&) {
      }
    }
    throw;
  }
  if (opt.keep_running) {
    q.execute("cont");
    res.kept_running = true;
  }
  return res;
}

// ---------------------------------------------------------------- resume

namespace {

constexpr const char* kQemuLogName = "qemu.log";  // stdout/stderr of a resumed QEMU
constexpr int kDevStateFd = 3;                    // devstate.bin in QEMU: `migrate-incoming fd:3`

// The machine to resume: vmdir's own, or for an untrusted vmdir the one the
// policy allows against the trusted base (boot files from the base only).
VmDescription machine_to_resume(const std::string& vmdir, const ResumeOptions& opt,
                                std::vector<std::string>& boot_dirs) {
  if (opt.trusted_base_dir.empty()) {
    boot_dirs = {vmdir};
    boot_dirs.insert(boot_dirs.end(), opt.boot_file_dirs.begin(), opt.boot_file_dirs.end());
    return load_machine(vmdir, "launched");
  }
  const std::string base = absolute_path(opt.trusted_base_dir);
  const MachineSpec base_spec = load_machine(base, "used as the trusted base").spec;
  VmDescription d;
  d.json = read_vm_json(vmdir);
  try {
    d.spec = apply_machine_policy(d.json, base_spec, opt.policy);
  } catch (const Error& e) {
    throw Error(e.code(), "VM directory '" + vmdir + "' is refused against its base '" + base + "': " + e.message());
  }
  boot_dirs = {base};
  return d;
}

// Connects to the QMP socket of the QEMU we spawned, failing early (with
// QEMU's last words from qemu.log) if it exits first.
QmpClient connect_spawned(const RunLayout& run, pid_t pid, Ms timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (process_gone(pid)) {
      const std::string log = read_serial(run.path(kQemuLogName));
      throw Error(ErrorCode::kIo, "QEMU (pid " + std::to_string(pid) + ") exited while starting" +
                                      (log.empty() ? std::string(" without a message") : ": " + last_line(log)) + " (" +
                                      run.path(kQemuLogName) + ")");
    }
    try {
      return QmpClient::connect(run.qmp_socket(), Ms(100));
    } catch (const Error&) {
      if (Clock::now() >= deadline) throw;
    }
  }
}

}  // namespace

ResumeResult resume_vm(const std::string& vmdir_in, const ResumeOptions& opt) {
  const auto t0 = Clock::now();
  const std::string vmdir = absolute_path(vmdir_in);
  // Before QEMU is looked for: a directory that can never be launched should
  // say so on any machine.
  std::vector<std::string> search;
  VmDescription d = machine_to_resume(vmdir, opt, search);
  require_qemu();
  const Json& j = d.json;
  const MachineSpec& spec = d.spec;
  std::optional<ConfinedUser> user;
  if (opt.confinement) {
    user = resolve_user(*opt.confinement);
    if (opt.shared_memory && user->switch_user) {
      throw Error(ErrorCode::kUsage,
                  "--shared-memory cannot be confined to another user: QEMU would need "
                  "write access to the VM's own memory.img");
    }
    if (spec.accel == Accel::kKvm) require_kvm_access(*user);
  }
  const std::string devstate = file_in(vmdir, kDevStateName);
  if (!io::path_exists(devstate)) {
    throw Error(ErrorCode::kUsage, "'" + vmdir + "' has no devstate.bin: it is a powered-off VM, not a "
                                   "captured one; boot it with `vmsynth vm start`");
  }
  if (opt.shared_memory && opt.work_dir.empty()) {
    throw Error(ErrorCode::kUsage, "--shared-memory needs --work DIR");
  }
  RunLayout src = run_from_json(j, vmdir);
  if (j.contains("resumed_from") || src.path(src.memory_file) != file_in(vmdir, kMemoryImageName)) {
    throw Error(ErrorCode::kUsage, "'" + vmdir + "' is a work directory of another VM, not a captured "
                                   "VM directory; capture it first with `vmsynth vm capture`");
  }

  ResumeResult res;
  res.accel = spec.accel;
  res.devstate_bytes = file_size(devstate);
  RunLayout run;
  if (opt.work_dir.empty()) {
    run = src;
    require_not_running(vmdir);
    if (user) reclaim_run_dir(*user, vmdir);
    resolve_boot_files(spec, run, search);
  } else {
    const std::string work = absolute_path(opt.work_dir);
    if (work == vmdir) throw Error(ErrorCode::kUsage, "--work must differ from the VM directory");
    make_dirs(work);
    require_not_running(work);
    require_not_running(vmdir);  // its disk.img would be a backing file in use for writing
    if (user) reclaim_run_dir(*user, work);
    run.run_dir = work;
    resolve_boot_files(spec, run, search);
    const auto tp = Clock::now();
    // Disk: a qcow2 overlay whose backing file is the pristine disk.img (or a
    // synthesized disk.qcow2).
    run.disk_file = kOverlayDiskName;
    run.disk_format = "qcow2";
    remove_file(run.path(run.disk_file));
    run_checked({kQemuImg, "create", "-q", "-f", "qcow2", "-F", src.disk_format, "-b",
                 src.path(src.disk_file), run.path(run.disk_file)},
                Ms(60000), "qemu-img create of the overlay disk in '" + work + "'");
    if (opt.shared_memory) {
      run.memory_file = file_in(vmdir, kMemoryImageName);  // mapped MAP_PRIVATE: never written
      run.memory_shared = false;
    } else {
      run.memory_file = kMemoryImageName;
      run.memory_shared = true;
      const std::string mem_src = file_in(vmdir, kMemoryImageName);
      io::clone_image(mem_src, run.path(run.memory_file), file_size(mem_src));
    }
    place_boot_files(spec, run, work);
    run.kernel_path = spec.kernel ? file_in(work, spec.kernel->name) : "";
    run.initrd_path = spec.initrd ? file_in(work, spec.initrd->name) : "";
    Json wj = to_json(spec, run);
    wj["resumed_from"] = {{"dir", vmdir}, {"at", now_iso8601()}};
    write_vm_json(work, wj);
    res.prepare_ms = ms_since(tp);
  }
  res.run_dir = run.run_dir;
  clear_run_files(run);

  // QEMU runs in the foreground of a detached grandchild (spawn_detached),
  // not with -daemonize, and reads devstate.bin from an inherited fd rather
  // than `exec:cat`: both of those fork, which -sandbox spawn=deny forbids.
  // Unconfined resumes take the same path, so there is one.
  QemuGuard guard(run);
  QemuArgvOptions qo;
  qo.incoming = true;
  qo.qemu_forks = false;
  io::File devstate_file = io::File::open_read(devstate);
  const std::string log_path = run.path(kQemuLogName);
  // Fresh, and never through a symlink: a confined QEMU's user owns this
  // directory between runs.
  remove_file(log_path);
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (log_fd < 0) throw io_error("cannot create", log_path, errno);
  io::File log_file(log_fd, log_path);
  DetachedSpawn sp;
  sp.inherit_fd = devstate_file.fd();
  sp.log_fd = log_file.fd();
  VmCgroup cgroup;
  if (opt.confinement) {
    const Confinement& c = *opt.confinement;
    qo.sandbox = c.seccomp;
    chown_run_dir(*user, run.run_dir);
    require_access(*user, run.run_dir, W_OK | X_OK, "the run directory");
    if (!run.kernel_path.empty()) require_access(*user, run.kernel_path, R_OK, "the kernel");
    if (!run.initrd_path.empty()) require_access(*user, run.initrd_path, R_OK, "the initrd");
    if (!opt.work_dir.empty()) require_access(*user, src.path(src.disk_file), R_OK, "the VM's disk (backing file)");
    guard.remove_cgroup_on_failure();
    make_vm_cgroup(run.run_dir, spec, c, cgroup);
    sp.user = &*user;
    sp.cgroup_procs = &cgroup.procs;
    sp.rlimits = true;
    sp.nofile = c.max_open_files;
    res.sandboxed = c.seccomp;
    res.limits = cgroup.limits + "; rlimits: core=0 nofile=" + std::to_string(c.max_open_files);
    res.uid = user->uid;
    res.gid = user->gid;
  } else {
    res.uid = ::geteuid();
    res.gid = ::getegid();
  }
  sp.argv = qemu_argv(spec, run, qo);

  const auto tr = Clock::now();
  const pid_t pid = spawn_detached(sp);
  guard.set_spawned(pid);
  QmpClient q = connect_spawned(run, pid, opt.timeout);
  set_ignore_shared(q);
  q.execute("migrate-incoming", {{"uri", "fd:" + std::to_string(kDevStateFd)}});
  wait_migration(q, opt.timeout, "incoming migration from '" + devstate + "'");
  if (qmp_status(q) != "running") q.execute("cont");
  res.resume_ms = ms_since(tr);
  res.pid = running_pid(run.run_dir).value_or(pid);
  guard.release();
  res.total_ms = ms_since(t0);
  return res;
}

// ---------------------------------------------------------------- stop / status

namespace {

void require_dir_exists(const std::string& dir) {
  if (!io::path_exists(dir)) {
    throw Error(ErrorCode::kUsage, "no VM directory at '" + dir + "': it does not exist");
  }
}

}  // namespace

StopResult stop_vm(const std::string& dir_in, Ms grace) {
  const std::string dir = absolute_path(dir_in);
  require_dir_exists(dir);
  const auto t0 = Clock::now();
  RunLayout run;
  run.run_dir = dir;
  StopResult res;
  res.pid = require_running(dir);
  try {
    QmpClient q = QmpClient::connect(run.qmp_socket(), Ms(2000));
    q.quit(grace);
  } catch (const Error&) {
    // QMP unusable (hung QEMU, socket removed): signals below.
  }
  if (!wait_gone(res.pid, dir, grace)) {
    res.forced = true;
    ::kill(res.pid, SIGTERM);
    if (!wait_gone(res.pid, dir, Ms(3000))) {
      ::kill(res.pid, SIGKILL);
      if (!wait_gone(res.pid, dir, Ms(3000))) {
        throw Error(ErrorCode::kIo, "QEMU pid " + std::to_string(res.pid) + " in '" + dir +
                                        "' did not exit after SIGKILL");
      }
    }
  }
  clear_run_files(run);
  res.warnings = remove_vm_cgroups(dir);
  res.stop_ms = ms_since(t0);
  return res;
}

VmStatus query_vm(const std::string& dir_in) {
  const std::string dir = absolute_path(dir_in);
  // A wrong path must not read as "not running". Only existence is checked:
  // the pidfile lock, not vm.json's content, says whether a VM runs here.
  require_dir_exists(dir);
  if (!io::path_exists(file_in(dir, kVmJsonName))) {
    throw Error(ErrorCode::kUsage, "'" + dir + "' is not a VM directory (no vm.json); no VM can run there");
  }
  VmStatus s;
  auto pid = running_pid(dir);
  if (!pid) return s;
  s.running = true;
  s.pid = *pid;
  try {
    RunLayout run;
    run.run_dir = dir;
    QmpClient q = QmpClient::connect(run.qmp_socket(), Ms(2000));
    s.qmp_status = qmp_status(q);
  } catch (const Error& e) {
    s.qmp_status = std::string("unknown (") + e.what() + ")";
  }
  return s;
}

}  // namespace vmsynth::vm
