// The small VM pair shared by the fuzz targets and their seed-corpus
// generator: the synthesis target applies fuzzed overlays to exactly the base
// that the seed overlays were made against, so mutations of a seed get past
// the base check and reach the frame decoder, the op validator and the
// writers. Also the fixed key the encrypted seeds are sealed with.
//
// Header-only, test support: writes files with std::ofstream and throws
// std::runtime_error on failure.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>

#include "codec/crypto.h"

namespace vmsynth::fuzz {

inline constexpr uint64_t kBlock = 4096;

inline std::string pseudo_random(size_t n, uint64_t seed, bool text) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = text ? static_cast<char>('a' + rng() % 8) : static_cast<char>(rng());
  return s;
}

inline void write(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

struct Vm {
  std::string memory, disk, devstate, vm_json;
  void write_to(const std::string& dir) const {
    std::filesystem::create_directories(dir);
    write(dir + "/memory.img", memory);
    write(dir + "/disk.img", disk);
    if (!devstate.empty()) write(dir + "/devstate.bin", devstate);
    if (!vm_json.empty()) write(dir + "/vm.json", vm_json);
  }
};

// 16 memory blocks and 24 disk blocks of distinct content, small files.
inline Vm base_vm() {
  Vm b;
  for (uint64_t i = 0; i < 16; ++i) b.memory += pseudo_random(kBlock, 100 + i, i % 3 == 0);
  for (uint64_t i = 0; i < 24; ++i) b.disk += pseudo_random(kBlock, 200 + i, i % 2 == 0);
  b.devstate = pseudo_random(3000, 7, true);
  b.vm_json = "{\"memory_mib\": 1}";
  return b;
}

// Launch variants: 0 every op kind and both files; 1 zero and base-copy ops
// only; 2 grown and shrunk images with a partial tail block; 3 literal-heavy.
inline constexpr int kLaunchVariants = 4;
inline Vm launch_vm(int variant) {
  const Vm base = base_vm();
  Vm l = base;
  auto put = [](std::string& img, uint64_t block, const std::string& content) {
    img.replace(block * kBlock, kBlock, content);
  };
  switch (variant) {
    case 0:
      put(l.memory, 1, std::string(kBlock, '\0'));
      put(l.memory, 2, base.disk.substr(5 * kBlock, kBlock));
      put(l.memory, 3, pseudo_random(kBlock, 300, true));
      put(l.disk, 20, pseudo_random(kBlock, 300, true));  // self copy of memory block 3
      l.disk[9 * kBlock + 77] ^= 0x40;                      // delta
      l.devstate[100] = 'X';
      l.vm_json = "{\"memory_mib\": 2}";
      break;
    case 1:
      for (uint64_t b = 0; b < 4; ++b) put(l.disk, b, std::string(kBlock, '\0'));
      for (uint64_t b = 4; b < 8; ++b) put(l.memory, b, base.disk.substr((b + 8) * kBlock, kBlock));
      l.devstate.clear();
      break;
    case 2:
      l.memory.resize(10 * kBlock + 1000);
      l.disk += pseudo_random(2 * kBlock + 512, 400, true);
      l.memory[10 * kBlock + 5] ^= 1;
      break;
    default:
      for (uint64_t b = 0; b < 12; ++b) put(l.memory, b, pseudo_random(kBlock, 500 + b, b % 2 == 0));
      break;
  }
  return l;
}

// The key the encrypted seeds are sealed with (a raw 32-byte key).
inline codec::KeySpec fuzz_key() {
  std::array<std::byte, codec::kKeyBytes> k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::byte>(0xA5 ^ i);
  return codec::raw_key(k);
}

}  // namespace vmsynth::fuzz
