// VM life cycle on top of stock QEMU 7.2: create, start, capture, resume, stop.
//
// A VM directory (engine/vm_dir.h) holds disk.img, memory.img, devstate.bin
// and vm.json (vm/machine_spec.h). Guest RAM lives in a file
// (memory-backend-file, share=on), so memory.img *is* the page-aligned RAM
// image. Capture pauses the guest, migrates with `x-ignore-shared` to
// a devstate.bin it hands QEMU with QMP `getfd` (device state only, ~0.4
// MB; no shell, so confined VMs can be captured too) and copies the RAM
// file and the disk. Resume starts QEMU with the identical command line plus
// `-incoming defer` (without -daemonize: vmsynth detaches QEMU itself), sets
// the same capability, `migrate-incoming fd:3` (devstate.bin, inherited),
// and `cont`s; optionally confined (Confinement) and, for a VM directory
// from an untrusted overlay, checked against its base (trusted_base_dir).
// See docs/vm.md for the full recipe and numbers.
//
// A VM "runs in" a directory: QEMU runs detached with its pidfile (qemu.pid),
// QMP socket (qmp.sock) and serial console (serial.log, appended) there, and
// that directory's vm.json describes where its disk and RAM are (run layout).
// `resume --work DIR` runs on a cheap clone in DIR (qcow2 overlay of the
// VM's disk.img + a share=on copy of memory.img, or with shared_memory a
// copy-on-write share=off mapping of memory.img) so the source stays pristine.
//
// Errors: vmsynth::Error. kUnsupported when QEMU is not installed, a VM
// cannot be captured, or a directory's images cannot be run because its
// vm.json is absent or is not a machine description (load_machine() in
// vm/machine_spec.h); kUsage for "no VM directory at", "not a VM directory",
// "not running"; kExists for "already running" or an existing output without
// force; kIo for QEMU/QMP failures (the message names the QMP command or
// QEMU's own error) and for a started guest that writes nothing to its serial
// console within StartOptions::boot_timeout; kCorrupt when an untrusted
// vm.json is refused by the machine policy (vm/machine_policy.h).
//
// Ownership: the functions own the QEMU processes only while they start
// them; once a function returns successfully the VM runs detached (daemonized,
// or for resume double-forked and setsid: it outlives the caller, even a
// SIGKILLed one, and is found again by its pidfile lock) and belongs to its
// directory, until stop_vm(). A function that fails after
// starting QEMU kills that QEMU before throwing.
// Thread safety: functions are reentrant for distinct directories; two
// operations on one directory at once are the caller's mistake.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vm/machine_policy.h"
#include "vm/machine_spec.h"

