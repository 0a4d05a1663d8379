// Deterministic test buffers for the codec and engine micro-benchmarks.
//
// vm_like_buffer() fills a buffer with 4 KiB pages shaped like VM memory/disk
// content: ~60% "text" pages (words from a small vocabulary, compressible
// about 3-4x by zstd), ~15% "code" pages (repeated 16-byte records with small
// variations), ~15% random pages (incompressible) and ~10% zero pages. The
// mix is fixed by the seed, so every run sees the same bytes. Not a model of
// any particular VM: it only keeps compressors away from the trivial extremes
// (all zero, all random). Header-only; pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace vmsynth::bench {

inline constexpr size_t kPage = 4096;

inline void fill_text(std::byte* p, size_t n, std::mt19937_64& rng) {
  static const char* const kWords[] = {"the ",    "kernel ", "page ",   "cache ",  "block ",  "overlay ",
                                       "launch ", "base ",   "memory ", "disk ",   "python ", "numpy ",
                                       "import ", "def ",    "return ", "struct ", "0x7f3a ", "\n",
                                       "error ",  "libc.so ", "usr/lib/ ", "=",     "{",       "}"};
  size_t i = 0;
  while (i < n) {
    const char* w = kWords[rng() % (sizeof kWords / sizeof *kWords)];
    size_t len = std::strlen(w);
    for (size_t k = 0; k < len && i < n; ++k) p[i++] = static_cast<std::byte>(w[k]);
  }
}

inline void fill_page(std::byte* p, std::mt19937_64& rng) {
  unsigned kind = rng() % 20;
  if (kind < 12) {
    fill_text(p, kPage, rng);
  } else if (kind < 15) {
    uint64_t rec[2] = {rng(), rng()};
    for (size_t i = 0; i < kPage; i += 16) {
      if (rng() % 8 == 0) rec[0] += 4096;
      std::memcpy(p + i, rec, 16);
    }
  } else if (kind < 18) {
    for (size_t i = 0; i < kPage; i += 8) {
      uint64_t v = rng();
      std::memcpy(p + i, &v, 8);
    }
  } else {
    std::memset(p, 0, kPage);
  }
}

// `bytes` is rounded up to whole pages.
inline std::vector<std::byte> vm_like_buffer(size_t bytes, uint64_t seed = 42) {
  std::vector<std::byte> buf((bytes + kPage - 1) / kPage * kPage);
  std::mt19937_64 rng(seed);
  for (size_t off = 0; off < buf.size(); off += kPage) fill_page(buf.data() + off, rng);
  return buf;
}

// A copy of `base` with small in-place edits in every page: `edits` runs of 8
// random bytes at random offsets (a launch block that is "the base block,
// slightly changed" -- the case delta encoding is for).
inline std::vector<std::byte> edited_copy(const std::vector<std::byte>& base, unsigned edits, uint64_t seed = 7) {
  std::vector<std::byte> out = base;
  std::mt19937_64 rng(seed);
  for (size_t off = 0; off < out.size(); off += kPage) {
    for (unsigned e = 0; e < edits; ++e) {
      uint64_t v = rng();
      std::memcpy(out.data() + off + (rng() % (kPage - 8)), &v, 8);
    }
  }
  return out;
}

}  // namespace vmsynth::bench
