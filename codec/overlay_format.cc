#include "codec/overlay_format.h"

#include <cstring>

#include "codec/byte_order.h"
#include "common/error.h"

namespace vmsynth::format {

using codec::ByteReader;
using codec::ByteWriter;

namespace {

constexpr size_t kFrameHeaderChecksumAt = kFrameHeaderSize - 8;

template <size_t N>
std::array<std::byte, N> finish_with_checksum(ByteWriter& w) {
  w.zeros(N - 8 - w.size());
  uint64_t sum = hash64(w.buffer());
  w.u64(sum);
  std::array<std::byte, N> out;
  std::memcpy(out.data(), w.buffer().data(), N);
  return out;
}

template <size_t N>
void verify_checksum(std::span<const std::byte, N> bytes, const char* what) {
  ByteReader r(bytes.subspan(N - 8), what);
  uint64_t stored = r.u64();
  if (stored != hash64(bytes.first(N - 8))) {
    throw_corrupt(std::string(what) + " checksum mismatch: the header is damaged");
  }
}

}  // namespace

// ---- File header -----------------------------------------------------------

std::array<std::byte, kFileHeaderSize> encode_file_header(const FileHeader& h) {
  ByteWriter w;
  w.bytes(std::as_bytes(std::span(kMagic)));
  w.u16(h.version_major);
  w.u16(h.version_minor);
  w.u32(kFileHeaderSize);
  w.u32(h.flags);
  w.u32(kBlockSize);
  w.bytes(h.base_id.bytes);
  for (uint64_t s : h.base_size) w.u64(s);
  for (uint64_t s : h.launch_size) w.u64(s);
  w.u32(h.max_frame_blocks);
  w.u8(static_cast<uint8_t>(h.cipher));
  w.u8(static_cast<uint8_t>(h.kdf));
  w.u8(h.kdf_log2_n);
  w.u8(h.kdf_r);
  w.u8(h.kdf_p);
  w.zeros(3);
  w.bytes(h.salt);
  w.bytes(h.nonce_prefix);
  w.bytes(h.key_check);
  return finish_with_checksum<kFileHeaderSize>(w);
}

FileHeader decode_file_header(std::span<const std::byte, kFileHeaderSize> bytes) {
  if (std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0) {
    throw_corrupt("not a vmsynth overlay: the file does not start with the overlay magic 'VMSYNOVL'");
  }
  ByteReader r(bytes, "overlay header");
  r.bytes(kMagic.size());
  FileHeader h;
  h.version_major = r.u16();
  h.version_minor = r.u16();
  // The version is checked before the checksum so that a future format, whose
  // header may be laid out differently, is reported as such and not as damage.
  if (h.version_major != kVersionMajor) {
    throw Error(ErrorCode::kUnsupported,
                "overlay format version " + std::to_string(h.version_major) + "." + std::to_string(h.version_minor) +
                    " is not supported (this vmsynth reads version " + std::to_string(kVersionMajor) +
                    ".x); use a vmsynth release that matches the one that created the overlay");
  }
  verify_checksum<kFileHeaderSize>(bytes, "overlay header");
  uint32_t header_size = r.u32();
  if (header_size != kFileHeaderSize) throw_corrupt("overlay header: size field is " + std::to_string(header_size));
  h.flags = r.u32();
  if (h.flags & ~kKnownFileFlags) {
    throw Error(ErrorCode::kUnsupported, "overlay header: unknown flags 0x" + std::to_string(h.flags));
  }
  uint32_t block_size = r.u32();
  if (block_size != kBlockSize) {
    throw Error(ErrorCode::kUnsupported, "overlay block size " + std::to_string(block_size) + " is not supported");
  }
  r.bytes_into(h.base_id.bytes);
  for (uint64_t& s : h.base_size) s = r.u64();
  for (uint64_t& s : h.launch_size) s = r.u64();
  for (unsigned i = 0; i < kImageCount; ++i) {
    // 2^50 bytes (1 PiB) keeps every block index and byte offset far from overflow.
    if (h.base_size[i] > (uint64_t{1} << 50) || h.launch_size[i] > (uint64_t{1} << 50)) {
      throw_corrupt("overlay header: image size beyond 1 PiB");
    }
  }
  h.max_frame_blocks = r.u32();
  if (h.max_frame_blocks > kMaxFrameBlocks) {
    throw_corrupt("overlay header: frames of " + std::to_string(h.max_frame_blocks) + " blocks exceed the limit of " +
                  std::to_string(kMaxFrameBlocks));
  }
  h.cipher = static_cast<Cipher>(r.u8());
  h.kdf = static_cast<Kdf>(r.u8());
  h.kdf_log2_n = r.u8();
  h.kdf_r = r.u8();
  h.kdf_p = r.u8();
  r.bytes(3);
  r.bytes_into(h.salt);
  r.bytes_into(h.nonce_prefix);
  r.bytes_into(h.key_check);
  const bool zero_params = h.kdf_log2_n == 0 && h.kdf_r == 0 && h.kdf_p == 0;
  const std::array<uint8_t, 32> no_salt{};
  if (h.nonce_prefix != std::array<uint8_t, 12>{}) {
    throw Error(ErrorCode::kUnsupported, "overlay header: the reserved nonce prefix is not zero");
  }
  if (h.encrypted()) {
    if (h.cipher != Cipher::kAes256Gcm) {
      throw Error(ErrorCode::kUnsupported,
                  "overlay header: unknown cipher " + std::to_string(static_cast<unsigned>(h.cipher)));
    }
    if (h.kdf == Kdf::kRawKey) {
      if (!zero_params) throw_corrupt("overlay header: scrypt parameters set for a raw-key overlay");
    } else if (h.kdf != Kdf::kScrypt) {
      throw Error(ErrorCode::kUnsupported,
                  "overlay header: unknown key derivation " + std::to_string(static_cast<unsigned>(h.kdf)));
    }
    // The scrypt parameters' range is checked where they are used
    // (codec/crypto.cc), so `overlay info` can still show them.
  } else if (h.cipher != Cipher::kNone || h.kdf != Kdf::kNone || !zero_params || h.salt != no_salt ||
             h.key_check != std::array<uint8_t, 16>{}) {
    throw_corrupt("overlay header: encryption fields are set but the overlay is not marked encrypted");
  }
  return h;
}

// ---- Frame header ----------------------------------------------------------

std::string_view op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kZero: return "zero";
    case OpKind::kBaseCopy: return "base_copy";
    case OpKind::kSelfCopy: return "self_copy";
    case OpKind::kDelta: return "delta";
    case OpKind::kLiteral: return "literal";
  }
  return "unknown";
}

