// The pieces of a confined QEMU launch (vm/vm_control.h, Confinement): the
// user QEMU runs as, the per-VM cgroup, and the detached spawn that applies
// them in the child between fork and exec. Internal to vm/; resume_vm is the
// only caller, so there is one launch path.
//
// spawn_detached() double-forks: the intermediate child calls setsid() and
// exits at once, so QEMU is reparented to init (or the nearest subreaper),
// belongs to no terminal or process group of the caller, outlives it (a
// SIGKILLed daemon finds it again by its pidfile lock) and never becomes the
// caller's zombie. QEMU gets fds 0-2 (/dev/null, qemu.log) and the inherited
// fd 3 only: every other descriptor of the caller is closed (close_range).
// Everything the child needs is prepared before fork; the child only makes
// async-signal-safe calls (a daemon has threads).
//
// Ownership: VmCgroup owns nothing (the cgroup outlives the call and belongs
// to the VM's run directory; remove_vm_cgroups() deletes it). DetachedSpawn
// borrows its descriptors. Thread safety: reentrant for distinct run dirs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vm/machine_spec.h"
#include "vm/vm_control.h"

namespace vmsynth::vm {

// QEMU 7.2's TCG translation cache (tb-size) defaults to 1 GiB on 64-bit
// hosts and is charged to the cgroup as it fills, so a TCG VM's memory limit
// adds it to Confinement::memory_overhead_mib.
inline constexpr uint64_t kTcgCodeBufferMib = 1024;

struct ConfinedUser {
  bool switch_user = false;  // caller is root: setgroups/setgid/setuid in the child
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups (passwd entry's), when switching
  std::string name;           // passwd name, or "uid N"
};

// Whom QEMU runs as. Throws kUsage for a root caller without a uid, or a
// non-root caller asking for another uid.
ConfinedUser resolve_user(const Confinement& c);

// Throws kUsage naming `path` and `what` when `user` could not open `path`
// with `mode` (R_OK/W_OK/X_OK bits; every parent directory needs search
// permission). Decided from the mode bits, as the kernel would.
void require_access(const ConfinedUser& user, const std::string& path, int mode, const std::string& what);

// For a KVM VM: throws kUnsupported telling to add the user to group `kvm`
// when `user` cannot open /dev/kvm read-write.
void require_kvm_access(const ConfinedUser& user);

// Takes a run directory that QEMU's user owned in an earlier run back
// before vmsynth (as root) writes into it: the directory to the caller, mode
// 0755, and every symlink in it removed (planted ones would redirect the
// caller's writes). No-op unless switching users or when `dir` is missing.
void reclaim_run_dir(const ConfinedUser& user, const std::string& dir);

// Gives `dir` and the regular files directly in it with a single link to
// the user (hard-linked files, e.g. boot files linked from a base VM, stay).
void chown_run_dir(const ConfinedUser& user, const std::string& dir);

// The per-VM cgroup for `run_dir`, created with its limits; `procs` are open
// cgroup.procs files the child writes "0" to. When none can be made, `procs`
// is empty and `limits` says why ("no cgroup: ...").
struct VmCgroup {
  std::vector<std::string> dirs;
  std::vector<int> procs;  // owned: closed by the destructor
  std::string limits;
  VmCgroup() = default;
  ~VmCgroup();
  VmCgroup(const VmCgroup&) = delete;
  VmCgroup& operator=(const VmCgroup&) = delete;
};
void make_vm_cgroup(const std::string& run_dir, const MachineSpec& spec, const Confinement& c, VmCgroup& out);

// Removes the cgroups make_vm_cgroup() made for `run_dir` (after QEMU exited;
// retries briefly while the kernel still counts the exiting task). Returns a
// message for each one that could not be removed.
std::vector<std::string> remove_vm_cgroups(const std::string& run_dir);

struct DetachedSpawn {
  std::vector<std::string> argv;       // argv[0] looked up in PATH before fork
  int inherit_fd = -1;                 // becomes fd 3 in QEMU (devstate.bin)
  int log_fd = -1;                     // QEMU's stdout and stderr
  const ConfinedUser* user = nullptr;  // null: no switch
  const std::vector<int>* cgroup_procs = nullptr;
  bool rlimits = false;  // RLIMIT_CORE 0, RLIMIT_NOFILE nofile
  uint64_t nofile = 1024;
};

// Starts argv detached (see above) and returns QEMU's pid. Throws kIo when
// the fork fails or the child could not be set up or exec'd (naming the step
// and errno), kUnsupported when argv[0] is not installed.
pid_t spawn_detached(const DetachedSpawn& s);

}  // namespace vmsynth::vm
