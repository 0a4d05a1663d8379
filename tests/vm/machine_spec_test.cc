// vm.json round trip and the QEMU command line built from a MachineSpec.
#include "vm/machine_spec.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "common/error.h"

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
  EXPECT_THROW(spec_from_json(j), Error);
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
}

}  // namespace
}  // namespace vmsynth::vm
