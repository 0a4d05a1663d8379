// libFuzzer target: serial synthesis of arbitrary overlays against the small
// base of fuzz_vm.h (written once to a scratch directory, on /dev/shm when
// there is one). Every input must end in vmsynth::Error or a committed output
// whose blocks all verified; the base must stay as it was. A successful
// synthesis's output is removed before the next input.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/synthesis.h"
#include "fuzz_vm.h"
#include "io/byte_source.h"

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Scratch {
  std::string dir;
  std::string base_memory, base_disk;
  Scratch() {
    std::string root = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = root + "/vmsynth-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    dir = tmpl;
    vmsynth::fuzz::Vm base = vmsynth::fuzz::base_vm();
    base.write_to(dir + "/base");
    base_memory = base.memory;
    base_disk = base.disk;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Scratch scratch;
  static const vmsynth::codec::KeySpec key = vmsynth::fuzz::fuzz_key();
  const auto* b = reinterpret_cast<const std::byte*>(data);
  std::vector<std::byte> bytes(b, b + size);
  // Encrypted inputs need the key; plain ones must be given none.
  const bool sealed = size >= 20 && (data[16] & 1);
  vmsynth::SynthesizeOptions o;
  o.base_dir = scratch.dir + "/base";
  o.out_dir = scratch.dir + "/out";
  o.engine = vmsynth::EngineKind::kSerial;
  o.force = true;
  o.use_base_id_cache = false;
  if (sealed) o.key = key;
  try {
    auto src = vmsynth::io::memory_source(std::move(bytes), 4096);
    vmsynth::synthesize_serial(*src, o);
    std::error_code ec;
    std::filesystem::remove_all(o.out_dir, ec);
  } catch (const vmsynth::Error&) {
    if (std::filesystem::exists(o.out_dir)) std::abort();  // a failed synthesis left an output
  }
  // The base is opened read-only; check it stayed so now and then.
  static unsigned runs = 0;
  if (++runs % 1024 == 0 && (read_all(o.base_dir + "/memory.img") != scratch.base_memory ||
                             read_all(o.base_dir + "/disk.img") != scratch.base_disk)) {
    std::abort();
  }
  return 0;
}