namespace vmsynth::vm {

struct CreateOptions {
  std::string out_dir;
  std::string disk_image;       // any format qemu-img reads; non-raw is converted to raw
  uint64_t memory_mib = 0;      // guest RAM, MiB; range 16 .. 1048576
  unsigned cpus = 1;            // range 1 .. 64
  std::string cpu_model = kDefaultCpuModel;
  std::string kernel, initrd, append;  // optional direct kernel boot
  std::string accel = "auto";   // "auto" (probe KVM, fall back to TCG), "kvm", "tcg"
  bool force = false;           // overwrite an existing VM directory
  // How long the --accel auto probe waits for the kernel to reach the root
  // file system mount under KVM (see probe_kvm()).
  std::chrono::milliseconds kvm_probe_timeout{10000};
};

struct CreateResult {
  std::string dir;
  Accel accel = Accel::kTcg;
  std::string accel_reason;
  std::string source_format;    // format qemu-img detected for the disk image
  bool converted = false;       // true when qemu-img convert produced disk.img
  uint64_t disk_bytes = 0;
  double create_ms = 0;
  double probe_ms = 0;          // time spent deciding KVM vs TCG
};

CreateResult create_vm(const CreateOptions& opt);

struct KvmProbeResult {
  bool kvm_ok = false;          // the kernel got through its whole init under KVM
  std::string reason;           // "KVM probe: ...", for vm.json and the user
  double probe_ms = 0;
};

// Decides whether KVM can run `spec`'s kernel with its CPU model, CPU count
// and RAM size: boots the kernel in the foreground with -accel kvm and
// -no-reboot, plain RAM, run's disk with snapshot=on, no initrd, and
// "earlyprintk=ttyS0 console=ttyS0 ignore_loglevel panic=-1
// root=/dev/vmsynth-kvm-probe" appended, so a Linux kernel that works runs
// its whole init and then panics at the root mount (or waits for the root
// device with rootwait, or starts a built-in initramfs), and says so on the
// serial port. Success is one of those lines in the serial log within
// `timeout`, not merely output: a KVM that cannot run the guest may still
// print the real-mode setup's "Probing EDD ... ok" and then hang.
// The probe runs in run.run_dir/.kvm-probe (removed afterwards); QEMU is
// killed when it returns. Does not check /dev/kvm (create_vm does).
// REQUIRES: spec.kernel and run.kernel_path set.
KvmProbeResult probe_kvm(const MachineSpec& spec, const RunLayout& run, std::chrono::milliseconds timeout);

struct StartOptions {
  // How long the guest may take to write its first byte to serial.log after
  // QEMU is spawned; a guest that stays silent has not booted, and start_vm
  // then stops QEMU and throws kIo. Zero: return once QMP answers, without
  // waiting (guests that do not use ttyS0).
  // Default 120 s: a TCG boot on a loaded machine may take tens of seconds
  // before its first line (with `quiet`, often only user space prints).
  std::chrono::milliseconds boot_timeout{120000};
};

struct StartResult {
  std::string run_dir;
  pid_t pid = -1;
  Accel accel = Accel::kTcg;
  double start_ms = 0;          // from spawning QEMU until QMP answers
  double first_output_ms = -1;  // from spawning QEMU until serial.log grew; -1 when not waited for
};

// Cold boot of the VM in `dir` (daemonized). Returns once QMP answers and,
// unless opt.boot_timeout is zero, the guest has written to its serial console.
StartResult start_vm(const std::string& dir, const StartOptions& opt = {});

struct CaptureOptions {
  std::string out_dir;
  bool keep_running = false;    // `cont` after capture; otherwise the VM stays paused
  bool force = false;           // overwrite an existing VM directory at out_dir
};

struct CaptureResult {
  std::string out_dir;
  Accel accel = Accel::kTcg;
  double capture_ms = 0;        // from `stop` until every file is in out_dir (guest paused)
  double migrate_ms = 0;        // `migrate` to devstate.bin, until completed
  double copy_memory_ms = 0;
  double copy_disk_ms = 0;
  uint64_t devstate_bytes = 0;
  uint64_t memory_bytes = 0;
  uint64_t disk_bytes = 0;
  std::string disk_method;      // "clone:<method>" or "qemu-img convert"
  bool kept_running = false;
};

// Captures the VM running in `dir` into opt.out_dir.
CaptureResult capture_vm(const std::string& dir, const CaptureOptions& opt);

// How a resumed VM is confined (ResumeOptions::confinement). Each measure is
// independent; docs/vm.md "Confined launch" says what each costs.
//
//   seccomp  QEMU's `-sandbox on,obsolete=deny,elevateprivileges=deny,
//            spawn=deny,resourcecontrol=deny`. QEMU 7.2 installs the filter
//            before it would daemonize, so spawn=deny kills `-daemonize`
//            (SIGSYS) and `exec:` migration URIs: a confined QEMU runs
//            without -daemonize, detached by vmsynth (double fork + setsid),
//            and reads devstate.bin from an inherited descriptor (`fd:3`).
//   user     When the caller is root, QEMU runs as `uid`:`gid` with the
//            supplementary groups of uid's passwd entry (group `kvm` for a
//            KVM VM). The run directory and its files (except hard links,
//            such as boot files linked from the base) are chowned to uid;
//            the boot files and, with work_dir, the VM's disk must be
//            readable by it. A root caller must give a uid (QEMU as root is
//            refused); a non-root caller runs QEMU as itself and may give
//            only its own uid.
//   cgroup   A per-VM cgroup named after the run directory, vmsynth/vm-<hash>
//            under /sys/fs/cgroup (v2) or /sys/fs/cgroup/{memory,cpu} (v1):
//            memory limit = guest RAM + memory_overhead_mib (+ 1 GiB for a
//            TCG VM: QEMU's translation cache), CPU quota = vCPUs x 100 ms
//            per 100 ms. QEMU joins it before exec; stop_vm
//            removes it. When no cgroup can be made (not root, read-only
//            /sys/fs/cgroup, no controllers) the launch goes on with rlimits
//            only and ResumeResult::limits says why.
//   rlimits  Always: RLIMIT_CORE 0 (no core file holding guest RAM) and
//            RLIMIT_NOFILE max_open_files. Nothing else: RLIMIT_AS cannot
//            bound QEMU (it reserves far more address space than it uses)
//            and RLIMIT_CPU is CPU time, not a rate.
struct Confinement {
  bool seccomp = true;
  std::optional<uid_t> uid;  // required when the caller is root
  std::optional<gid_t> gid;  // default: uid's primary group (passwd), else uid
  bool cgroup = true;        // false: skip the cgroup (limits says so)
  // Memory allowed above guest RAM (QEMU itself, TCG code cache, page
  // tables), MiB. Default 256, range 0 .. 65536.
  uint64_t memory_overhead_mib = 256;
  // RLIMIT_NOFILE of QEMU. Default 1024, range 64 .. 65536 (capped at the
  // caller's hard limit).
  uint64_t max_open_files = 1024;
};

struct ResumeOptions {
  // Empty: run in the VM directory itself (its disk.img and memory.img change).
  // Otherwise: run on a clone in this directory, leaving the VM directory pristine.
  std::string work_dir;
  // Requires work_dir. Map the VM's memory.img copy-on-write (share=off)
  // instead of copying it: N clones start cheaply from one image, but such a
  // VM cannot itself be captured.
  bool shared_memory = false;
  // Extra directories searched for the boot files (kernel, initrd) by hash,
  // before their recorded origin; e.g. the base VM directory for a
  // synthesized VM (overlays do not carry boot files).
  std::vector<std::string> boot_file_dirs;
  // Upper bound for QEMU start + incoming migration. Default 60 s.
  std::chrono::milliseconds timeout{60000};
  // Non-empty: `vmdir` is untrusted (synthesized from someone else's
  // overlay) and this is its trusted base VM directory. vmdir's vm.json must
  // then pass apply_machine_policy (vm/machine_policy.h) against the base's
  // vm.json, the machine run is the one it returns, and the boot files come
  // from this directory only (boot_file_dirs and vmdir are not searched).
  // A refusal throws kCorrupt before anything is written.
  std::string trusted_base_dir;
  MachinePolicy policy;  // used with trusted_base_dir
  // Set: run QEMU confined (see Confinement).
  std::optional<Confinement> confinement;
};

struct ResumeResult {
  std::string run_dir;          // where the VM runs (qmp.sock, serial.log, qemu.pid)
  pid_t pid = -1;
  Accel accel = Accel::kTcg;
  double prepare_ms = 0;        // work-dir clone (overlay, RAM copy, boot files)
  double resume_ms = 0;         // from spawning QEMU until `cont` returned (guest running)
  double total_ms = 0;          // prepare + resume + bookkeeping
  uint64_t devstate_bytes = 0;
  bool sandboxed = false;  // QEMU runs under -sandbox (seccomp)
  uid_t uid = 0;           // user QEMU runs as
  gid_t gid = 0;
  // Resource limits in effect, e.g. "cgroup v1 /sys/fs/cgroup/memory/vmsynth/
  // vm-...: memory.limit_in_bytes=... ; rlimits: core=0 nofile=1024", or
  // "none: ..." / "rlimits only (...)" saying why no cgroup. Empty when not
  // confined.
  std::string limits;
};

// Resumes a captured or synthesized VM directory in the background.
ResumeResult resume_vm(const std::string& vmdir, const ResumeOptions& opt);

struct StopResult {
  pid_t pid = -1;
  bool forced = false;          // QMP quit did not end QEMU in time; signals were used
  double stop_ms = 0;
  std::vector<std::string> warnings;  // e.g. a cgroup that could not be removed
};

// Quits the VM running in `dir`: QMP quit, then SIGTERM, then SIGKILL; then
// removes the VM's cgroup (Confinement), if there is one.
// Throws kUsage when `dir` does not exist or no VM runs there.
StopResult stop_vm(const std::string& dir,
                   std::chrono::milliseconds grace = std::chrono::milliseconds(5000));

struct VmStatus {
  bool running = false;
  pid_t pid = -1;
  std::string qmp_status;       // QMP query-status "status" when running
};

// Whether a VM runs in `dir`. Throws kUsage when `dir` does not exist or is
// not a VM directory (no vm.json): "not running" would hide a wrong path.
VmStatus query_vm(const std::string& dir);

// Absolute, normalised form of `path` (the directory itself need not exist).
std::string absolute_path(const std::string& path);

}  // namespace vmsynth::vm
