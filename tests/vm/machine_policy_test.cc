// apply_machine_policy: a faithful launch vm.json passes; every field that an
// overlay's sender could use to change the machine, inject QEMU options or
// point outside the VM directory is refused, and the message names the field.
#include "vm/machine_policy.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"

namespace vmsynth::vm {
namespace {

using Json = nlohmann::json;

const std::string kKernelHash(64, 'a');
const std::string kInitrdHash(64, 'b');

MachineSpec base_spec() {
  MachineSpec s;
  s.memory_mib = 128;
  s.cpus = 1;
  s.kernel = BootFile{"kernel", "/srv/guest/vmlinuz", kKernelHash, 14190528};
  s.initrd = BootFile{"initrd", "/srv/guest/initrd.img", kInitrdHash, 1105164};
  s.append = "console=ttyS0 panic=-1 quiet vmsynth.app_at=12";
  s.disk_bytes = 64 << 20;
  s.qemu_version = "QEMU emulator version 7.2.22";
  s.accel_reason = "requested (--accel tcg)";
  return s;
}

// The launch VM's vm.json as capture writes it (same machine as the base).
Json faithful() {
  RunLayout run;
  run.run_dir = "/cloudlet/launch";
  Json j = to_json(base_spec(), run);
  j["captured"] = {{"at", "2026-12-01T22:00:00Z"},
                   {"from", "/phone/work"},
                   {"qemu_args", Json::array({"-machine", "pc-i440fx-7.2,memory-backend=ram0"})}};
  return j;
}

// Runs the policy on `j` and returns the refusal message ("" if it passed).
std::string refusal(const Json& j, const MachinePolicy& policy = {}) {
  try {
    apply_machine_policy(j, base_spec(), policy);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
    return e.what();
  }
  return "";
}

// A JSON pointer like "/machine/cpu_model" as the field name in messages.
std::string field_name(const std::string& pointer) {
  std::string s = pointer.substr(1);
  for (char& c : s) {
    if (c == '/') c = '.';
  }
  return s;
}

void expect_refused(const Json& j, const std::string& pointer, const std::string& what) {
  const std::string msg = refusal(j);
  EXPECT_NE(msg.find("vm.json field '" + field_name(pointer) + "'"), std::string::npos)
      << pointer << " = " << what << " was not refused naming the field; got: '" << msg << "'";
}

// String fields an overlay carries, and whether they name a file.
struct StringField {
  const char* pointer;
  bool path;
};
constexpr StringField kStringFields[] = {
    {"/machine/type", false},    {"/machine/cpu_model", false}, {"/machine/accelerator", false},
    {"/boot/kernel/file", true}, {"/boot/kernel/origin", true}, {"/boot/kernel/sha256", false},
    {"/boot/initrd/file", true}, {"/boot/initrd/origin", true}, {"/boot/initrd/sha256", false},
    {"/boot/append", false},     {"/run/disk_file", true},      {"/run/disk_format", false},
    {"/run/memory_file", true},  {"/network", false},
};

constexpr const char* kNumberFields[] = {
    "/schema_version",     "/machine/cpus",     "/machine/memory_mib",
    "/machine/disk_bytes", "/boot/kernel/size", "/boot/initrd/size",
};

TEST(MachinePolicy, FaithfulVmJsonPasses) {
  MachineSpec s = apply_machine_policy(faithful(), base_spec());
  EXPECT_EQ(s.machine_type, kDefaultMachineType);
  EXPECT_EQ(s.cpu_model, kDefaultCpuModel);
  EXPECT_EQ(s.memory_mib, 128u);
  EXPECT_EQ(s.append, base_spec().append);
  ASSERT_TRUE(s.kernel && s.initrd);
  EXPECT_EQ(s.kernel->sha256, kKernelHash);
  // A qcow2 launch disk (synthesize --disk-format qcow2) is fine too.
  Json q = faithful();
  q["run"]["disk_file"] = "disk.qcow2";
  q["run"]["disk_format"] = "qcow2";
  EXPECT_EQ(refusal(q), "");
}

TEST(MachinePolicy, OriginIsNeverUsed) {
  Json j = faithful();
  j["boot"]["kernel"]["origin"] = "/home/phone/evil-vmlinuz";
  MachineSpec s = apply_machine_policy(j, base_spec());
  ASSERT_TRUE(s.kernel);
  EXPECT_EQ(s.kernel->origin, "/srv/guest/vmlinuz") << "the base's boot file, not the overlay's";
}

TEST(MachinePolicy, InformativeFieldsAreNotCarriedOver) {
  Json j = faithful();
  j["machine"]["qemu_version"] = "x\n,=";
  j["machine"]["accelerator_reason"] = "y\r\n";
  MachineSpec s = apply_machine_policy(j, base_spec());
  EXPECT_EQ(s.qemu_version, base_spec().qemu_version);
  EXPECT_EQ(s.accel_reason, base_spec().accel_reason);
}

TEST(MachinePolicy, EveryStringFieldRefusesInjection) {
  for (const auto& f : kStringFields) {
    const Json::json_pointer p(f.pointer);
    const std::string orig = faithful()[p].get<std::string>();
    std::vector<std::string> variants = {orig + ",",    orig + "=1",    orig + "\n", orig + "\r", orig + '\0' + "x",
                                         orig + "\x1b", ",readonly=on", "",          "x"};
    if (f.path) {
      variants.insert(variants.end(), {"../" + orig, "/etc/" + orig, "/etc/shadow", "sub/" + orig});
    }
    for (const auto& v : variants) {
      Json j = faithful();
      j[p] = v;
      SCOPED_TRACE(std::string(f.pointer) + " = '" + v + "'");
      if (std::string(f.pointer).ends_with("/origin") && v.find_first_of(",=\n\r\x1b") == std::string::npos &&
          v.find('\0') == std::string::npos) {
        EXPECT_EQ(refusal(j), "") << "a clean origin is ignored, not refused";
        continue;
      }
      expect_refused(j, f.pointer, v);
    }
    // Wrong type.
    Json j = faithful();
    j[p] = 7;
    expect_refused(j, f.pointer, "7");
    j[p] = Json::array({orig});
    expect_refused(j, f.pointer, "[...]");
    j = faithful();
    j[p.parent_pointer()].erase(p.back());
    expect_refused(j, f.pointer, "(missing)");
  }
}

TEST(MachinePolicy, EveryNumberFieldMustBeTheBases) {
  for (const char* pointer : kNumberFields) {
    const Json::json_pointer p(pointer);
    const uint64_t orig = faithful()[p].get<uint64_t>();
    for (const Json& v : {Json(orig + 1), Json(orig == 0 ? 1 : orig - 1), Json(-1), Json(1.5),
                          Json(std::to_string(orig)), Json(std::to_string(orig) + ","),
                          Json(std::to_string(orig) + "="), Json(std::to_string(orig) + "\n"), Json(nullptr)}) {
      Json j = faithful();
      j[p] = v;
      expect_refused(j, pointer, v.dump());
    }
  }
}

TEST(MachinePolicy, MachineTypeAndCpuModelAllowlist) {
  Json j = faithful();
  j["machine"]["cpu_model"] = "qemu64,+vmx";
  const std::string msg = refusal(j);
  EXPECT_NE(msg.find("'machine.cpu_model'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("qemu64,+vmx"), std::string::npos) << msg;
  j["machine"]["cpu_model"] = "max";
  EXPECT_NE(refusal(j).find("nor allowed"), std::string::npos);
  MachinePolicy allow;
  allow.cpu_models = {"max"};
  allow.machine_types = {"pc-i440fx-7.1"};
  EXPECT_EQ(refusal(j, allow), "");
  j["machine"]["type"] = "pc-i440fx-7.1";
  MachineSpec s = apply_machine_policy(j, base_spec(), allow);
  EXPECT_EQ(s.cpu_model, "max");
  EXPECT_EQ(s.machine_type, "pc-i440fx-7.1");
  // Even an allowlisted value may not carry option syntax.
  allow.cpu_models.push_back("max,+vmx");
  j["machine"]["cpu_model"] = "max,+vmx";
  EXPECT_NE(refusal(j, allow).find("'machine.cpu_model'"), std::string::npos);
}

TEST(MachinePolicy, BootFilesMustBeTheBases) {
  {
    Json j = faithful();
    j["boot"]["kernel"]["sha256"] = std::string(64, 'c');
    EXPECT_NE(refusal(j).find("'boot.kernel.sha256'"), std::string::npos);
  }
  {
    Json j = faithful();
    j["boot"]["initrd"]["size"] = 1105165;
    EXPECT_NE(refusal(j).find("'boot.initrd.size'"), std::string::npos);
  }
  {
    Json j = faithful();
    j["boot"]["initrd"] = nullptr;
    EXPECT_NE(refusal(j).find("'boot.initrd'"), std::string::npos) << "dropping the initrd changes the ROMs";
  }
  {
    MachineSpec no_initrd = base_spec();
    no_initrd.initrd.reset();
    Json j = faithful();
    EXPECT_THROW(apply_machine_policy(j, no_initrd), Error) << "an initrd the base does not have";
  }
  {
    Json j = faithful();
    j["boot"]["append"] = base_spec().append + " init=/bin/sh";
    EXPECT_NE(refusal(j).find("'boot.append'"), std::string::npos);
  }
}

TEST(MachinePolicy, RunLayoutStaysInTheVmDirectory) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"disk.img", "qcow2"},  // raw bytes from the overlay read as a qcow2 header
      {"disk.qcow2", "raw"},       {"disk.img", "vmdk"}, {"disk.img", "raw,x=y"},
      {"../base/disk.img", "raw"}, {"/dev/sda", "raw"},  {"memory.img", "raw"},
  };
  for (const auto& [file, format] : bad) {
    Json j = faithful();
    j["run"]["disk_file"] = file;
    j["run"]["disk_format"] = format;
    const std::string msg = refusal(j);
    EXPECT_TRUE(msg.find("'run.disk_file'") != std::string::npos || msg.find("'run.disk_format'") != std::string::npos)
        << file << " " << format << ": " << msg;
  }
  Json j = faithful();
  j["run"]["memory_share"] = "on";
  EXPECT_NE(refusal(j).find("'run.memory_share'"), std::string::npos);
  j["run"].erase("memory_share");
  EXPECT_NE(refusal(j).find("'run.memory_share'"), std::string::npos);
  j = faithful();
  j.erase("run");
  EXPECT_NE(refusal(j).find("'run'"), std::string::npos);
}

TEST(MachinePolicy, StructuralFields) {
  for (const char* key : {"devices", "network", "machine", "boot", "schema_version"}) {
    Json j = faithful();
    j.erase(key);
    EXPECT_NE(refusal(j).find("'" + std::string(key) + "'"), std::string::npos) << key;
  }
  Json j = faithful();
  j["devices"].push_back({{"type", "vfio-pci"}, {"host", "01:00.0"}});
  EXPECT_NE(refusal(j).find("'devices'"), std::string::npos);
  j = faithful();
  j["devices"][0]["cache"] = "unsafe,file=/etc/shadow";
  EXPECT_NE(refusal(j).find("'devices'"), std::string::npos);
  j = faithful();
  j["machine"]["memory_backend"]["id"] = "ram0,share=on";
  EXPECT_NE(refusal(j).find("'machine.memory_backend'"), std::string::npos);
  EXPECT_NE(refusal(Json::array()).find("not a JSON object"), std::string::npos);
  j = faithful();
  j["resumed_from"] = {{"dir", "/x"}};
  EXPECT_NE(refusal(j).find("'resumed_from'"), std::string::npos);
}

}  // namespace
}  // namespace vmsynth::vm
