// `vmsynth vm ...`: create, start, capture, resume, stop and status of QEMU
// VMs (see vm/vm_control.h and docs/vm.md). Each command prints one line for
// people, or with --json one JSON object with "ok": true and its timings.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "vm/vm_control.h"

namespace vmsynth::cli {

namespace {

using nlohmann::json;

void emit(bool as_json, const json& j, const std::string& text) {
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s\n", text.c_str());
  }
}

std::string ms(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f ms", v);
  return buf;
}

double round1(double v) { return static_cast<double>(static_cast<long long>(v * 10 + 0.5)) / 10; }

// One `vm` subcommand: `add_options` declares its options on the subcommand
// (--json comes after them, in --help too); `run` does the work and returns
// the JSON result (without "ok" and "command", which are added here) and the
// line for people. Every `vm` subcommand goes through this.
template <typename Opts>
void add_vm_command(CLI::App& vm, const std::string& name, const std::string& help,
                    void (*add_options)(CLI::App&, Opts&),
                    std::pair<json, std::string> (*run)(const Opts&)) {
  struct State {
    Opts opts;
    bool json = false;
  };
  auto s = std::make_shared<State>();
  CLI::App* cmd = vm.add_subcommand(name, help);
  add_options(*cmd, s->opts);
  cmd->add_flag("--json", s->json, "print the result as JSON");
  cmd->callback([s, run, name] {
    auto [j, text] = run(s->opts);
    j["ok"] = true;
    j["command"] = "vm " + name;
    emit(s->json, j, text);
  });
}

}  // namespace

