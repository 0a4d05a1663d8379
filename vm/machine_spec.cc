#include "vm/machine_spec.h"

#include <openssl/evp.h>
#include <stdio.h>

#include <array>
#include <memory>
#include <vector>

#include "common/error.h"
#include "common/hex.h"
#include "engine/vm_dir.h"
#include "io/file.h"

namespace vmsynth::vm {

using Json = nlohmann::json;

// The table's names are string literals, so the view is NUL-terminated.
const char* accel_name(Accel a) { return name_of(a).data(); }

std::string RunLayout::path(const std::string& name) const {
  if (!name.empty() && name.front() == '/') return name;
  return run_dir + "/" + name;
}

std::vector<std::string> qemu_argv(const MachineSpec& spec, const RunLayout& run,
                                   const QemuArgvOptions& opt) {
  const std::string mem = std::to_string(spec.memory_mib) + "M";
  std::vector<std::string> a = {"qemu-system-x86_64",
                                "-name", "vmsynth",
                                "-nodefaults", "-no-user-config",
                                "-display", "none"};
  if (opt.ram_in_file) {
    a.insert(a.end(), {"-machine", spec.machine_type + ",memory-backend=" + kMemoryBackendId,
                       "-object",
                       std::string("memory-backend-file,id=") + kMemoryBackendId + ",size=" + mem +
                           ",mem-path=" + run.path(run.memory_file) +
                           (run.memory_shared ? ",share=on" : ",share=off")});
  } else {
    a.insert(a.end(), {"-machine", spec.machine_type});
  }
  a.insert(a.end(), {"-accel", accel_name(spec.accel),
                     "-cpu", spec.cpu_model,
                     "-smp", std::to_string(spec.cpus),
                     "-m", mem});
  if (!run.kernel_path.empty()) {
    a.insert(a.end(), {"-kernel", run.kernel_path});
    if (!run.initrd_path.empty()) a.insert(a.end(), {"-initrd", run.initrd_path});
    std::string append = spec.append;
    if (!opt.extra_append.empty()) append += (append.empty() ? "" : " ") + opt.extra_append;
    if (!append.empty()) a.insert(a.end(), {"-append", append});
  }
  std::string drive = "file=" + run.path(run.disk_file) + ",format=" + run.disk_format +
                      ",if=none,id=" + kDiskDriveId + ",cache=writeback";
  if (opt.snapshot_disk) drive += ",snapshot=on";
  a.insert(a.end(), {"-drive", drive, "-device",
                     std::string("virtio-blk-pci,drive=") + kDiskDriveId + ",id=vblk0"});
  // Serial console appended to serial.log in the run directory (ttyS0).
  a.insert(a.end(), {"-chardev", "file,id=ser0,path=" + run.serial_log() + ",append=on",
                     "-serial", "chardev:ser0"});
  if (opt.daemonize) {
    a.insert(a.end(), {"-chardev", "socket,id=qmp,path=" + run.qmp_socket() + ",server=on,wait=off", "-mon",
                       "chardev=qmp,mode=control", "-pidfile", run.pid_file()});
    if (opt.qemu_forks) a.push_back("-daemonize");
  }
  if (opt.sandbox) {
    a.insert(a.end(), {"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"});
  }
  if (opt.no_reboot) a.push_back("-no-reboot");
  if (opt.incoming) a.insert(a.end(), {"-incoming", "defer"});
  return a;
}

namespace {

Json boot_to_json(const std::optional<BootFile>& b) {
  if (!b) return nullptr;
  return {{"file", b->name}, {"origin", b->origin}, {"sha256", b->sha256}, {"size", b->size}};
}

template <typename T>
T field(const Json& j, const char* key) {
  if (!j.contains(key)) throw_corrupt(std::string("vm.json lacks the field '") + key + "'");
  try {
    return j.at(key).get<T>();
  } catch (const Json::exception&) {
    throw_corrupt(std::string("vm.json field '") + key + "' has the wrong type");
  }
}

std::optional<BootFile> boot_from_json(const Json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const Json& b = j[key];
  return BootFile{field<std::string>(b, "file"), field<std::string>(b, "origin"),
                  field<std::string>(b, "sha256"), field<uint64_t>(b, "size")};
}

}  // namespace

Json to_json(const MachineSpec& s, const RunLayout& run) {
  Json devices = Json::array();
  devices.push_back({{"type", "virtio-blk-pci"}, {"id", "vblk0"}, {"drive", kDiskDriveId},
                     {"image", "disk.img"}, {"cache", "writeback"}});
  devices.push_back({{"type", "isa-serial"}, {"port", "ttyS0"}, {"backend", "file serial.log (append)"}});
  devices.push_back({{"type", "qmp"}, {"backend", "unix socket qmp.sock"}});
  return Json{
      {"schema_version", s.schema_version},
      {"machine",
       {{"type", s.machine_type},
        {"accelerator", accel_name(s.accel)},
        {"accelerator_reason", s.accel_reason},
        {"cpu_model", s.cpu_model},
        {"cpus", s.cpus},
        {"memory_mib", s.memory_mib},
        {"memory_backend", {{"type", "memory-backend-file"}, {"id", kMemoryBackendId}}},
        {"disk_bytes", s.disk_bytes},
        {"qemu_version", s.qemu_version}}},
      {"boot", {{"kernel", boot_to_json(s.kernel)}, {"initrd", boot_to_json(s.initrd)}, {"append", s.append}}},
      {"devices", devices},
      {"network", "none"},
      {"run",
       {{"disk_file", run.disk_file},
        {"disk_format", run.disk_format},
        {"memory_file", run.memory_file},
        {"memory_share", run.memory_shared}}},
  };
}

MachineSpec spec_from_json(const Json& j) {
  MachineSpec s;
  // "schema_version" is what makes a vm.json a machine description: without
  // it the file describes something else (gen-pair's synthetic VMs), which
  // is not damage but a VM vmsynth cannot run.
  if (!j.is_object() || !j.contains("schema_version")) {
    throw Error(ErrorCode::kUnsupported, "vm.json is not a machine description (no 'schema_version')");
  }
  s.schema_version = field<int>(j, "schema_version");
  if (s.schema_version < 1) {
    throw_corrupt("vm.json has the invalid schema version " + std::to_string(s.schema_version));
  }
  if (s.schema_version > kVmJsonSchemaVersion) {
    throw Error(ErrorCode::kUnsupported,
                "vm.json has schema version " + std::to_string(s.schema_version) +
                    "; this vmsynth reads up to " + std::to_string(kVmJsonSchemaVersion) +
                    ": upgrade vmsynth");
  }
  if (!j.contains("machine")) throw_corrupt("vm.json lacks the field 'machine'");
  const Json& m = j["machine"];
  s.machine_type = field<std::string>(m, "type");
  std::string accel = field<std::string>(m, "accelerator");
  const std::optional<Accel> a = find_enum<Accel>(accel);
  if (!a) throw_corrupt("vm.json: unknown accelerator '" + accel + "'");
  s.accel = *a;
  s.accel_reason = m.value("accelerator_reason", std::string());
  s.cpu_model = field<std::string>(m, "cpu_model");
  s.cpus = field<unsigned>(m, "cpus");
  s.memory_mib = field<uint64_t>(m, "memory_mib");
  s.disk_bytes = m.value("disk_bytes", uint64_t{0});
  s.qemu_version = m.value("qemu_version", std::string());
  if (j.contains("boot")) {
    const Json& b = j["boot"];
    s.kernel = boot_from_json(b, "kernel");
    s.initrd = boot_from_json(b, "initrd");
    s.append = b.value("append", std::string());
  }
  return s;
}

RunLayout run_from_json(const Json& j, const std::string& run_dir) {
  RunLayout r;
  r.run_dir = run_dir;
  if (j.contains("run")) {
    const Json& x = j["run"];
    r.disk_file = x.value("disk_file", r.disk_file);
    r.disk_format = x.value("disk_format", r.disk_format);
    r.memory_file = x.value("memory_file", r.memory_file);
    r.memory_shared = x.value("memory_share", r.memory_shared);
  }
  if (r.disk_format != "raw" && r.disk_format != "qcow2") {
    throw_corrupt("vm.json: unsupported run.disk_format '" + r.disk_format + "'");
  }
  // A launch VM synthesized with --disk-format qcow2 carries the captured
  // VM's vm.json (raw disk.img) but holds disk.qcow2, backed by the base.
  if (r.disk_file == kDiskImageName && r.disk_format == "raw" && !io::path_exists(r.path(r.disk_file)) &&
      io::path_exists(r.path(std::string(kQcow2DiskName)))) {
    r.disk_file = std::string(kQcow2DiskName);
    r.disk_format = "qcow2";
  }
  return r;
}

Json read_vm_json(const std::string& dir) {
  const std::string path = dir + "/vm.json";
  if (!io::path_exists(dir)) {
    throw Error(ErrorCode::kUsage, "no VM directory at '" + dir + "': it does not exist");
  }
  if (!io::path_exists(path)) {
    throw Error(ErrorCode::kUsage, "'" + dir + "' is not a VM directory (no vm.json); create one with "
                                   "`vmsynth vm create` or `vmsynth vm capture`");
  }
  std::string text = io::read_small_file(path, 1 << 20);
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_corrupt("'" + path + "' is not valid JSON");
  return j;
}

VmDescription load_machine(const std::string& dir, std::string_view action) {
  const std::string what = "VM directory '" + dir + "' cannot be " + std::string(action);
  if (io::path_exists(dir) && !io::path_exists(dir + "/" + std::string(kVmJsonName))) {
    // Images but no description: an overlay of VMs without vm.json
    // synthesizes such a directory. The bytes are fine; QEMU cannot be
    // configured for them.
    for (std::string_view image : {kMemoryImageName, kDiskImageName, kQcow2DiskName}) {
      if (io::path_exists(dir + "/" + std::string(image))) {
        throw Error(ErrorCode::kUnsupported,
                    what + ": it has no vm.json, so nothing says which machine its images belong to; "
                           "only VMs made by `vmsynth vm create` or `vmsynth vm capture` (and overlays "
                           "of them) carry a machine description");
      }
    }
  }
  VmDescription d;
  d.json = read_vm_json(dir);
  try {
    d.spec = spec_from_json(d.json);
  } catch (Error& e) {
    if (e.code() == ErrorCode::kUnsupported && !d.json.contains("schema_version")) {
      const bool synthetic = d.json.value("synthetic", false);
      throw Error(ErrorCode::kUnsupported,
                  what + ": its vm.json is not a machine description (no 'schema_version'; " +
                      (synthetic ? "it describes a synthetic VM made by `vmsynth gen-pair`, and gen-pair "
                                   "makes synthetic VMs that do not boot"
                                 : "machine descriptions are written by `vmsynth vm create` and "
                                   "`vmsynth vm capture`") +
                      ")");
    }
    throw Error(e.code(), what + ": " + e.message());
  }
  return d;
}

void write_vm_json(const std::string& dir, const Json& j) {
  const std::string path = dir + "/vm.json";
  const std::string tmp = path + ".tmp";
  {
    io::File f = io::File::create(tmp);
    std::string text = j.dump(2) + "\n";
    f.write_all(std::as_bytes(std::span(text)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw io_error("cannot rename into place", path, errno);
}

std::string sha256_file(const std::string& path) {
  io::File f = io::File::open_read(path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorCode::kIo, "cannot initialise SHA-256");
  }
  std::vector<std::byte> buf(1 << 20);
  uint64_t off = 0;
  while (true) {
    size_t n = f.pread_some(buf, off);
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), n);
    off += n;
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), md.data(), &len);
  return to_hex(std::span<const uint8_t>(md.data(), len));
}

}  // namespace vmsynth::vm
