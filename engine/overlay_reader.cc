#include "engine/overlay_reader.h"

#include <string>

#include "common/error.h"

namespace vmsynth {

std::string RawFrame::where() const {
  return "frame " + std::to_string(header.index) + " at byte " + std::to_string(offset);
}

size_t OverlayReader::read(std::span<std::byte> buf) {
  size_t n = src_.read_full(buf);
  offset_ += n;
  return n;
}

OverlayReader::OverlayReader(io::ByteSource& src, const codec::KeySpec& key, KeyUse use) : src_(src) {
  std::array<std::byte, format::kFileHeaderSize> head;
  size_t n = read(head);
  if (n == 0) throw_corrupt("the overlay is empty");
  if (n < head.size()) {
    throw_corrupt("the overlay is truncated: it ends at byte " + std::to_string(n) + ", inside its " +
                  std::to_string(format::kFileHeaderSize) + "-byte header");
  }
  try {
    header_ = format::decode_file_header(head);
  } catch (Error& e) {
    throw e.with("overlay header at byte 0");
  }
  if (header_.encrypted()) {
    if (key.present() || use == KeyUse::kRequire) keys_ = codec::FrameKeys::open(header_, head, key);
  } else if (key.present()) {
    throw Error(ErrorCode::kWrongKey, key.origin +
                                          " was given, but this overlay is not encrypted, so it is not authenticated "
                                          "either; leave out the key to accept an unencrypted overlay");
  }
}

bool OverlayReader::next(RawFrame& f) {
  if (done_) return false;
  const uint64_t at = offset_;
  std::array<std::byte, format::kFrameHeaderSize> head;
  size_t n = read(head);
  if (n < head.size()) {
    throw_corrupt("the overlay is truncated: it ends at byte " + std::to_string(offset_) + " after " +
                  std::to_string(frames_) + " frames, before its end frame");
  }
  format::FrameHeader h;
  try {
    h = format::decode_frame_header(head);
  } catch (Error& e) {
    throw e.with("frame " + std::to_string(frames_) + " at byte " + std::to_string(at));
  }
  const std::string where = "frame " + std::to_string(frames_) + " at byte " + std::to_string(at);
  if (h.sealed() != header_.encrypted()) {
    throw_corrupt(std::string(h.sealed() ? "an encrypted frame in an unencrypted overlay"
                                         : "an unencrypted frame in an encrypted overlay") +
                  " (" + where + ")");
  }
  if (h.type == format::FrameType::kBlocks && h.op_count > header_.max_frame_blocks) {
    throw_corrupt("frame with " + std::to_string(h.op_count) + " ops, more than the " +
                  std::to_string(header_.max_frame_blocks) + " the overlay header declares (" + where + ")");
  }
  if (h.index != frames_) {
    throw_corrupt("frame out of order: expected index " + std::to_string(frames_) + ", found " +
                  std::to_string(h.index) + " (" + where + ")");
  }
  std::vector<std::byte>& body = f.body;
  body.resize(h.body_size());
  if (read(body) < body.size()) {
    throw_corrupt("the overlay is truncated: it ends at byte " + std::to_string(offset_) + ", inside " + where);
  }
  if (h.type == format::FrameType::kEnd && !authenticated()) {
    // Encrypted and read without the key: the trailer cannot be opened, so
    // only the stream's shape (end frame present, nothing after it) is checked.
    std::byte extra;
    if (src_.read_some(std::span(&extra, 1)) != 0) {
      throw_corrupt("unexpected data after the end frame at byte " + std::to_string(offset_));
    }
    done_ = true;
    return false;
  }
  if (h.type == format::FrameType::kEnd) {
    format::Trailer trailer;
    try {
      trailer = codec::FrameCodec::decode_end(h, body, keys_.get());
    } catch (Error& e) {
      throw e.with(where);
    }
    if (trailer.frame_count != frames_) {
      throw_corrupt("the end frame counts " + std::to_string(trailer.frame_count) + " frames but " +
                    std::to_string(frames_) + " were read (" + where + ")");
    }
    if (trailer.kind_count != kinds_seen_) {
      throw_corrupt("the end frame's op totals do not match the frames read (" + where + ")");
    }
    if (trailer.frame_chain != chain_.digest()) {
      throw_corrupt("the frame chain does not match the end frame: frames were changed, dropped or reordered (" +
                    where + ")");
    }
    std::byte extra;
    if (src_.read_some(std::span(&extra, 1)) != 0) {
      throw_corrupt("unexpected data after the end frame at byte " + std::to_string(offset_));
    }
    done_ = true;
    return false;
  }
  chain_.add(format::frame_header_checksum(head));
  for (unsigned k = 0; k < format::kOpKindCount; ++k) kinds_seen_[k] += h.kind_count[k];
  f.header = h;
  f.offset = at;
  ++frames_;
  return true;
}

}  // namespace vmsynth
