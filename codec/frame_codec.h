// Encoding and decoding of whole overlay frames: header + stored op table +
// stored payload, with compression, checksums and, for encrypted overlays,
// the AES-256-GCM seal (codec/crypto.h).
//
// These are pure functions over buffers; the engine decides which blocks go
// into which frame and supplies the reference prefix for DELTA ops (the base
// blocks at the DELTA ops' own addresses, concatenated in op order). A
// FrameCodec owns one zstd compressor and decompressor and is used by one
// thread at a time.
//
// Encryption lives here, in the decode stage, so that every engine gets it by
// constructing its FrameCodecs with the overlay's FrameKeys (shared, read-only,
// from OverlayReader::keys()): decode_blocks_table / decode_file_table open the
// table message, which also authenticates the frame header; decode_payload
// opens the payload message; decode_end the trailer. A codec built with keys
// accepts only sealed frames; one built without refuses sealed frames.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <memory>

#include "codec/crypto.h"
#include "codec/overlay_format.h"
#include "codec/zstd_codec.h"

namespace vmsynth::codec {

struct EncodedFrame {
  format::FrameHeader header;
  std::vector<std::byte> bytes;  // header + stored table + stored payload
};

class FrameCodec {
 public:
  // level: zstd level for tables and payloads, 1..22. Frames are not sealed.
  explicit FrameCodec(int level = 3);
  // Frames of an encrypted overlay when `keys` is set (sealed on encode,
  // required sealed and authentic on decode); a plain overlay when it is null.
  explicit FrameCodec(std::shared_ptr<const FrameKeys> keys, int level = 3);

  // A blocks frame. `payload` holds the 4096-byte contents of the frame's
  // DELTA and LITERAL ops in op order; `prefix` the base blocks of its DELTA
  // ops in op order (empty when there are none).
  EncodedFrame encode_blocks(uint64_t index, std::span<const format::BlockOp> ops, std::span<const std::byte> payload,
                             std::span<const std::byte> prefix);
  // A file frame. `base_file` is the base VM's file of the same name, or
  // nullptr: with one, the content is compressed both against it
  // (kZstdBasePrefix) and alone, and the smaller is kept; record.encoding and
  // prefix_hash are set here. Only the kept encoding is sealed.
  EncodedFrame encode_file(uint64_t index, format::FileRecord record, std::span<const std::byte> content,
                           const std::span<const std::byte>* base_file);
  // The end frame; `keys` null for a plain overlay.
  static EncodedFrame encode_end(uint64_t index, const format::Trailer& trailer, const FrameKeys* keys);

  // Verifies the table checksum, opens a sealed table (authenticating the
  // frame header), decompresses and parses the op table, and checks the ops
  // against the header's kind counts.
  std::vector<format::BlockOp> decode_blocks_table(const format::FrameHeader& h, std::span<const std::byte> stored);
  format::FileRecord decode_file_table(const format::FrameHeader& h, std::span<const std::byte> stored);
  // Verifies the payload checksum, opens a sealed payload and decompresses
  // into dst (h.payload_raw bytes).
  void decode_payload(const format::FrameHeader& h, std::span<const std::byte> stored,
                      std::span<const std::byte> prefix, std::span<std::byte> dst);
  // What decode_payload checks before it decompresses: the payload checksum
  // and, for a sealed payload, its GCM tag. For a payload whose reference
  // prefix (base VM blocks or a base VM file) is not at hand, as in `overlay
  // verify` without --base: a zstd frame cannot be decompressed without its
  // prefix, but its stored bytes can still be shown intact and authentic.
  void check_payload(const format::FrameHeader& h, std::span<const std::byte> stored);
  static format::Trailer decode_end(const format::FrameHeader& h, std::span<const std::byte> stored,
                                    const FrameKeys* keys);

  bool sealed() const { return keys_ != nullptr; }

 private:
  // Checks sealing and the payload checksum, and opens a sealed payload;
  // returns the zstd frame (in plain_ when sealed).
  std::span<const std::byte> open_stored_payload(const format::FrameHeader& h, std::span<const std::byte> stored);

  std::shared_ptr<const FrameKeys> keys_;  // null: plain overlay
  ZstdCompressor compressor_;
  ZstdDecompressor decompressor_;
  std::vector<std::byte> scratch_;  // decompressed op table
  std::vector<std::byte> plain_;    // opened (decrypted) stored part
  std::vector<std::byte> trial_;    // encode_file's second candidate
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
