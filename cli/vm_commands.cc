// `vmsynth vm ...`: create, start, capture, resume, stop and status of QEMU
// VMs (see vm/vm_control.h and docs/vm.md). Each command prints one line for
// people, or with --json one JSON object with "ok": true and its timings.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
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

}  // namespace

void add_vm_commands(CLI::App& app) {
  CLI::App* vm = app.add_subcommand(
      "vm",
      "Run QEMU VMs and capture/resume them (stock QEMU 7.2: RAM in a file + x-ignore-shared "
      "migration of the device state). See docs/vm.md.");
  vm->require_subcommand(1);

  // ---- create
  {
    struct Opts {
      vm::CreateOptions c;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "create",
        "Make a powered-off VM directory: disk.img (raw; a qcow2/vmdk/... IMAGE is converted with "
        "qemu-img), an empty memory.img of the RAM size, copies of the kernel/initrd, and vm.json. "
        "With --accel auto (default) the kernel is booted under KVM (no initrd, a root device "
        "that does not exist, -no-reboot) and KVM is chosen only if the kernel gets through its "
        "init to the root file system mount within 10 s; otherwise TCG, with the reason. The "
        "choice is recorded in vm.json.");
    cmd->add_option("--out", o->c.out_dir, "VM directory to create")->required();
    cmd->add_option("--disk", o->c.disk_image, "disk image (any format qemu-img reads)")
        ->required()
        ->check(CLI::ExistingFile);
    cmd->add_option("--memory-mib", o->c.memory_mib, "guest RAM in MiB (16..1048576)")->required();
    cmd->add_option("--cpus", o->c.cpus, "virtual CPUs (1..64)")->capture_default_str();
    cmd->add_option("--kernel", o->c.kernel, "kernel for direct boot (copied into the VM directory)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--initrd", o->c.initrd, "initrd for direct boot (copied into the VM directory)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--append", o->c.append, "kernel command line");
    cmd->add_option("--accel", o->c.accel, "auto, kvm or tcg")
        ->check(CLI::IsMember({"auto", "kvm", "tcg"}))
        ->capture_default_str();
    cmd->add_option("--cpu-model", o->c.cpu_model, "QEMU CPU model; resume must use the same")
        ->capture_default_str();
    cmd->add_flag("--force", o->c.force, "replace an existing VM directory");
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::CreateResult r = vm::create_vm(o->c);
      json j = {{"ok", true},
                {"command", "vm create"},
                {"dir", r.dir},
                {"accelerator", vm::accel_name(r.accel)},
                {"accelerator_reason", r.accel_reason},
                {"disk_source_format", r.source_format},
                {"disk_converted", r.converted},
                {"disk_bytes", r.disk_bytes},
                {"probe_ms", round1(r.probe_ms)},
                {"create_ms", round1(r.create_ms)}};
      emit(o->json, j,
           "created " + r.dir + " (accelerator " + vm::accel_name(r.accel) + ": " + r.accel_reason +
               (r.converted ? "; disk converted from " + r.source_format : "") + ") in " +
               ms(r.create_ms));
    });
  }

  // ---- start
  {
    struct Opts {
      std::string dir;
      unsigned boot_timeout_s = 120;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "start",
        "Cold-boot the VM in DIR in the background (daemonized QEMU; qemu.pid, qmp.sock and the "
        "serial console serial.log in DIR). Returns once QEMU answers on QMP and the guest has "
        "written to its serial console; a guest that writes nothing within --boot-timeout seconds "
        "has not booted: QEMU is stopped and the command fails (exit 6).");
    cmd->add_option("DIR", o->dir, "VM directory")->required();
    cmd->add_option("--boot-timeout", o->boot_timeout_s,
                    "seconds the guest may take to write its first byte to serial.log; 0 = do not "
                    "wait (for guests that do not use ttyS0)")
        ->capture_default_str();
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::StartOptions so;
      so.boot_timeout = std::chrono::seconds(o->boot_timeout_s);
      vm::StartResult r = vm::start_vm(o->dir, so);
      json j = {{"ok", true},          {"command", "vm start"},
                {"dir", r.run_dir},    {"pid", r.pid},
                {"accelerator", vm::accel_name(r.accel)},
                {"start_ms", round1(r.start_ms)}};
      if (r.first_output_ms >= 0) j["first_output_ms"] = round1(r.first_output_ms);
      emit(o->json, j,
           "started " + r.run_dir + " (pid " + std::to_string(r.pid) + ", " +
               vm::accel_name(r.accel) + ") in " + ms(r.start_ms) +
               (r.first_output_ms >= 0 ? "; first serial output after " + ms(r.first_output_ms) : ""));
    });
  }

  // ---- capture
  {
    struct Opts {
      std::string dir;
      vm::CaptureOptions c;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "capture",
        "Capture the VM running in DIR into VMDIR: pause it, migrate the device state "
        "(x-ignore-shared) to devstate.bin, copy the RAM file to memory.img and the disk to "
        "disk.img (a qcow2 overlay is flattened to raw), write vm.json. The VM stays paused "
        "unless --keep-running.");
    cmd->add_option("DIR", o->dir, "directory the VM runs in")->required();
    cmd->add_option("--out", o->c.out_dir, "VM directory to write")->required();
    cmd->add_flag("--keep-running", o->c.keep_running, "continue the VM after the capture");
    cmd->add_flag("--force", o->c.force, "replace an existing VM directory at --out");
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::CaptureResult r = vm::capture_vm(o->dir, o->c);
      json j = {{"ok", true},
                {"command", "vm capture"},
                {"dir", r.out_dir},
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
      emit(o->json, j,
           "captured into " + r.out_dir + " in " + ms(r.capture_ms) + " (device state " +
               std::to_string(r.devstate_bytes) + " bytes in " + ms(r.migrate_ms) + ", memory " +
               ms(r.copy_memory_ms) + ", disk " + ms(r.copy_disk_ms) + "); VM " +
               (r.kept_running ? "running" : "paused"));
    });
  }

  // ---- resume
  {
    struct Opts {
      std::string vmdir;
      vm::ResumeOptions r;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "resume",
        "Resume a captured or synthesized VM in the background. Without --work it runs in VMDIR "
        "and changes VMDIR's disk.img and memory.img. With --work DIR it runs on a clone in DIR "
        "(qcow2 overlay of VMDIR/disk.img + a copy of memory.img, share=on) so VMDIR stays "
        "pristine and the VM in DIR can be captured. Add --shared-memory to map VMDIR/memory.img "
        "copy-on-write instead of copying it: many clones of one VMDIR start cheaply, but they "
        "cannot be captured. A VMDIR whose vm.json is absent or is not a machine description "
        "(gen-pair's synthetic VMs) cannot be launched (exit 7).");
    cmd->add_option("VMDIR", o->vmdir, "captured or synthesized VM directory")->required();
    cmd->add_option("--work", o->r.work_dir, "run on a clone in this directory");
    cmd->add_flag("--shared-memory", o->r.shared_memory,
                  "with --work: map memory.img copy-on-write (share=off) instead of copying it");
    cmd->add_option("--boot-files", o->r.boot_file_dirs,
                    "extra directories to look for kernel/initrd (matched by SHA-256), e.g. the "
                    "base VM of a synthesized VM");
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::ResumeResult r = vm::resume_vm(o->vmdir, o->r);
      json j = {{"ok", true},
                {"command", "vm resume"},
                {"dir", r.run_dir},
                {"pid", r.pid},
                {"accelerator", vm::accel_name(r.accel)},
                {"shared_memory", o->r.shared_memory},
                {"prepare_ms", round1(r.prepare_ms)},
                {"resume_ms", round1(r.resume_ms)},
                {"total_ms", round1(r.total_ms)},
                {"devstate_bytes", r.devstate_bytes}};
      emit(o->json, j,
           "resumed in " + r.run_dir + " (pid " + std::to_string(r.pid) + ", " +
               vm::accel_name(r.accel) + "): running after " + ms(r.resume_ms) +
               (r.prepare_ms > 0 ? " (+ " + ms(r.prepare_ms) + " to prepare the work directory)" : ""));
    });
  }

  // ---- stop
  {
    struct Opts {
      std::string dir;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "stop",
        "Quit the VM running in DIR (QMP quit; SIGTERM, then SIGKILL after 5 s) and remove "
        "qemu.pid and qmp.sock. Nothing is saved: capture first to keep the state.");
    cmd->add_option("DIR", o->dir, "directory the VM runs in")->required();
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::StopResult r = vm::stop_vm(o->dir);
      json j = {{"ok", true}, {"command", "vm stop"}, {"pid", r.pid}, {"forced", r.forced},
                {"stop_ms", round1(r.stop_ms)}};
      emit(o->json, j,
           "stopped QEMU pid " + std::to_string(r.pid) + (r.forced ? " (with signals)" : "") + " in " +
               ms(r.stop_ms));
    });
  }

  // ---- status
  {
    struct Opts {
      std::string dir;
      bool json = false;
    };
    auto o = std::make_shared<Opts>();
    CLI::App* cmd = vm->add_subcommand(
        "status",
        "Say whether a VM runs in DIR (pidfile lock held) and its QMP run state. Fails (exit 2) "
        "when DIR does not exist or has no vm.json.");
    cmd->add_option("DIR", o->dir, "directory a VM may run in")->required();
    cmd->add_flag("--json", o->json, "print the result as JSON");
    cmd->callback([o] {
      vm::VmStatus s = vm::query_vm(o->dir);
      json j = {{"ok", true}, {"command", "vm status"}, {"running", s.running}, {"pid", s.pid},
                {"status", s.qmp_status}};
      emit(o->json, j,
           s.running ? "running (pid " + std::to_string(s.pid) + ", " + s.qmp_status + ")"
                     : "not running");
    });
  }
}

}  // namespace vmsynth::cli
