// Test helpers: temporary directories, VM directories built from byte
// vectors, deterministic block contents, and running the vmsynth binary.
// Header-only; each test owns its TempDir.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "testutil/temp_dir.h"

namespace vmsynth::vmfiles {

using testutil::TempDir;

using Bytes = std::vector<std::byte>;
inline constexpr size_t kBlock = 4096;


inline void write_file(const std::string& path, const Bytes& data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) std::abort();
}

inline Bytes read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

inline bool exists(const std::string& path) { return std::filesystem::exists(path); }

// Deterministic incompressible bytes.
inline Bytes random_bytes(size_t n, uint64_t seed) {
  Bytes b(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(b.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return b;
}

// Deterministic compressible, text-like bytes.
inline Bytes text_bytes(size_t n, uint64_t seed) {
  static const char* words[] = {"synthesis ", "cloudlet ", "overlay ", "memory ", "disk ", "launch ",
                                "base ", "frame ", "block ", "kernel ", "page ", "cache "};
  std::mt19937_64 rng(seed);
  std::string s;
  while (s.size() < n) s += words[rng() % 12];
  Bytes b(n);
  std::memcpy(b.data(), s.data(), n);
  return b;
}

inline void put_block(Bytes& image, uint64_t block, const Bytes& content) {
  std::memcpy(image.data() + block * kBlock, content.data(), std::min(kBlock, content.size()));
}
inline Bytes get_block(const Bytes& image, uint64_t block) {
  return Bytes(image.begin() + static_cast<long>(block * kBlock), image.begin() + static_cast<long>((block + 1) * kBlock));
}

struct VmImages {
  Bytes memory;
  Bytes disk;
  std::optional<Bytes> devstate;
  std::optional<Bytes> vmjson;
};

inline void write_vm(const std::string& dir, const VmImages& vm) {
  write_file(dir + "/memory.img", vm.memory);
  write_file(dir + "/disk.img", vm.disk);
  if (vm.devstate) write_file(dir + "/devstate.bin", *vm.devstate);
  if (vm.vmjson) write_file(dir + "/vm.json", *vm.vmjson);
}

// Writes the command-line tests' sample pair to dir/base and dir/launch: a
// 64-block memory and a 96-block disk whose launch has 20 LITERAL memory
// blocks, a ZERO, a BASE_COPY and a DELTA disk block, and a devstate.bin.
inline void write_sample_pair(const std::string& dir) {
  VmImages base{text_bytes(64 * kBlock, 1), random_bytes(96 * kBlock, 2), random_bytes(5000, 3), std::nullopt};
  for (uint64_t b = 0; b < 64; b += 2) put_block(base.memory, b, random_bytes(kBlock, 100 + b));
  VmImages launch = base;
  for (uint64_t b = 0; b < 20; ++b) put_block(launch.memory, b, text_bytes(kBlock, 200 + b));  // literals
  put_block(launch.disk, 3, Bytes(kBlock));                                                // zero
  put_block(launch.disk, 4, get_block(base.memory, 7));                                     // base copy
  launch.disk[50 * kBlock + 9] ^= std::byte{1};                                             // delta
  write_vm(dir + "/base", base);
  write_vm(dir + "/launch", launch);
}

// Runs the vmsynth binary with `args`; returns its exit status and captured
// stdout/stderr. `stdin_file` (optional) is redirected to standard input.
struct RunResult {
  int status = -1;
  std::string out;
  std::string err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline RunResult run_vmsynth(const std::vector<std::string>& args, const std::string& workdir,
                             const std::string& stdin_file = "") {
  static int counter = 0;
  std::string base = workdir + "/.run" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  std::string cmd = shell_quote(VMSYNTH_BIN);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + shell_quote(base + ".out") + " 2>" + shell_quote(base + ".err");
  cmd += stdin_file.empty() ? " </dev/null" : " <" + shell_quote(stdin_file);
  int rc = std::system(cmd.c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  std::filesystem::remove(base + ".out");
  std::filesystem::remove(base + ".err");
  return r;
}

}  // namespace vmsynth::vmfiles
