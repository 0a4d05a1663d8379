#include "codec/frame_codec.h"

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

namespace {

EncodedFrame assemble(FrameHeader h, std::span<const std::byte> table, std::span<const std::byte> payload) {
  h.table_stored = static_cast<uint32_t>(table.size());
  h.payload_stored = static_cast<uint32_t>(payload.size());
  h.table_checksum = table.empty() ? 0 : hash64(table);
  h.payload_checksum = payload.empty() ? 0 : hash64(payload);
  EncodedFrame f;
  f.header = h;
  auto head = format::encode_frame_header(h);
  f.bytes.reserve(head.size() + table.size() + payload.size());
  f.bytes.insert(f.bytes.end(), head.begin(), head.end());
  f.bytes.insert(f.bytes.end(), table.begin(), table.end());
  f.bytes.insert(f.bytes.end(), payload.begin(), payload.end());
  return f;
}

void verify(uint64_t expected, std::span<const std::byte> stored, const char* what) {
  uint64_t actual = stored.empty() ? 0 : hash64(stored);
  if (actual != expected) throw_corrupt(std::string(what) + " checksum mismatch: the overlay is damaged");
}

}  // namespace

FrameCodec::FrameCodec(int level) : compressor_(level, format::kZstdWindowLog) {}

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
  return assemble(h, table, stored);
}

EncodedFrame FrameCodec::encode_file(uint64_t index, const FileRecord& record, std::span<const std::byte> content,
                                     std::span<const std::byte> prefix) {
  FrameHeader h;
  h.type = FrameType::kFile;
  h.index = index;
  h.op_count = 1;
  std::vector<std::byte> table = format::encode_file_record(record);
  h.table_raw = static_cast<uint32_t>(table.size());
  h.payload_raw = static_cast<uint32_t>(content.size());
  std::vector<std::byte> stored;
  if (!content.empty()) compressor_.compress(content, prefix, stored);
  // The record is 42 bytes: stored as is.
  return assemble(h, table, stored);
}

EncodedFrame FrameCodec::encode_end(uint64_t index, const format::Trailer& trailer) {
  FrameHeader h;
  h.type = FrameType::kEnd;
  h.index = index;
  std::vector<std::byte> t = format::encode_trailer(trailer);
  h.payload_raw = static_cast<uint32_t>(t.size());
  return assemble(h, {}, t);
}

std::vector<BlockOp> FrameCodec::decode_blocks_table(const FrameHeader& h, std::span<const std::byte> stored) {
  verify(h.table_checksum, stored, "op table");
  scratch_.resize(h.table_raw);
  decompressor_.decompress(stored, {}, scratch_, "op table");
  std::vector<BlockOp> ops = format::decode_op_table(scratch_, h.op_count);
  std::array<uint32_t, format::kOpKindCount> counts{};
  for (const BlockOp& op : ops) ++counts[static_cast<unsigned>(op.kind)];
  if (counts != h.kind_count) throw_corrupt("op table does not match the op kind counts in its frame header");
  return ops;
}

FileRecord FrameCodec::decode_file_table(const FrameHeader& h, std::span<const std::byte> stored) {
  verify(h.table_checksum, stored, "file record");
  FileRecord r = format::decode_file_record(stored);
  if (r.size != h.payload_raw) throw_corrupt("file record size does not match its frame header");
  return r;
}

void FrameCodec::decode_payload(const FrameHeader& h, std::span<const std::byte> stored,
                                std::span<const std::byte> prefix, std::span<std::byte> dst) {
  verify(h.payload_checksum, stored, "payload");
  if (dst.size() != h.payload_raw) throw_corrupt("payload buffer size mismatch");
  if (dst.empty()) return;
  decompressor_.decompress(stored, prefix, dst, "payload");
}

format::Trailer FrameCodec::decode_end(const FrameHeader& h, std::span<const std::byte> stored) {
  verify(h.payload_checksum, stored, "trailer");
  return format::decode_trailer(stored);
}

}  // namespace vmsynth::codec
