#include "codec/frame_codec.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/error.h"

namespace vmsynth::codec {

using format::BlockOp;
using format::FileRecord;
using format::FrameHeader;
using format::FrameType;
using format::OpKind;

static_assert(format::zstd_bound(format::kMaxBlocksPayload) == ZSTD_COMPRESSBOUND(format::kMaxBlocksPayload));
static_assert(format::zstd_bound(format::kMaxTableRaw) == ZSTD_COMPRESSBOUND(format::kMaxTableRaw));
static_assert(format::zstd_bound(format::kMaxOpaqueFileSize) == ZSTD_COMPRESSBOUND(format::kMaxOpaqueFileSize));
static_assert(format::kSealTagSize == kGcmTagBytes);

namespace {

using Aad = std::array<std::byte, format::kFrameAadSize>;

// The bytes of a frame header a sealed frame authenticates. Re-encoding a
// decoded header gives the bytes as read: decoding keeps every field of them.
Aad frame_aad(const FrameHeader& h) {
  auto bytes = format::encode_frame_header(h);
  Aad a;
  std::memcpy(a.data(), bytes.data(), a.size());
  return a;
}

void verify(uint64_t expected, std::span<const std::byte> stored, const char* what) {
  uint64_t actual = stored.empty() ? 0 : hash64(stored);
  if (actual != expected) throw_corrupt(std::string(what) + " checksum mismatch: the overlay is damaged");
}

// A codec with keys accepts only sealed frames and one without only plain ones.
void check_sealing(const FrameHeader& h, const FrameKeys* keys) {
  if (h.sealed() && !keys) {
    throw Error(ErrorCode::kWrongKey, "the frame is encrypted but no key was given");
  }
  if (!h.sealed() && keys) throw_corrupt("an unencrypted frame in an encrypted overlay");
}

[[noreturn]] void throw_unauthentic(const char* what) {
  throw_corrupt(std::string("authentication failed: the ") + what +
                " was altered, damaged or taken from another overlay");
}

// Opens the table message (tag in the header), which also authenticates the
// header. Returns the plaintext (in `plain`).
std::span<const std::byte> open_table(const FrameKeys& keys, const FrameHeader& h, std::span<const std::byte> stored,
                                      std::vector<std::byte>& plain, const char* what) {
  plain.resize(stored.size());
  Aad aad = frame_aad(h);
  if (!keys.open(FrameKeys::kTablePart, h.index, aad, stored, plain, h.auth_tag)) throw_unauthentic(what);
  return plain;
}

std::span<const std::byte> open_payload(const FrameKeys& keys, const FrameHeader& h, std::span<const std::byte> stored,
                                        std::vector<std::byte>& plain, const char* what) {
  // decode_frame_header guarantees a non-empty sealed payload is longer than its tag.
  const size_t n = stored.size() - kGcmTagBytes;
  plain.resize(n);
  Aad aad = frame_aad(h);
  auto tag = std::span<const uint8_t, kGcmTagBytes>(reinterpret_cast<const uint8_t*>(stored.data() + n), kGcmTagBytes);
  if (!keys.open(FrameKeys::kPayloadPart, h.index, aad, stored.first(n), plain, tag)) throw_unauthentic(what);
  return std::span(plain).first(n);
}

EncodedFrame assemble(FrameHeader h, std::span<const std::byte> table, std::span<const std::byte> payload,
                      const FrameKeys* keys) {
  const size_t tag = keys && !payload.empty() ? kGcmTagBytes : 0;
  h.table_stored = static_cast<uint32_t>(table.size());
  h.payload_stored = static_cast<uint32_t>(payload.size() + tag);
  if (keys) h.flags |= format::kFrameFlagSealed;
  EncodedFrame f;
  std::vector<std::byte>& out = f.bytes;
  out.reserve(format::kFrameHeaderSize + table.size() + payload.size() + tag);
  out.resize(format::kFrameHeaderSize);  // the header goes in last, once its tag and checksums are known
  if (keys) {
    Aad aad = frame_aad(h);
    out.resize(out.size() + table.size());
    h.auth_tag = keys->seal(FrameKeys::kTablePart, h.index, aad, table, std::span(out).last(table.size()));
    if (!payload.empty()) {
      out.resize(out.size() + payload.size());
      auto t = keys->seal(FrameKeys::kPayloadPart, h.index, aad, payload, std::span(out).last(payload.size()));
      auto tb = std::as_bytes(std::span(t));
      out.insert(out.end(), tb.begin(), tb.end());
    }
  } else {
    out.insert(out.end(), table.begin(), table.end());
    out.insert(out.end(), payload.begin(), payload.end());
  }
  auto stored_table = std::span(out).subspan(format::kFrameHeaderSize, table.size());
  auto stored_payload = std::span(out).subspan(format::kFrameHeaderSize + table.size());
  h.table_checksum = stored_table.empty() ? 0 : hash64(stored_table);
  h.payload_checksum = stored_payload.empty() ? 0 : hash64(stored_payload);
  auto head = format::encode_frame_header(h);
  std::copy(head.begin(), head.end(), out.begin());
  f.header = h;
  return f;
}

}  // namespace

FrameCodec::FrameCodec(int level) : compressor_(level, format::kZstdWindowLog) {}

FrameCodec::FrameCodec(std::shared_ptr<const FrameKeys> keys, int level)
    : keys_(std::move(keys)), compressor_(level, format::kZstdWindowLog) {}

EncodedFrame FrameCodec::encode_blocks(uint64_t index, std::span<const BlockOp> ops, std::span<const std::byte> payload,
                                       std::span<const std::byte> prefix) {
  FrameHeader h;
  h.type = FrameType::kBlocks;
  h.index = index;
  h.op_count = static_cast<uint32_t>(ops.size());
  for (const BlockOp& op : ops) ++h.kind_count[static_cast<unsigned>(op.kind)];
  std::vector<std::byte> raw_table = format::encode_op_table(ops);
  h.table_raw = static_cast<uint32_t>(raw_table.size());
  std::vector<std::byte> table = compressor_.compress(raw_table);
  h.payload_raw = static_cast<uint32_t>(payload.size());
  std::vector<std::byte> stored;
  if (!payload.empty()) compressor_.compress(payload, prefix, stored);
  return assemble(h, table, stored, keys_.get());
}

EncodedFrame FrameCodec::encode_file(uint64_t index, FileRecord record, std::span<const std::byte> content,
                                     const std::span<const std::byte>* base_file) {
  FrameHeader h;
  h.type = FrameType::kFile;
  h.index = index;
  h.op_count = 1;
  h.payload_raw = static_cast<uint32_t>(content.size());
  record.size = content.size();
  record.encoding = format::FileEncoding::kZstd;
  record.prefix_hash = {};
  std::vector<std::byte> stored;
  if (!content.empty()) {
    compressor_.compress(content, {}, stored);
    if (base_file && !base_file->empty()) {
      compressor_.compress(content, *base_file, trial_);
      if (trial_.size() < stored.size()) {
        stored.swap(trial_);
        record.encoding = format::FileEncoding::kZstdBasePrefix;
        record.prefix_hash = hash128(*base_file);
      }
    }
  }
  // The record is 42 bytes: stored uncompressed.
  std::vector<std::byte> table = format::encode_file_record(record);
  h.table_raw = static_cast<uint32_t>(table.size());
  return assemble(h, table, stored, keys_.get());
}

EncodedFrame FrameCodec::encode_end(uint64_t index, const format::Trailer& trailer, const FrameKeys* keys) {
  FrameHeader h;
  h.type = FrameType::kEnd;
  h.index = index;
  std::vector<std::byte> t = format::encode_trailer(trailer);
  h.payload_raw = static_cast<uint32_t>(t.size());
  return assemble(h, {}, t, keys);
}

std::vector<BlockOp> FrameCodec::decode_blocks_table(const FrameHeader& h, std::span<const std::byte> stored) {
  check_sealing(h, keys_.get());
  verify(h.table_checksum, stored, "op table");
  std::span<const std::byte> table = keys_ ? open_table(*keys_, h, stored, plain_, "op table") : stored;
  scratch_.resize(h.table_raw);
  decompressor_.decompress(table, {}, scratch_, "op table");
  std::vector<BlockOp> ops = format::decode_op_table(scratch_, h.op_count);
  std::array<uint32_t, format::kOpKindCount> counts{};
  for (const BlockOp& op : ops) ++counts[static_cast<unsigned>(op.kind)];
  if (counts != h.kind_count) throw_corrupt("op table does not match the op kind counts in its frame header");
  return ops;
}

FileRecord FrameCodec::decode_file_table(const FrameHeader& h, std::span<const std::byte> stored) {
  check_sealing(h, keys_.get());
  verify(h.table_checksum, stored, "file record");
  std::span<const std::byte> table = keys_ ? open_table(*keys_, h, stored, plain_, "file record") : stored;
  FileRecord r = format::decode_file_record(table);
  if (r.size != h.payload_raw) throw_corrupt("file record size does not match its frame header");
  return r;
}

std::span<const std::byte> FrameCodec::open_stored_payload(const FrameHeader& h, std::span<const std::byte> stored) {
  check_sealing(h, keys_.get());
  verify(h.payload_checksum, stored, "payload");
  // decode_frame_header guarantees that a payload is empty in both size
  // fields or in neither, so an empty one has nothing to open.
  if (!keys_ || stored.empty()) return stored;
  return open_payload(*keys_, h, stored, plain_, "payload");
}

void FrameCodec::decode_payload(const FrameHeader& h, std::span<const std::byte> stored,
                                std::span<const std::byte> prefix, std::span<std::byte> dst) {
  if (dst.size() != h.payload_raw) throw_corrupt("payload buffer size mismatch");
  std::span<const std::byte> payload = open_stored_payload(h, stored);
  if (dst.empty()) return;
  decompressor_.decompress(payload, prefix, dst, "payload");
}

void FrameCodec::check_payload(const FrameHeader& h, std::span<const std::byte> stored) {
  (void)open_stored_payload(h, stored);
}

format::Trailer FrameCodec::decode_end(const FrameHeader& h, std::span<const std::byte> stored, const FrameKeys* keys) {
  check_sealing(h, keys);
  verify(h.payload_checksum, stored, "trailer");
  if (!keys) return format::decode_trailer(stored);
  std::vector<std::byte> none, plain;
  open_table(*keys, h, {}, none, "end frame header");
  return format::decode_trailer(open_payload(*keys, h, stored, plain, "trailer"));
}

}  // namespace vmsynth::codec
