// Decoding of a frame's contents, checked against the hashes the overlay
// records: the one place where ops become block contents and a file frame
// becomes its file.
//
// BlockFrameDecoder turns a blocks frame's ops (already decoded and validated)
// into 4096-byte blocks: it builds the DELTA reference prefix from the base,
// decompresses the payload, takes ZERO, BASE_COPY and SELF_COPY contents from
// where the op says, and compares every block's XXH3-128 with its op's hash.
// decode_file_frame does the same for an opaque file. Callers decide what
// happens to the verified contents: both synthesis engines hand them to the
// LaunchOutput (the serial one block by block, the parallel one coalesced into
// runs from its slot buffers), `overlay verify` (engine/overlay_verify.h) only
// counts them. There is no other op applier: a change to how an op kind is
// reconstructed or checked is made here, once.
//
// A caller without a base VM (`overlay verify` without --base) gets what can
// be checked without one: a frame with DELTA ops, or a file encoded against
// the base's file, cannot be decompressed without that reference, so only its
// stored payload's checksum and GCM tag are verified and its contents are
// reported as not reconstructed (an empty span, DecodedFile::checked false).
//
// Ownership and thread safety: a BlockFrameDecoder owns its scratch buffers
// (the DELTA prefix, and the contents unless the caller passes its own buffer)
// and is used by one thread at a time, like the FrameCodec it is given.
// BaseBlockReader owns read-only descriptors of the base images; read() is a
// pread and may be called from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include "codec/frame_codec.h"
#include "codec/overlay_format.h"
#include "engine/vm_dir.h"
#include "io/file.h"

namespace vmsynth {

// Blocks of a base VM's images, with the format's rule that a base image is
// extended with zeros beyond its end.
class BaseBlockReader {
 public:
  explicit BaseBlockReader(const VmDir& base);
  // Reads base block `a` into out (4096 bytes), zero-padded past the image's end.
  void read(format::BlockAddress a, std::span<std::byte> out) const;

 private:
  std::array<io::File, kImageCount> images_;
};

class BlockFrameDecoder {
 public:
  // Reads the 4096-byte block at `a` into `out`.
  using ReadBlock = std::function<void(format::BlockAddress a, std::span<std::byte> out)>;
  struct Sources {
    // The base VM's blocks (DELTA prefixes, BASE_COPY), zero-padded past the
    // base image's end. Null: no base at hand.
    ReadBlock base;
    // Launch blocks produced by earlier frames (SELF_COPY), as they read back
    // from the output. Null: the caller keeps no launch blocks.
    ReadBlock launch;
  };
  // Gets each op, in op order, with its verified content, or with an empty
  // span when `sources` cannot provide it (then nothing was compared).
  using Emit = std::function<void(const format::BlockOp& op, std::span<const std::byte> content)>;

  // Decodes the stored payload of a blocks frame whose ops came from
  // FrameCodec::decode_blocks_table and passed OpValidator, reconstructs every
  // op's block, checks it against op.hash (kCorrupt naming the block) and
  // passes it to `emit`. Without sources.base, a frame with DELTA ops has its
  // payload checked (FrameCodec::check_payload) but not decompressed, and its
  // DELTA, LITERAL and BASE_COPY ops are emitted without content.
  //
  // `content` receives every block (it is resized to ops.size() x 4096
  // bytes): first the decoded payload (the DELTA and LITERAL blocks, in op
  // order), then one block per other op, in op order. The spans given to
  // `emit` point into it and stay valid until the buffer is next resized, so a
  // caller that keeps the buffer (the parallel engine's frame slots) can write
  // them after decode() returns, and adjacent blocks of one kind group are
  // adjacent in memory.
  void decode(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> stored_payload,
              std::span<const format::BlockOp> ops, const Sources& sources, const Emit& emit,
              std::vector<std::byte>& content);
  // The same into the decoder's own buffer: the spans are valid until the next call.
  void decode(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> stored_payload,
              std::span<const format::BlockOp> ops, const Sources& sources, const Emit& emit) {
    decode(codec, h, stored_payload, ops, sources, emit, content_);
  }

 private:
  std::vector<std::byte> prefix_;   // base blocks at the DELTA ops' targets, in op order
  std::vector<std::byte> content_;  // decode()'s blocks when the caller gives no buffer
};

struct DecodedFile {
  format::FileRecord record;
  std::vector<std::byte> content;  // the file, verified against record.hash (empty when !checked)
  // False when the file is encoded against the base VM's copy and no base was
  // given: only the stored payload's checksum (and GCM tag) were verified.
  bool checked = false;
};

// Opens a file frame's record, decompresses its payload (with the base VM's
// file of the same name as prefix when the record says so) and checks the
// content's hash (kCorrupt). `base` null: no base at hand (see DecodedFile).
// A base whose file is missing or differs from the one the overlay was made
// against is kWrongBase.
DecodedFile decode_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> table,
                              std::span<const std::byte> payload, const VmDir* base);

// Reports a block whose reconstructed content does not hash to the recorded value.
[[noreturn]] void throw_hash_mismatch(const format::BlockOp& op);

}  // namespace vmsynth
