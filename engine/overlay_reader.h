// Streaming reader of an overlay: header, then frames, front to back.
//
// Reads from an io::ByteSource (file, pipe, socket) without seeking, checks
// each frame header (magic, checksum, limits, sealing), that frame indexes run
// 0, 1, 2, ..., and at the end frame that the trailer's frame count, op
// totals and frame-header chain match what was read, and that nothing follows
// it. Table and payload bytes are returned still stored (compressed, and
// encrypted for an encrypted overlay); decoding them is the caller's business
// (FrameCodec built with keys()), so it can happen on other threads.
//
// Encrypted overlays: the constructor derives the overlay's keys from the
// KeySpec and checks the header's key check, so a wrong key is reported
// (kWrongKey) before the caller writes anything. The end frame is opened here,
// so its frame count and op totals are authenticated. A key given for an
// overlay that is not encrypted is refused (kWrongKey): whoever gives a key
// expects an authenticated overlay, and an attacker could otherwise strip the
// encryption. KeyUse::kHeadersOnly (for `overlay info`) reads an encrypted
// overlay without a key: headers only, nothing authenticated.
//
// Errors are vmsynth::Error kCorrupt naming the frame and byte offset; a
// stream that ends early is reported as truncated. One reader per stream; not
// thread-safe. keys() may be shared with any number of threads.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "codec/crypto.h"
#include "codec/frame_codec.h"
#include "codec/overlay_format.h"
#include "io/byte_source.h"

namespace vmsynth {

struct RawFrame {
  format::FrameHeader header;
  uint64_t offset = 0;           // byte offset of the frame header in the stream
  std::vector<std::byte> body;   // stored table, then stored payload

  std::span<const std::byte> table() const { return std::span(body).first(header.table_stored); }
  std::span<const std::byte> payload() const { return std::span(body).subspan(header.table_stored); }
  std::string where() const;  // "frame 12 at byte 34567"
};

enum class KeyUse {
  kRequire,      // an encrypted overlay needs the key (synthesis)
  kHeadersOnly,  // an encrypted overlay may be read without a key (overlay info)
};

class OverlayReader {
 public:
  // Reads and validates the file header; for an encrypted overlay, derives
  // its keys from `key` and checks them.
  explicit OverlayReader(io::ByteSource& src, const codec::KeySpec& key = {}, KeyUse use = KeyUse::kRequire);

  const format::FileHeader& header() const { return header_; }
  // The overlay's keys: null for an unencrypted overlay (or one read with
  // kHeadersOnly and no key). Build every FrameCodec with them.
  const std::shared_ptr<const codec::FrameKeys>& keys() const { return keys_; }
  // False only for an encrypted overlay read without its key.
  bool authenticated() const { return keys_ != nullptr || !header_.encrypted(); }

  // Reads the next frame into `f` (reusing its buffer). Returns false once
  // the end frame has been read and verified; `f` is then not modified.
  bool next(RawFrame& f);

  uint64_t bytes_read() const { return offset_; }
  uint64_t frames_read() const { return frames_; }

 private:
  size_t read(std::span<std::byte> buf);

  io::ByteSource& src_;
  format::FileHeader header_;
  std::shared_ptr<const codec::FrameKeys> keys_;
  codec::FrameChain chain_;
  std::array<uint64_t, format::kOpKindCount> kinds_seen_{};
  uint64_t offset_ = 0;
  uint64_t frames_ = 0;
  bool done_ = false;
};

}  // namespace vmsynth
