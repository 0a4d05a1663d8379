// vm.json round trip and the QEMU command line built from a MachineSpec.
#include "vm/machine_spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "testutil/temp_dir.h"

namespace vmsynth::vm {
namespace {

MachineSpec sample() {
  MachineSpec s;
  s.memory_mib = 128;
  s.cpus = 2;
  s.kernel = BootFile{"kernel", "/src/vmlinuz", "ab12", 100};
  s.initrd = BootFile{"initrd", "/src/initrd.img", "cd34", 50};
  s.append = "console=ttyS0 quiet";
  return s;
}

bool has_arg(const std::vector<std::string>& a, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < a.size(); ++i) {
    if (a[i] == flag && a[i + 1] == value) return true;
  }
  return false;
}

TEST(MachineSpec, JsonRoundTrip) {
  RunLayout run;
  run.run_dir = "/w";
  run.disk_file = "disk.qcow2";
  run.disk_format = "qcow2";
  run.memory_file = "/vm/memory.img";
  run.memory_shared = false;
  auto j = to_json(sample(), run);
  MachineSpec s = spec_from_json(j);
  EXPECT_EQ(s.memory_mib, 128u);
  EXPECT_EQ(s.cpus, 2u);
  EXPECT_EQ(s.cpu_model, kDefaultCpuModel);
  EXPECT_EQ(s.machine_type, kDefaultMachineType);
  ASSERT_TRUE(s.kernel);
  EXPECT_EQ(s.kernel->sha256, "ab12");
  EXPECT_EQ(s.append, "console=ttyS0 quiet");
  RunLayout r = run_from_json(j, "/w");
  EXPECT_EQ(r.disk_format, "qcow2");
  EXPECT_FALSE(r.memory_shared);
  EXPECT_EQ(r.path(r.memory_file), "/vm/memory.img");
  EXPECT_EQ(r.path(r.disk_file), "/w/disk.qcow2");
}

TEST(MachineSpec, NewerSchemaIsUnsupported) {
  RunLayout run;
  auto j = to_json(sample(), run);
  j["schema_version"] = kVmJsonSchemaVersion + 1;
  try {
    spec_from_json(j);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
  j.erase("machine");
  j["schema_version"] = 1;
  try {
    spec_from_json(j);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << "a machine description without 'machine' is damaged";
  }
}

// What load_machine() says about each kind of directory: the error code is
// what `vm start/resume` exit with and what `synthesize --launch` keys on.
class LoadMachine : public ::testing::Test {
 protected:
  void put(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }
  Error load_error() {
    try {
      load_machine(dir_, "launched");
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "load_machine accepted " << dir_;
    return Error(ErrorCode::kIo, "");
  }
  testutil::TempDir t_{"vmsynth-load"};
  std::string dir_ = t_.path();
};

TEST_F(LoadMachine, MachineDescriptionLoads) {
  RunLayout run;
  write_vm_json(dir_, to_json(sample(), run));
  VmDescription d = load_machine(dir_, "launched");
  EXPECT_EQ(d.spec.memory_mib, 128u);
  EXPECT_EQ(d.json["schema_version"], kVmJsonSchemaVersion);
}

TEST_F(LoadMachine, GenPairVmJsonIsUnsupportedNotCorrupt) {
  put("memory.img", "m");
  put("vm.json", R"({"synthetic": true, "role": "launch", "machine": "pc-i440fx-7.2", "cpus": 2})");
  Error e = load_error();
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
  EXPECT_EQ(std::string(e.what()),
            "VM directory '" + dir_ +
                "' cannot be launched: its vm.json is not a machine description (no 'schema_version'; it "
                "describes a synthetic VM made by `vmsynth gen-pair`, and gen-pair makes synthetic VMs "
                "that do not boot)");
  put("vm.json", R"({"note": "hand-written"})");
  e = load_error();
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
  EXPECT_NE(std::string(e.what()).find("written by `vmsynth vm create`"), std::string::npos) << e.what();
}

TEST_F(LoadMachine, ImagesWithoutVmJsonAreUnsupported) {
  put("disk.qcow2", "q");
  Error e = load_error();
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
  EXPECT_NE(std::string(e.what()).find("cannot be launched: it has no vm.json"), std::string::npos) << e.what();
}

TEST_F(LoadMachine, WrongPathsAreUsageErrors) {
  Error e = load_error();  // empty directory
  EXPECT_EQ(e.code(), ErrorCode::kUsage) << e.what();
  EXPECT_NE(std::string(e.what()).find("is not a VM directory (no vm.json)"), std::string::npos) << e.what();
  dir_ += "/missing";
  e = load_error();
  EXPECT_EQ(e.code(), ErrorCode::kUsage) << e.what();
  EXPECT_NE(std::string(e.what()).find("no VM directory at '" + dir_ + "'"), std::string::npos) << e.what();
}

TEST_F(LoadMachine, DamagedMachineDescriptionsAreCorrupt) {
  RunLayout run;
  nlohmann::json j = to_json(sample(), run);
  j["machine"].erase("cpu_model");
  write_vm_json(dir_, j);
  Error e = load_error();
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
  EXPECT_NE(std::string(e.what()).find("cannot be launched: vm.json lacks the field 'cpu_model'"), std::string::npos)
      << e.what();
  j = to_json(sample(), run);
  j["schema_version"] = "one";
  write_vm_json(dir_, j);
  EXPECT_EQ(load_error().code(), ErrorCode::kCorrupt);
  j["schema_version"] = kVmJsonSchemaVersion + 1;
  write_vm_json(dir_, j);
  EXPECT_EQ(load_error().code(), ErrorCode::kUnsupported);
  put("vm.json", "{\"schema_version\": 1, ");
  EXPECT_EQ(load_error().code(), ErrorCode::kCorrupt);
}

TEST(MachineSpec, ArgvPinsTheMachineAndMapsRam) {
  RunLayout run;
  run.run_dir = "/d";
  run.kernel_path = "/d/kernel";
  run.initrd_path = "/d/initrd";
  QemuArgvOptions o;
  o.incoming = true;
  auto a = qemu_argv(sample(), run, o);
  EXPECT_EQ(a[0], "qemu-system-x86_64");
  EXPECT_TRUE(has_arg(a, "-machine", "pc-i440fx-7.2,memory-backend=ram0"));
  EXPECT_TRUE(has_arg(a, "-object", "memory-backend-file,id=ram0,size=128M,mem-path=/d/memory.img,share=on"));
  EXPECT_TRUE(has_arg(a, "-cpu", "qemu64"));
  EXPECT_TRUE(has_arg(a, "-accel", "tcg"));
  EXPECT_TRUE(has_arg(a, "-incoming", "defer"));
  EXPECT_TRUE(has_arg(a, "-append", "console=ttyS0 quiet"));
  EXPECT_TRUE(has_arg(a, "-pidfile", "/d/qemu.pid"));
  EXPECT_TRUE(has_arg(a, "-chardev", "file,id=ser0,path=/d/serial.log,append=on"));

  // The start and resume command lines differ only by -incoming defer.
  auto b = qemu_argv(sample(), run, {});
  EXPECT_EQ(b.size() + 2, a.size());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), a.begin()));