void add_vm_commands(CLI::App& app) {
  CLI::App* vm = app.add_subcommand(
      "vm",
      "Run QEMU VMs and capture/resume them (stock QEMU 7.2: RAM in a file + x-ignore-shared "
      "migration of the device state). See docs/vm.md.");
  vm->require_subcommand(1);

  // The options of the commands that take only the directory a VM runs in.
  struct DirOpts {
    std::string dir;
  };

  add_vm_command<vm::CreateOptions>(
      *vm, "create",
      "Make a powered-off VM directory: disk.img (raw; a qcow2/vmdk/... IMAGE is converted with "
      "qemu-img), an empty memory.img of the RAM size, copies of the kernel/initrd, and vm.json. "
      "With --accel auto (default) the kernel is booted under KVM (no initrd, a root device "
      "that does not exist, -no-reboot) and KVM is chosen only if the kernel gets through its "
      "init to the root file system mount within 10 s; otherwise TCG, with the reason. The "
      "choice is recorded in vm.json.",
      [](CLI::App& cmd, vm::CreateOptions& c) {
        cmd.add_option("--out", c.out_dir, "VM directory to create")->required();
        cmd.add_option("--disk", c.disk_image, "disk image (any format qemu-img reads)")
            ->required()
            ->check(CLI::ExistingFile);
        cmd.add_option("--memory-mib", c.memory_mib, "guest RAM in MiB (16..1048576)")->required();
        cmd.add_option("--cpus", c.cpus, "virtual CPUs (1..64)")->capture_default_str();
        cmd.add_option("--kernel", c.kernel, "kernel for direct boot (copied into the VM directory)")
            ->check(CLI::ExistingFile);
        cmd.add_option("--initrd", c.initrd, "initrd for direct boot (copied into the VM directory)")
            ->check(CLI::ExistingFile);
        cmd.add_option("--append", c.append, "kernel command line");
        cmd.add_option("--accel", c.accel, "auto, kvm or tcg")
            ->check(CLI::IsMember({"auto", "kvm", "tcg"}))
            ->capture_default_str();
        cmd.add_option("--cpu-model", c.cpu_model, "QEMU CPU model; resume must use the same")
            ->capture_default_str();
        cmd.add_flag("--force", c.force, "replace an existing VM directory");
      },
      [](const vm::CreateOptions& c) -> std::pair<json, std::string> {
        vm::CreateResult r = vm::create_vm(c);
        json j = {{"dir", r.dir},
                  {"accelerator", vm::accel_name(r.accel)},
                  {"accelerator_reason", r.accel_reason},
                  {"disk_source_format", r.source_format},
                  {"disk_converted", r.converted},
                  {"disk_bytes", r.disk_bytes},
                  {"probe_ms", round1(r.probe_ms)},
                  {"create_ms", round1(r.create_ms)}};
        return {j, "created " + r.dir + " (accelerator " + vm::accel_name(r.accel) + ": " + r.accel_reason +
                       (r.converted ? "; disk converted from " + r.source_format : "") + ") in " +
                       ms(r.create_ms)};
      });

  struct StartOpts {
    std::string dir;
    unsigned boot_timeout_s = 120;
  };
  add_vm_command<StartOpts>(
      *vm, "start",
      "Cold-boot the VM in DIR in the background (daemonized QEMU; qemu.pid, qmp.sock and the "
      "serial console serial.log in DIR). Returns once QEMU answers on QMP and the guest has "
      "written to its serial console; a guest that writes nothing within --boot-timeout seconds "
      "has not booted: QEMU is stopped and the command fails (exit 6).",
      [](CLI::App& cmd, StartOpts& o) {
        cmd.add_option("DIR", o.dir, "VM directory")->required();
        cmd.add_option("--boot-timeout", o.boot_timeout_s,
                       "seconds the guest may take to write its first byte to serial.log; 0 = do not "
                       "wait (for guests that do not use ttyS0)")
            ->capture_default_str();
      },
      [](const StartOpts& o) -> std::pair<json, std::string> {
        vm::StartOptions so;
        so.boot_timeout = std::chrono::seconds(o.boot_timeout_s);
        vm::StartResult r = vm::start_vm(o.dir, so);
        json j = {{"dir", r.run_dir},
                  {"pid", r.pid},
                  {"accelerator", vm::accel_name(r.accel)},
                  {"start_ms", round1(r.start_ms)}};
        if (r.first_output_ms >= 0) j["first_output_ms"] = round1(r.first_output_ms);
        return {j, "started " + r.run_dir + " (pid " + std::to_string(r.pid) + ", " + vm::accel_name(r.accel) +
                       ") in " + ms(r.start_ms) +
                       (r.first_output_ms >= 0 ? "; first serial output after " + ms(r.first_output_ms) : "")};
      });

  struct CaptureOpts {
    std::string dir;
    vm::CaptureOptions c;
  };
  add_vm_command<CaptureOpts>(
      *vm, "capture",
      "Capture the VM running in DIR into VMDIR: pause it, migrate the device state "
      "(x-ignore-shared) to devstate.bin, copy the RAM file to memory.img and the disk to "
      "disk.img (a qcow2 overlay is flattened to raw), write vm.json. The VM stays paused "
      "unless --keep-running.",
      [](CLI::App& cmd, CaptureOpts& o) {
        cmd.add_option("DIR", o.dir, "directory the VM runs in")->required();
        cmd.add_option("--out", o.c.out_dir, "VM directory to write")->required();
        cmd.add_flag("--keep-running", o.c.keep_running, "continue the VM after the capture");
        cmd.add_flag("--force", o.c.force, "replace an existing VM directory at --out");
      },
      [](const CaptureOpts& o) -> std::pair<json, std::string> {
        vm::CaptureResult r = vm::capture_vm(o.dir, o.c);
        json j = {{"dir", r.out_dir},
                  {"accelerator", vm::accel_name(r.accel)},
                  {"capture_ms", round1(r.capture_ms)},
                  {"migrate_ms", round1(r.migrate_ms)},
                  {"copy_memory_ms", round1(r.copy_memory_ms)},
                  {"copy_disk_ms", round1(r.copy_disk_ms)},
                  {"devstate_bytes", r.devstate_bytes},
                  {"memory_bytes", r.memory_bytes},
                  {"disk_bytes", r.disk_bytes},
                  {"disk_method", r.disk_method},
                  {"vm_state", r.kept_running ? "running" : "paused"}};
        return {j, "captured into " + r.out_dir + " in " + ms(r.capture_ms) + " (device state " +
                       std::to_string(r.devstate_bytes) + " bytes in " + ms(r.migrate_ms) + ", memory " +
                       ms(r.copy_memory_ms) + ", disk " + ms(r.copy_disk_ms) + "); VM " +
                       (r.kept_running ? "running" : "paused")};
      });

  struct ResumeOpts {
    std::string vmdir;
    vm::ResumeOptions r;
  };
  add_vm_command<ResumeOpts>(
      *vm, "resume",
      "Resume a captured or synthesized VM in the background. Without --work it runs in VMDIR "
      "and changes VMDIR's disk.img and memory.img. With --work DIR it runs on a clone in DIR "
      "(qcow2 overlay of VMDIR/disk.img + a copy of memory.img, share=on) so VMDIR stays "
      "pristine and the VM in DIR can be captured. Add --shared-memory to map VMDIR/memory.img "
      "copy-on-write instead of copying it: many clones of one VMDIR start cheaply, but they "
      "cannot be captured. A VMDIR whose vm.json is absent or is not a machine description "
      "(gen-pair's synthetic VMs) cannot be launched (exit 7).",
      [](CLI::App& cmd, ResumeOpts& o) {
        cmd.add_option("VMDIR", o.vmdir, "captured or synthesized VM directory")->required();
        cmd.add_option("--work", o.r.work_dir, "run on a clone in this directory");
        cmd.add_flag("--shared-memory", o.r.shared_memory,
                     "with --work: map memory.img copy-on-write (share=off) instead of copying it");
        cmd.add_option("--boot-files", o.r.boot_file_dirs,
                       "extra directories to look for kernel/initrd (matched by SHA-256), e.g. the "
                       "base VM of a synthesized VM");
      },
      [](const ResumeOpts& o) -> std::pair<json, std::string> {
        vm::ResumeResult r = vm::resume_vm(o.vmdir, o.r);
        json j = {{"dir", r.run_dir},
                  {"pid", r.pid},
                  {"accelerator", vm::accel_name(r.accel)},
                  {"shared_memory", o.r.shared_memory},
                  {"prepare_ms", round1(r.prepare_ms)},
                  {"resume_ms", round1(r.resume_ms)},
                  {"total_ms", round1(r.total_ms)},
                  {"devstate_bytes", r.devstate_bytes}};
        return {j, "resumed in " + r.run_dir + " (pid " + std::to_string(r.pid) + ", " + vm::accel_name(r.accel) +
                       "): running after " + ms(r.resume_ms) +
                       (r.prepare_ms > 0 ? " (+ " + ms(r.prepare_ms) + " to prepare the work directory)" : "")};
      });

  add_vm_command<DirOpts>(
      *vm, "stop",
      "Quit the VM running in DIR (QMP quit; SIGTERM, then SIGKILL after 5 s) and remove "
      "qemu.pid and qmp.sock. Nothing is saved: capture first to keep the state.",
      [](CLI::App& cmd, DirOpts& o) { cmd.add_option("DIR", o.dir, "directory the VM runs in")->required(); },
      [](const DirOpts& o) -> std::pair<json, std::string> {
        vm::StopResult r = vm::stop_vm(o.dir);
        json j = {{"pid", r.pid}, {"forced", r.forced}, {"stop_ms", round1(r.stop_ms)}};
        return {j, "stopped QEMU pid " + std::to_string(r.pid) + (r.forced ? " (with signals)" : "") + " in " +
                       ms(r.stop_ms)};
      });

  add_vm_command<DirOpts>(
      *vm, "status",
      "Say whether a VM runs in DIR (pidfile lock held) and its QMP run state. Fails (exit 2) "
      "when DIR does not exist or has no vm.json.",
      [](CLI::App& cmd, DirOpts& o) { cmd.add_option("DIR", o.dir, "directory a VM may run in")->required(); },
      [](const DirOpts& o) -> std::pair<json, std::string> {
        vm::VmStatus s = vm::query_vm(o.dir);
        json j = {{"running", s.running}, {"pid", s.pid}, {"status", s.qmp_status}};
        return {j, s.running ? "running (pid " + std::to_string(s.pid) + ", " + s.qmp_status + ")" : "not running"};
      });
}

}  // namespace vmsynth::cli
