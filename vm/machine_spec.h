// The machine description stored in a VM directory's vm.json, and the QEMU
// command line built from it.
//
// Migration (and so capture/resume) only works when the destination QEMU is
// started with exactly the source's machine: machine type, RAM size and
// backend id, CPU model and count, devices, and the direct-boot kernel,
// initrd and command line (they become ROM blocks that must match). A
// MachineSpec holds those facts; qemu_argv() is the single place that turns
// them into a command line, so `vm start`, `vm resume` and the KVM probe can
// never drift apart. A RunLayout says where one running instance keeps its
// files (disk image and format, RAM file and share mode, QMP socket, serial
// log, pidfile); it changes between runs without changing the machine.
//
// vm.json (schema 1) is documented in docs/vm.md. Boot files are stored as
// copies inside the VM directory ("kernel", "initrd") and recorded with their
// SHA-256 and size plus the absolute path they were copied from, because the
// overlay format carries only devstate.bin and vm.json: a synthesized VM
// directory finds them in its own directory, in directories the caller names
// (the base VM), or at the recorded origin, and the hash proves they are the
// same bytes the captured guest booted from.
//
// Plain values; no I/O except read/write of vm.json and hashing in the
// helpers declared at the end. Thread safety: values, copy freely.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/enum_names.h"

namespace vmsynth::vm {

inline constexpr int kVmJsonSchemaVersion = 1;
inline constexpr const char* kDefaultMachineType = "pc-i440fx-7.2";
inline constexpr const char* kDefaultCpuModel = "qemu64";
inline constexpr const char* kMemoryBackendId = "ram0";
inline constexpr const char* kDiskDriveId = "disk0";

// File names inside a directory a VM runs in.
inline constexpr const char* kQmpSocketName = "qmp.sock";
inline constexpr const char* kSerialLogName = "serial.log";
inline constexpr const char* kPidFileName = "qemu.pid";
inline constexpr const char* kKernelName = "kernel";
inline constexpr const char* kInitrdName = "initrd";
inline constexpr const char* kOverlayDiskName = "disk.qcow2";

enum class Accel { kTcg, kKvm };
inline constexpr EnumName<Accel> kAccelNames[] = {{Accel::kTcg, "tcg"}, {Accel::kKvm, "kvm"}};
constexpr std::span<const EnumName<Accel>> enum_names(Accel) { return kAccelNames; }
const char* accel_name(Accel a);  // "tcg" / "kvm"

struct BootFile {
  std::string name;    // file name inside a VM directory ("kernel", "initrd")
  std::string origin;  // absolute path it was copied from at `vm create`
  std::string sha256;  // hex
  uint64_t size = 0;
};

struct MachineSpec {
  int schema_version = kVmJsonSchemaVersion;
  uint64_t memory_mib = 0;
  unsigned cpus = 1;
  std::string cpu_model = kDefaultCpuModel;
  std::string machine_type = kDefaultMachineType;
  Accel accel = Accel::kTcg;
  std::string accel_reason;  // why this accelerator was chosen (probe result)
  std::optional<BootFile> kernel;
  std::optional<BootFile> initrd;
  std::string append;
  uint64_t disk_bytes = 0;    // virtual size of the raw disk
  std::string qemu_version;   // informative: the QEMU that created/captured it
};

// Where one running instance keeps its files. Relative names are resolved
// against the directory the instance runs in (RunLayout::run_dir).
struct RunLayout {
  std::string run_dir;                   // absolute; holds qmp.sock, serial.log, qemu.pid
  std::string disk_file = "disk.img";    // relative to run_dir, or absolute
  std::string disk_format = "raw";       // "raw" or "qcow2" (an overlay of a raw base, or a synthesized disk.qcow2)
  std::string memory_file = "memory.img";
  bool memory_shared = true;             // share=on; false = private copy-on-write mapping
  std::string kernel_path;               // resolved absolute paths (empty: no direct boot)
  std::string initrd_path;

  std::string path(const std::string& name) const;  // run_dir/name unless name is absolute
  std::string qmp_socket() const { return path(kQmpSocketName); }
  std::string serial_log() const { return path(kSerialLogName); }
  std::string pid_file() const { return path(kPidFileName); }
};

struct QemuArgvOptions {
  bool daemonize = true;        // -daemonize -pidfile; false for the foreground KVM probe
  bool incoming = false;        // -incoming defer (resume)
  bool snapshot_disk = false;   // snapshot=on: never write the disk (probe)
  bool ram_in_file = true;      // false: plain RAM (probe)
  bool no_reboot = false;       // -no-reboot: QEMU exits when the guest resets (probe: panic=-1)
  std::string extra_append;     // appended to the kernel command line (probe only)
  // With daemonize: true adds -daemonize (QEMU forks itself); false leaves
  // QEMU in the foreground with its QMP socket and pidfile, for a caller that
  // detaches it (a -sandbox with spawn=deny forbids QEMU's own fork).
  bool qemu_forks = true;
  // -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
  bool sandbox = false;
};

// The full QEMU command line, argv[0] = "qemu-system-x86_64".
std::vector<std::string> qemu_argv(const MachineSpec& spec, const RunLayout& run,
                                   const QemuArgvOptions& opt);

// vm.json (de)serialisation. spec_from_json throws kUnsupported for a
// vm.json that is not a machine description (no "schema_version": e.g. the
// descriptive vm.json of a `vmsynth gen-pair` VM) or has a newer schema, and
// kCorrupt naming the field when a machine description lacks a field or has
// one of the wrong type.
nlohmann::json to_json(const MachineSpec& spec, const RunLayout& run);
MachineSpec spec_from_json(const nlohmann::json& j);
RunLayout run_from_json(const nlohmann::json& j, const std::string& run_dir);

// Reads DIR/vm.json as a JSON object. Throws kUsage "no VM directory at
// 'DIR'" when DIR does not exist, kUsage "'DIR' is not a VM directory" when
// it has no vm.json, kCorrupt when vm.json is not a JSON object.
nlohmann::json read_vm_json(const std::string& dir);

// vm.json of a VM directory and the machine it describes.
struct VmDescription {
  nlohmann::json json;
  MachineSpec spec;
};

// What start, capture and resume read before QEMU runs a VM directory.
// `action` ("started", "launched", "captured") goes into the messages, which
// all name `dir`. Throws
//   kUsage        `dir` does not exist, or holds neither vm.json nor a VM
//                 image (memory.img, disk.img, disk.qcow2): a wrong path;
//   kUnsupported  `dir` is a VM directory that cannot be run: it has images
//                 but no vm.json, or a vm.json that is not a machine
//                 description (no "schema_version"; `vmsynth gen-pair` writes
//                 such files for its synthetic VMs, which do not boot), or
//                 one with a newer schema version;
//   kCorrupt      vm.json is not valid JSON, or is a machine description
//                 (has "schema_version") that lacks a field or has a field of
//                 the wrong type.
VmDescription load_machine(const std::string& dir, std::string_view action);

// Writes DIR/vm.json atomically (temp file + rename).
void write_vm_json(const std::string& dir, const nlohmann::json& j);

// SHA-256 of a file, lower-case hex.
std::string sha256_file(const std::string& path);

}  // namespace vmsynth::vm