  run.memory_shared = false;
  auto c = qemu_argv(sample(), run, {});
  EXPECT_TRUE(has_arg(c, "-object", "memory-backend-file,id=ram0,size=128M,mem-path=/d/memory.img,share=off"));
  EXPECT_EQ(std::count(c.begin(), c.end(), "-no-reboot"), 0);
}

// A confined resume: QEMU in the foreground (vmsynth detaches it) with its
// QMP socket and pidfile, under -sandbox; otherwise the same command line.
TEST(MachineSpec, ConfinedResumeArgvIsSandboxedAndDoesNotFork) {
  RunLayout run;
  run.run_dir = "/d";
  run.kernel_path = "/d/kernel";
  QemuArgvOptions plain;
  plain.incoming = true;
  QemuArgvOptions confined = plain;
  confined.qemu_forks = false;
  confined.sandbox = true;
  auto a = qemu_argv(sample(), run, plain);
  auto c = qemu_argv(sample(), run, confined);
  EXPECT_EQ(std::count(c.begin(), c.end(), "-daemonize"), 0);
  EXPECT_TRUE(has_arg(c, "-pidfile", "/d/qemu.pid"));
  EXPECT_TRUE(has_arg(c, "-mon", "chardev=qmp,mode=control"));
  EXPECT_TRUE(has_arg(c, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"));
  a.erase(std::find(a.begin(), a.end(), "-daemonize"));
  c.erase(std::find(c.begin(), c.end(), "-sandbox"), std::find(c.begin(), c.end(), "-sandbox") + 2);
  std::sort(a.begin(), a.end());
  std::sort(c.begin(), c.end());
  EXPECT_EQ(a, c) << "the machine must not change under confinement";
}

TEST(MachineSpec, ProbeArgvDoesNotRebootAndExtendsTheCommandLine) {
  RunLayout run;
  run.run_dir = "/d";
  run.kernel_path = "/d/kernel";
  QemuArgvOptions o;
  o.daemonize = false;
  o.ram_in_file = false;
  o.no_reboot = true;
  o.extra_append = "panic=-1";
  auto a = qemu_argv(sample(), run, o);
  EXPECT_EQ(std::count(a.begin(), a.end(), "-no-reboot"), 1);
  EXPECT_TRUE(has_arg(a, "-append", "console=ttyS0 quiet panic=-1"));
  EXPECT_TRUE(has_arg(a, "-machine", "pc-i440fx-7.2"));
  EXPECT_EQ(std::count(a.begin(), a.end(), "-daemonize"), 0);
}

}  // namespace
}  // namespace vmsynth::vm
