// Streaming reader of an overlay: header, then frames, front to back.
//
// Reads from an io::ByteSource (file, pipe, socket) without seeking, checks
// each frame header (magic, checksum, limits), that frame indexes run 0, 1,
// 2, ..., and at the end frame that the trailer's frame count, op totals and
// frame-header chain match what was read, and that nothing follows it.
// Table and payload bytes are returned still stored (compressed); decoding
// them is the caller's business, so it can happen on other threads.
//
// Errors are vmsynth::Error kCorrupt naming the frame and byte offset; a
// stream that ends early is reported as truncated. One reader per stream; not
// thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

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

class OverlayReader {
 public:
  // Reads and validates the file header.
  explicit OverlayReader(io::ByteSource& src);

  const format::FileHeader& header() const { return header_; }

  // Reads the next frame into `f` (reusing its buffer). Returns false once
  // the end frame has been read and verified; `f` is then not modified.
  bool next(RawFrame& f);

  uint64_t bytes_read() const { return offset_; }
  uint64_t frames_read() const { return frames_; }
  const format::Trailer& trailer() const { return trailer_; }

 private:
  size_t read(std::span<std::byte> buf);

  io::ByteSource& src_;
  format::FileHeader header_;
  format::Trailer trailer_;
  codec::FrameChain chain_;
  std::array<uint64_t, format::kOpKindCount> kinds_seen_{};
  uint64_t offset_ = 0;
  uint64_t frames_ = 0;
  bool done_ = false;
};

}  // namespace vmsynth
