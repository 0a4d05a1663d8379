// What an untrusted vm.json may say: the machine policy for VM directories
// synthesized from overlays that other parties sent (cloudlet/vmsynthd).
//
// An overlay carries the launch VM's vm.json, so everything in it is chosen
// by the sender, and resume_vm turns it into a QEMU command line and file
// paths. apply_machine_policy() compares it with the trusted base VM's
// machine (the base directory's own vm.json) and returns the MachineSpec to
// run, built from the base's values, or refuses. Rules (docs/vm.md,
// "Confined launch"):
//   - schema_version equal to the base's; "machine", "boot", "run" objects;
//   - machine.type and machine.cpu_model equal to the base's or listed in
//     MachinePolicy; accelerator, cpus, memory_mib, disk_bytes, the memory
//     backend, "devices" and "network" equal to the base's;
//   - boot.kernel / boot.initrd present exactly when the base has them, with
//     the base's file name, SHA-256 and size; their `origin` is never used
//     (the returned spec carries the base's boot files); boot.append equal to
//     the base's, byte for byte;
//   - run: disk_file "disk.img" with disk_format "raw" or "disk.qcow2" with
//     "qcow2" (a raw disk declared qcow2 would let guest-written bytes name a
//     host backing file), memory_file "memory.img", memory_share a boolean;
//     no "resumed_from" (work directories are never resumed);
//   - any checked string that differs from the base's value must not hold
//     ',' '=' (QEMU option syntax), '/' in file names, or control characters
//     (NUL, '\n', '\r', ...); such a value is refused for that reason first.
// Informative fields (accelerator_reason, qemu_version, "created",
// "captured") are not checked and not carried over: the returned spec takes
// the base's. Unknown keys are ignored (nothing reads them).
//
// Errors: every refusal is vmsynth::Error kCorrupt with a message naming the
// field ("vm.json field 'machine.cpu_model': 'qemu64,+vmx' ..."). One code,
// kCorrupt, because from the host's side all of them mean the same thing:
// the sender's overlay describes a machine this base VM is not, i.e. the
// overlay's data is bad. None is fixable on the host, and it is the code a
// damaged overlay already gets (the daemon answers HTTP 400 "refused").
//
// Pure function of its arguments, no I/O. Thread safety: reentrant.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vm/machine_spec.h"

namespace vmsynth::vm {

// What an untrusted vm.json may choose beyond the base VM's own values.
// Default: nothing (only the base's machine type and CPU model).
struct MachinePolicy {
  std::vector<std::string> machine_types;  // e.g. "pc-i440fx-7.1"
  std::vector<std::string> cpu_models;     // e.g. "qemu64-v1"
};

// The machine to run for the untrusted `vm_json`, or kCorrupt (see above).
// `base` is the trusted base VM's machine (spec_from_json of its vm.json).
MachineSpec apply_machine_policy(const nlohmann::json& vm_json, const MachineSpec& base,
                                 const MachinePolicy& policy = {});

}  // namespace vmsynth::vm
