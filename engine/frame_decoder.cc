#include "engine/frame_decoder.h"

#include <cstring>
#include <string>

#include "common/error.h"

namespace vmsynth {

using format::BlockOp;
using format::kBlockSize;
using format::OpKind;

BaseBlockReader::BaseBlockReader(const VmDir& base) {
  for (ImageKind k : kImageKinds) images_[static_cast<unsigned>(k)] = io::File::open_read(base.image(k));
}

void BaseBlockReader::read(format::BlockAddress a, std::span<std::byte> out) const {
  size_t n = images_[a.image].pread_some(out.first(kBlockSize), a.block * kBlockSize);
  std::memset(out.data() + n, 0, kBlockSize - n);
}

void BlockFrameDecoder::decode(codec::FrameCodec& codec, const format::FrameHeader& h,
                               std::span<const std::byte> stored_payload, std::span<const BlockOp> ops,
                               const Sources& sources, const Emit& emit, std::vector<std::byte>& content) {
  // The payload is one zstd frame compressed against the base blocks at the
  // DELTA ops' targets; without them no block of it (LITERAL ones included,
  // which may match into the prefix too) can be decoded.
  const bool have_payload = sources.base || h.kind_count[static_cast<unsigned>(OpKind::kDelta)] == 0;
  // payload_raw is (DELTA + LITERAL ops) x 4096 (the frame header's check),
  // so the other ops' blocks fit behind it.
  content.resize(ops.size() * kBlockSize);
  if (have_payload) {
    prefix_.clear();
    for (const BlockOp& op : ops) {
      if (op.kind != OpKind::kDelta) continue;
      prefix_.resize(prefix_.size() + kBlockSize);
      sources.base(op.target, std::span(prefix_).last(kBlockSize));
    }
    codec.decode_payload(h, stored_payload, prefix_, std::span(content).first(h.payload_raw));
  } else {
    codec.check_payload(h, stored_payload);
  }
  const std::span<std::byte> payload = std::span(content).first(h.payload_raw);
  const std::span<std::byte> blocks = std::span(content).subspan(h.payload_raw);
  size_t payload_at = 0, blocks_at = 0;
  for (const BlockOp& op : ops) {
    const bool in_payload = op.kind == OpKind::kDelta || op.kind == OpKind::kLiteral;
    // Where a block that is not in the payload is put together.
    const std::span<std::byte> slot = in_payload ? std::span<std::byte>() : blocks.subspan(blocks_at, kBlockSize);
    std::span<const std::byte> block;
    switch (op.kind) {
      case OpKind::kZero:
        std::memset(slot.data(), 0, kBlockSize);
        block = slot;
        break;
      case OpKind::kBaseCopy:
        if (sources.base) {
          sources.base(op.source, slot);
          block = slot;
        }
        break;
      case OpKind::kSelfCopy:
        if (sources.launch) {
          sources.launch(op.source, slot);
          block = slot;
        }
        break;
      case OpKind::kDelta:
      case OpKind::kLiteral:
        if (have_payload) block = payload.subspan(payload_at, kBlockSize);
        payload_at += kBlockSize;
        break;
    }
    if (!slot.empty()) blocks_at += kBlockSize;
    if (!block.empty() && hash128(block) != op.hash) throw_hash_mismatch(op);
    emit(op, block);
  }
}

DecodedFile decode_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> table,
                              std::span<const std::byte> payload, const VmDir* base) {
  DecodedFile f;
  f.record = codec.decode_file_table(h, table);
  const std::string name(format::file_id_name(f.record.id));
  std::string prefix;
  if (f.record.encoding == format::FileEncoding::kZstdBasePrefix) {
    if (base == nullptr) {
      codec.check_payload(h, payload);
      return f;
    }
    std::string p = base->file(name);
    if (!io::path_exists(p)) {
      throw Error(ErrorCode::kWrongBase, "the overlay encodes " + name + " against the base VM's " + name + ", but '" +
                                             p + "' does not exist");
    }
    prefix = io::read_small_file(p, format::kMaxOpaqueFileSize);
    if (hash128(std::as_bytes(std::span(prefix))) != f.record.prefix_hash) {
      throw Error(ErrorCode::kWrongBase,
                  "the base VM's " + name + " ('" + p + "') is not the one the overlay was made against");
    }
  }
  f.content.resize(f.record.size);
  codec.decode_payload(h, payload, std::as_bytes(std::span(prefix)), f.content);
  if (hash128(f.content) != f.record.hash) throw_corrupt(name + " does not match its recorded hash");
  f.checked = true;
  return f;
}

void throw_hash_mismatch(const format::BlockOp& op) {
  throw_corrupt(std::string(format::op_kind_name(op.kind)) + " op for " +
                (op.target.image == image_index(ImageKind::kMemory) ? "memory" : "disk") + " block " +
                std::to_string(op.target.block) + " reconstructs content that does not match its recorded hash");
}

}  // namespace vmsynth