std::array<std::byte, kFrameHeaderSize> encode_frame_header(const FrameHeader& h) {
  ByteWriter w;
  w.bytes(std::as_bytes(std::span(kFrameMagic)));
  w.u16(static_cast<uint16_t>(h.type));
  w.u16(h.flags);
  w.u64(h.index);
  w.u32(h.table_stored);
  w.u32(h.table_raw);
  w.u32(h.payload_stored);
  w.u32(h.payload_raw);
  w.u32(h.op_count);
  for (uint32_t c : h.kind_count) w.u32(c);
  w.u64(h.table_checksum);
  w.u64(h.payload_checksum);
  w.bytes(h.auth_tag);
  return finish_with_checksum<kFrameHeaderSize>(w);
}

uint64_t frame_header_checksum(std::span<const std::byte, kFrameHeaderSize> bytes) {
  ByteReader r(bytes.subspan(kFrameHeaderChecksumAt), "frame header");
  return r.u64();
}

FrameHeader decode_frame_header(std::span<const std::byte, kFrameHeaderSize> bytes) {
  if (std::memcmp(bytes.data(), kFrameMagic.data(), kFrameMagic.size()) != 0) {
    throw_corrupt("frame header does not start with the frame magic 'VSFR'");
  }
  verify_checksum<kFrameHeaderSize>(bytes, "frame header");
  ByteReader r(bytes, "frame header");
  r.bytes(kFrameMagic.size());
  FrameHeader h;
  uint16_t type = r.u16();
  if (type < 1 || type > 3) throw_corrupt("frame header: unknown frame type " + std::to_string(type));
  h.type = static_cast<FrameType>(type);
  h.flags = r.u16();
  if (h.flags & ~kKnownFrameFlags) {
    throw Error(ErrorCode::kUnsupported, "frame header: unknown flags " + std::to_string(h.flags));
  }
  h.index = r.u64();
  h.table_stored = r.u32();
  h.table_raw = r.u32();
  h.payload_stored = r.u32();
  h.payload_raw = r.u32();
  h.op_count = r.u32();
  uint64_t kinds = 0;
  for (uint32_t& c : h.kind_count) {
    c = r.u32();
    kinds += c;
  }
  h.table_checksum = r.u64();
  h.payload_checksum = r.u64();
  r.bytes_into(h.auth_tag);
  if (!h.sealed() && h.auth_tag != std::array<uint8_t, 16>{}) {
    throw_corrupt("frame header: authentication tag set on a frame that is not sealed");
  }

  auto limit = [](uint64_t value, uint64_t max, const char* field) {
    if (value > max) {
      throw_corrupt(std::string("frame header: ") + field + " is " + std::to_string(value) + ", more than the limit " +
                    std::to_string(max));
    }
  };
  // Stored sizes are bounded by what the encoder can produce from the raw
  // sizes (themselves bounded below), so no header makes a reader allocate
  // more than about 4 MiB per blocks frame or 64 MiB per file frame.
  const uint64_t tag = h.sealed() ? kSealTagSize : 0;
  auto payload_bounds = [&](const char* what) {
    if ((h.payload_raw == 0) != (h.payload_stored == 0)) {
      throw_corrupt(std::string("frame header: ") + what + " is empty in one size field but not the other");
    }
    if (h.payload_raw != 0) {
      limit(h.payload_stored, zstd_bound(h.payload_raw) + tag, "stored payload size");
      if (h.payload_stored <= tag) throw_corrupt("frame header: sealed payload shorter than its tag");
    }
  };
  switch (h.type) {
    case FrameType::kBlocks: {
      limit(h.op_count, kMaxFrameBlocks, "op count");
      limit(h.table_raw, kMaxTableRaw, "table size");
      if (h.op_count == 0) throw_corrupt("frame header: blocks frame with no ops");
      if (kinds != h.op_count) throw_corrupt("frame header: op kind counts do not add up to the op count");
      if (h.table_raw == 0 || h.table_stored == 0) throw_corrupt("frame header: blocks frame without an op table");
      limit(h.table_stored, zstd_bound(h.table_raw), "stored table size");
      uint64_t payload_blocks = uint64_t{h.kind_count[static_cast<unsigned>(OpKind::kDelta)]} +
                                h.kind_count[static_cast<unsigned>(OpKind::kLiteral)];
      if (uint64_t{h.payload_raw} != payload_blocks * kBlockSize) {
        throw_corrupt("frame header: payload size does not match its delta and literal op counts");
      }
      payload_bounds("payload");
      break;
    }
    case FrameType::kFile:
      if (h.op_count != 1 || kinds != 0) throw_corrupt("frame header: file frame must carry exactly one file");
      if (h.table_raw != kFileRecordSize || h.table_stored != kFileRecordSize) {
        throw_corrupt("frame header: file record size mismatch");
      }
      limit(h.payload_raw, kMaxOpaqueFileSize, "file size");
      payload_bounds("file payload");
      break;
    case FrameType::kEnd:
      if (h.op_count != 0 || kinds != 0 || h.table_stored != 0 || h.table_raw != 0) {
        throw_corrupt("frame header: end frame carries ops");
      }
      if (h.payload_raw != kTrailerSize || h.payload_stored != kTrailerSize + tag) {
        throw_corrupt("frame header: end frame trailer size mismatch");
      }
      break;
  }
  return h;
}

