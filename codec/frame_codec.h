// Encoding and decoding of whole overlay frames: header + stored op table +
// stored payload, with compression and checksums.
//
// These are pure functions over buffers; the engine decides which blocks go
// into which frame and supplies the reference prefix for DELTA ops (the base
// blocks at the DELTA ops' own addresses, concatenated in op order). A
// FrameCodec owns one zstd compressor and decompressor and is used by one
// thread at a time.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "codec/overlay_format.h"
#include "codec/zstd_codec.h"

namespace vmsynth::codec {

struct EncodedFrame {
  format::FrameHeader header;
  std::vector<std::byte> bytes;  // header + stored table + stored payload
};

class FrameCodec {
 public:
  // level: zstd level for tables and payloads, 1..22.
  explicit FrameCodec(int level = 3);

  // A blocks frame. `payload` holds the 4096-byte contents of the frame's
  // DELTA and LITERAL ops in op order; `prefix` the base blocks of its DELTA
  // ops in op order (empty when there are none).
  EncodedFrame encode_blocks(uint64_t index, std::span<const format::BlockOp> ops, std::span<const std::byte> payload,
                             std::span<const std::byte> prefix);
  // A file frame; `prefix` is the base's file of the same name for
  // FileEncoding::kZstdBasePrefix, else empty.
  EncodedFrame encode_file(uint64_t index, const format::FileRecord& record, std::span<const std::byte> content,
                           std::span<const std::byte> prefix);
  static EncodedFrame encode_end(uint64_t index, const format::Trailer& trailer);

  // Verifies the table checksum, decompresses and parses the op table, and
  // checks the ops against the header's kind counts.
  std::vector<format::BlockOp> decode_blocks_table(const format::FrameHeader& h, std::span<const std::byte> stored);
  format::FileRecord decode_file_table(const format::FrameHeader& h, std::span<const std::byte> stored);
  // Verifies the payload checksum and decompresses into dst (h.payload_raw bytes).
  void decode_payload(const format::FrameHeader& h, std::span<const std::byte> stored,
                      std::span<const std::byte> prefix, std::span<std::byte> dst);
  static format::Trailer decode_end(const format::FrameHeader& h, std::span<const std::byte> stored);

 private:
  ZstdCompressor compressor_;
  ZstdDecompressor decompressor_;
  std::vector<std::byte> scratch_;
};

// Running XXH3-128 over the header checksums of every frame, in order; the
// trailer records the result so dropped, repeated or reordered frames show.
class FrameChain {
 public:
  void add(uint64_t header_checksum) { hash_.update_u64(header_checksum); }
  Hash128 digest() const { return hash_.digest(); }

 private:
  StreamHash128 hash_;
};

}  // namespace vmsynth::codec
