#include "vm/machine_policy.h"

#include <algorithm>
#include <cstdint>
#include <string_view>

#include "common/error.h"
#include "common/hex.h"
#include "engine/vm_dir.h"

namespace vmsynth::vm {

using Json = nlohmann::json;

namespace {

[[noreturn]] void refuse(std::string_view field, const std::string& why) {
  throw Error(ErrorCode::kCorrupt, "vm.json field '" + std::string(field) + "': " + why);
}

// The value as it may be quoted in a message: printable, short.
std::string shown(std::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, 80)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x" + to_hex(std::span<const uint8_t>(&u, 1));
    } else {
      out += c;
    }
  }
  return out + (s.size() > 80 ? "...'" : "'");
}

// Why `s` cannot go into a QEMU option value or a file name, or "".
std::string bad_chars(std::string_view s, bool file_name) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\0') return "contains NUL";
    if (c == '\n') return "contains a newline";
    if (c == '\r') return "contains a carriage return";
    if (u < 0x20 || u == 0x7f) return "contains a control character";
    if (c == ',') return "contains ',' (QEMU option separator)";
    if (c == '=') return "contains '=' (QEMU option syntax)";
    if (file_name && c == '/') return "contains '/' (must be a file name in the VM directory)";
  }
  return "";
}

const Json& object_at(const Json& j, std::string_view path, const char* key) {
  if (!j.contains(key)) refuse(path, "missing");
  const Json& v = j[key];
  if (!v.is_object()) refuse(path, "is not an object");
  return v;
}

// A string field; if it differs from `base`, refused for bad characters first.
std::string string_at(const Json& j, std::string_view path, const char* key, const std::string& base,
                      bool file_name = false) {
  if (!j.contains(key)) refuse(path, "missing");
  const Json& v = j[key];
  if (!v.is_string()) refuse(path, "is not a string");
  std::string s = v.get<std::string>();
  if (s != base) {
    std::string why = bad_chars(s, file_name);
    if (!why.empty()) refuse(path, shown(s) + " " + why);
  }
  return s;
}

uint64_t number_at(const Json& j, std::string_view path, const char* key) {
  if (!j.contains(key)) refuse(path, "missing");
  const Json& v = j[key];
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
    refuse(path, "is not a non-negative integer");
  }
  return v.get<uint64_t>();
}

void require_equal(std::string_view path, const std::string& got, const std::string& base) {
  if (got != base) refuse(path, shown(got) + " is not the base VM's " + shown(base));
}

void require_equal(std::string_view path, uint64_t got, uint64_t base) {
  if (got != base) {
    refuse(path, std::to_string(got) + " is not the base VM's " + std::to_string(base));
  }
}

void require_equal_json(std::string_view path, const Json& j, const char* key, const Json& base) {
  if (!j.contains(key)) refuse(path, "missing");
  if (j[key] != base) refuse(path, "differs from the base VM's " + base.dump());
}

std::string allowed(std::string_view path, const Json& j, const char* key, const std::string& base,
                    const std::vector<std::string>& extra) {
  std::string s = string_at(j, path, key, base);
  if (s != base && std::find(extra.begin(), extra.end(), s) == extra.end()) {
    refuse(path, shown(s) + " is not the base VM's " + shown(base) + " nor allowed");
  }
  return s;
}

void check_boot_file(const Json& boot, std::string_view path, const char* key, const std::optional<BootFile>& base) {
  const bool present = boot.contains(key) && !boot[key].is_null();
  if (!base) {
    if (present) refuse(path, "the base VM has no " + std::string(key));
    return;
  }
  if (!present) refuse(path, "missing (the base VM boots with one)");
  const Json& b = boot[key];
  if (!b.is_object()) refuse(path, "is not an object");
  const std::string p(path);
  require_equal(p + ".file", string_at(b, p + ".file", "file", base->name, true), base->name);
  string_at(b, p + ".origin", "origin", base->origin);  // checked, never used
  require_equal(p + ".sha256", string_at(b, p + ".sha256", "sha256", base->sha256), base->sha256);
  require_equal(p + ".size", number_at(b, p + ".size", "size"), base->size);
}

void check_run(const Json& j) {
  const Json& run = object_at(j, "run", "run");
  const std::string disk = string_at(run, "run.disk_file", "disk_file", "", true);
  const std::string format = string_at(run, "run.disk_format", "disk_format", "");
  if (disk != kDiskImageName && disk != kOverlayDiskName) {
    refuse("run.disk_file", shown(disk) + " is not 'disk.img' or 'disk.qcow2'");
  }
  if (format != "raw" && format != "qcow2") refuse("run.disk_format", shown(format) + " is not 'raw' or 'qcow2'");
  const char* expected = disk == kOverlayDiskName ? "qcow2" : "raw";
  if (format != expected) {
    refuse("run.disk_format", shown(format) + " for " + shown(disk) + ": must be '" + expected + "'");
  }
  const std::string mem = string_at(run, "run.memory_file", "memory_file", "", true);
  if (mem != kMemoryImageName) refuse("run.memory_file", shown(mem) + " is not 'memory.img'");
  if (!run.contains("memory_share")) refuse("run.memory_share", "missing");
  if (!run["memory_share"].is_boolean()) refuse("run.memory_share", "is not a boolean");
}

}  // namespace

MachineSpec apply_machine_policy(const Json& j, const MachineSpec& base, const MachinePolicy& policy) {
  if (!j.is_object()) refuse("(top level)", "vm.json is not a JSON object");
  require_equal("schema_version", number_at(j, "schema_version", "schema_version"),
                static_cast<uint64_t>(base.schema_version));

  // The base VM's own vm.json, for the parts that are constants of the format.
  const Json ref = to_json(base, RunLayout{});
  const Json& m = object_at(j, "machine", "machine");
  MachineSpec s = base;
  s.machine_type = allowed("machine.type", m, "type", base.machine_type, policy.machine_types);
  s.cpu_model = allowed("machine.cpu_model", m, "cpu_model", base.cpu_model, policy.cpu_models);
  require_equal("machine.accelerator", string_at(m, "machine.accelerator", "accelerator", accel_name(base.accel)),
                accel_name(base.accel));
  require_equal("machine.cpus", number_at(m, "machine.cpus", "cpus"), base.cpus);
  require_equal("machine.memory_mib", number_at(m, "machine.memory_mib", "memory_mib"), base.memory_mib);
  require_equal("machine.disk_bytes", number_at(m, "machine.disk_bytes", "disk_bytes"), base.disk_bytes);
  require_equal_json("machine.memory_backend", m, "memory_backend", ref["machine"]["memory_backend"]);
  require_equal_json("devices", j, "devices", ref["devices"]);
  require_equal_json("network", j, "network", ref["network"]);

  const Json& boot = object_at(j, "boot", "boot");
  check_boot_file(boot, "boot.kernel", "kernel", base.kernel);
  check_boot_file(boot, "boot.initrd", "initrd", base.initrd);
  require_equal("boot.append", string_at(boot, "boot.append", "append", base.append), base.append);

  check_run(j);
  // Only work directories have it, and resume refuses to run those; say so
  // with the policy's code.
  if (j.contains("resumed_from")) refuse("resumed_from", "present: a work directory's vm.json, not a captured VM's");
  return s;
}

}  // namespace vmsynth::vm