// ---- Op table --------------------------------------------------------------

namespace {
constexpr uint8_t kKindMask = 0x07;
constexpr uint8_t kTargetImageBit = 0x08;
constexpr uint8_t kSourceImageBit = 0x10;

bool has_source(OpKind k) { return k == OpKind::kBaseCopy || k == OpKind::kSelfCopy; }
}  // namespace

std::vector<std::byte> encode_op_table(std::span<const BlockOp> ops) {
  ByteWriter w;
  BlockAddress prev{0, 0};
  bool first = true;
  for (const BlockOp& op : ops) {
    uint8_t d = static_cast<uint8_t>(op.kind);
    if (op.target.image) d |= kTargetImageBit;
    if (has_source(op.kind) && op.source.image) d |= kSourceImageBit;
    w.u8(d);
    uint64_t expected = (!first && prev.image == op.target.image) ? prev.block + 1 : 0;
    w.varint(codec::zigzag(static_cast<int64_t>(op.target.block - expected)));
    if (has_source(op.kind)) w.varint(codec::zigzag(static_cast<int64_t>(op.source.block - op.target.block)));
    prev = op.target;
    first = false;
  }
  for (const BlockOp& op : ops) w.bytes(op.hash.bytes);
  return w.take();
}

std::vector<BlockOp> decode_op_table(std::span<const std::byte> raw, uint32_t op_count) {
  ByteReader r(raw, "op table");
  std::vector<BlockOp> ops(op_count);
  BlockAddress prev{0, 0};
  for (uint32_t i = 0; i < op_count; ++i) {
    BlockOp& op = ops[i];
    uint8_t d = r.u8();
    if (d & ~(kKindMask | kTargetImageBit | kSourceImageBit)) {
      throw_corrupt("op table: op " + std::to_string(i) + " has unknown descriptor bits");
    }
    uint8_t kind = d & kKindMask;
    if (kind >= kOpKindCount) throw_corrupt("op table: op " + std::to_string(i) + " has unknown kind " + std::to_string(kind));
    op.kind = static_cast<OpKind>(kind);
    op.target.image = (d & kTargetImageBit) ? 1 : 0;
    uint64_t expected = (i > 0 && prev.image == op.target.image) ? prev.block + 1 : 0;
    op.target.block = expected + static_cast<uint64_t>(codec::unzigzag(r.varint()));
    if (has_source(op.kind)) {
      op.source.image = (d & kSourceImageBit) ? 1 : 0;
      op.source.block = op.target.block + static_cast<uint64_t>(codec::unzigzag(r.varint()));
    } else if (d & kSourceImageBit) {
      throw_corrupt("op table: op " + std::to_string(i) + " has a source but its kind takes none");
    }
    prev = op.target;
  }
  for (uint32_t i = 0; i < op_count; ++i) r.bytes_into(ops[i].hash.bytes);
  if (r.remaining() != 0) {
    throw_corrupt("op table: " + std::to_string(r.remaining()) + " bytes left over after " + std::to_string(op_count) +
                  " ops");
  }
  return ops;
}

