// zstd compression and decompression with an optional reference prefix.
//
// A ZstdCompressor / ZstdDecompressor owns one zstd context and is reused for
// many calls (contexts are expensive to create). One object per thread: not
// thread-safe. Decompression writes into a caller-sized buffer and refuses
// input whose decoded size differs, so a hostile frame cannot make it allocate.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace vmsynth::codec {

class ZstdCompressor {
 public:
  // level: zstd level, 1..22 (20..22 are "ultra" and use more memory).
  // window_log: log2 of the match window in bytes, 10..27; 0 = zstd's default
  // for the level. Set it to cover prefix + content when a prefix is used.
  explicit ZstdCompressor(int level, int window_log = 0);
  ~ZstdCompressor();
  ZstdCompressor(ZstdCompressor&&) noexcept;
  ZstdCompressor& operator=(ZstdCompressor&&) noexcept;

  int level() const { return level_; }

  // Compresses `src` as one zstd frame, using `prefix` (may be empty) as
  // history the decoder must supply too. Replaces the contents of `out`.
  void compress(std::span<const std::byte> src, std::span<const std::byte> prefix, std::vector<std::byte>& out);
  std::vector<std::byte> compress(std::span<const std::byte> src, std::span<const std::byte> prefix = {});

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  int level_;
  int window_log_;
};

class ZstdDecompressor {
 public:
  ZstdDecompressor();
  ~ZstdDecompressor();
  ZstdDecompressor(ZstdDecompressor&&) noexcept;
  ZstdDecompressor& operator=(ZstdDecompressor&&) noexcept;

  // Decompresses one frame into exactly dst.size() bytes. Throws kCorrupt
  // (with `what` in the message) on malformed input or a size mismatch.
  void decompress(std::span<const std::byte> src, std::span<const std::byte> prefix, std::span<std::byte> dst,
                  const char* what);

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace vmsynth::codec
