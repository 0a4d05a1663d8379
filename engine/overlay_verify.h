// Verification of a whole overlay without synthesizing it: what `vmsynth
// overlay verify` runs (the overlay's `zstd -t`).
//
// Reads the stream front to back like a synthesis and checks everything a
// synthesis checks, but writes no VM: the file header; every frame header
// (checksum, limits, order, sealing); every op table and file record
// (checksum, decoding, kind counts); every payload's checksum; for an
// encrypted overlay the key check and every GCM tag (tables, payloads,
// trailer), so it needs the key; the op rules (OpValidator: targets inside
// the launch images and covered once, BASE_COPY sources inside the base,
// SELF_COPY sources produced by an earlier frame, each file once); the end
// frame (frame count, op totals, frame chain, nothing after it); and every
// block and file content against its recorded hash, reconstructed by the
// decoder synthesis uses (engine/frame_decoder.h).
//
// Without a base VM some contents cannot be reconstructed and are counted,
// not checked: DELTA blocks and every other payload block of a frame with
// DELTA ops (the payload is one zstd frame compressed against base blocks),
// BASE_COPY blocks, files encoded against the base's copy, and SELF_COPY
// blocks that copy one of those. Their stored payloads are still checked
// (checksum, GCM tag). With a base, its sizes and content id are checked
// against the header first (kWrongBase), exactly as synthesis does, and then
// every block is checked.
//
// SELF_COPY: synthesis reads the source block back from its output; verify
// writes nothing, so it compares the copy's recorded hash with the hash of the
// source block as it would read back (recorded when that block was checked).
// That costs one 16-byte hash (plus map overhead, about 50 bytes in all) per
// checked block. A SELF_COPY whose source was itself a SELF_COPY into an
// image's last, partial block is not checked either: only the bytes inside
// the image are written, so what that block reads back depends on bytes
// verify does not have.
//
// Errors are those of synthesis (kCorrupt naming the frame, its byte offset
// and the op's block where known; kWrongKey; kWrongBase; kUnsupported).
// One call per stream; not thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "codec/block_hash.h"
#include "codec/crypto.h"
#include "codec/overlay_format.h"
#include "engine/cancel.h"
#include "engine/progress.h"
#include "io/byte_source.h"

namespace vmsynth {

struct VerifyOptions {
  // Key of an encrypted overlay: required for one (kWrongKey without it),
  // refused for an unencrypted one, as in synthesis.
  codec::KeySpec key;
  // The base VM directory; empty: none, contents that need it are not checked.
  std::string base_dir;
  bool use_base_id_cache = true;  // as in synthesis (engine/base_id.h)
  std::string cache_dir;          // as in synthesis
  const CancelToken* cancel = nullptr;  // engine/cancel.h; null: not cancellable
  ProgressFn progress;            // overlay bytes consumed
  uint64_t source_size = 0;       // for progress; 0 = unknown
};

struct VerifyStats {
  format::FileHeader header;
  uint64_t overlay_bytes = 0;
  uint64_t frames = 0;  // all frames before the end frame
  uint64_t block_frames = 0;
  uint64_t file_frames = 0;
  uint64_t blocks_checked = 0;      // content reconstructed and matched its hash
  uint64_t blocks_not_checked = 0;  // content needs the base VM (see not_checked)
  std::array<uint64_t, format::kOpKindCount> not_checked_by_kind{};
  uint64_t files_checked = 0;
  uint64_t files_not_checked = 0;  // encoded against the base's file, no base given
  bool base_checked = false;       // a base was given and matches the header
  Hash128 base_id{};               // of that base
  bool authenticated = false;      // encrypted: the key check and every GCM tag verified
  // Why blocks_not_checked / files_not_checked are not zero; empty when they are.
  std::string not_checked_reason;
  double seconds_base_id = 0;
  double seconds_total = 0;

  bool everything_checked() const { return blocks_not_checked == 0 && files_not_checked == 0; }
};

VerifyStats verify_overlay(io::ByteSource& src, const VerifyOptions& opts);

}  // namespace vmsynth