// ---- Opaque files ----------------------------------------------------------

std::string_view file_id_name(FileId id) {
  switch (id) {
    case FileId::kDevState: return "devstate.bin";
    case FileId::kVmJson: return "vm.json";
  }
  return "unknown";
}

std::vector<std::byte> encode_file_record(const FileRecord& rec) {
  ByteWriter w;
  w.u8(static_cast<uint8_t>(rec.id));
  w.u8(static_cast<uint8_t>(rec.encoding));
  w.u64(rec.size);
  w.bytes(rec.hash.bytes);
  w.bytes(rec.prefix_hash.bytes);
  return w.take();
}

FileRecord decode_file_record(std::span<const std::byte> raw) {
  ByteReader r(raw, "file record");
  FileRecord rec;
  uint8_t id = r.u8();
  if (id >= kFileIdCount) throw_corrupt("file record: unknown file id " + std::to_string(id));
  rec.id = static_cast<FileId>(id);
  uint8_t enc = r.u8();
  if (enc > 1) throw_corrupt("file record: unknown encoding " + std::to_string(enc));
  rec.encoding = static_cast<FileEncoding>(enc);
  rec.size = r.u64();
  if (rec.size > kMaxOpaqueFileSize) throw_corrupt("file record: file larger than the 64 MiB limit");
  r.bytes_into(rec.hash.bytes);
  r.bytes_into(rec.prefix_hash.bytes);
  if (r.remaining() != 0) throw_corrupt("file record: trailing bytes");
  return rec;
}

// ---- Trailer ---------------------------------------------------------------

std::vector<std::byte> encode_trailer(const Trailer& t) {
  ByteWriter w;
  w.u64(t.frame_count);
  for (uint64_t c : t.kind_count) w.u64(c);
  w.bytes(t.frame_chain.bytes);
  return w.take();
}

Trailer decode_trailer(std::span<const std::byte> raw) {
  ByteReader r(raw, "trailer");
  Trailer t;
  t.frame_count = r.u64();
  for (uint64_t& c : t.kind_count) c = r.u64();
  r.bytes_into(t.frame_chain.bytes);
  if (r.remaining() != 0) throw_corrupt("trailer: trailing bytes");
  return t;
}

}  // namespace vmsynth::format
