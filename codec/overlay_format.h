// Overlay format v1: every on-disk constant and record layout, in one place.
//
// The specification is docs/overlay-format.md; this header and that document
// change together. An overlay is a stream, read front to back without seeking:
//
//   FileHeader (256 bytes)
//   Frame*     each: FrameHeader (96 bytes) + stored op table + stored payload
//   end frame  a FrameHeader of type kEnd + the Trailer as its payload
//
// This header only describes bytes: encode_* write little-endian records and
// decode_* parse and validate them, throwing vmsynth::Error (kCorrupt,
// kUnsupported) with the field that is wrong. No I/O, no threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/block_hash.h"
#include "common/image_kind.h"

namespace vmsynth::format {

// ---- File header -----------------------------------------------------------

inline constexpr std::array<char, 8> kMagic = {'V', 'M', 'S', 'Y', 'N', 'O', 'V', 'L'};
inline constexpr uint16_t kVersionMajor = 1;  // incompatible changes
inline constexpr uint16_t kVersionMinor = 1;  // compatible additions (1.1: encryption defined)
inline constexpr size_t kFileHeaderSize = 256;
inline constexpr uint32_t kBlockSize = 4096;  // bytes per block, memory and disk

// Header flags.
inline constexpr uint32_t kFlagEncrypted = 1u << 0;  // every frame is AES-256-GCM sealed (codec/crypto.h)
inline constexpr uint32_t kKnownFileFlags = kFlagEncrypted;

// Images are numbered as ImageKind (common/image_kind.h): memory 0, disk 1.

// Cipher and key-derivation identifiers of an encrypted overlay (both 0 when
// it is not encrypted). See docs/overlay-format.md, "Encryption".
enum class Cipher : uint8_t { kNone = 0, kAes256Gcm = 1 };
enum class Kdf : uint8_t { kNone = 0, kRawKey = 1, kScrypt = 2 };

struct FileHeader {
  uint16_t version_major = kVersionMajor;
  uint16_t version_minor = kVersionMinor;
  uint32_t flags = 0;
  Hash128 base_id{};
  std::array<uint64_t, kImageCount> base_size{};    // bytes, memory then disk
  std::array<uint64_t, kImageCount> launch_size{};  // bytes, memory then disk
  uint32_t max_frame_blocks = 0;  // the largest op count any frame of this overlay has
  Cipher cipher = Cipher::kNone;
  Kdf kdf = Kdf::kNone;
  uint8_t kdf_log2_n = 0;  // scrypt cost parameters (kdf == kScrypt), else 0
  uint8_t kdf_r = 0;
  uint8_t kdf_p = 0;
  std::array<uint8_t, 32> salt{};          // random per encrypted overlay: KDF and HKDF salt; else 0
  std::array<uint8_t, 12> nonce_prefix{};  // reserved, zero (nonces are built from the frame index)
  std::array<uint8_t, 16> key_check{};     // GCM tag over the header (this field zeroed); else 0

  bool encrypted() const { return (flags & kFlagEncrypted) != 0; }
};

std::array<std::byte, kFileHeaderSize> encode_file_header(const FileHeader& h);
// Validates magic, version, checksum, block size and limits.
FileHeader decode_file_header(std::span<const std::byte, kFileHeaderSize> bytes);

// Blocks in an image of `bytes` bytes: the last partial block counts, padded with zeros.
constexpr uint64_t blocks_in(uint64_t bytes) { return (bytes + kBlockSize - 1) / kBlockSize; }

// ---- Frames ----------------------------------------------------------------

inline constexpr std::array<char, 4> kFrameMagic = {'V', 'S', 'F', 'R'};
inline constexpr size_t kFrameHeaderSize = 96;

enum class FrameType : uint16_t { kBlocks = 1, kFile = 2, kEnd = 3 };

// Frame header flags.
inline constexpr uint16_t kFrameFlagSealed = 1u << 0;  // table and payload are AES-256-GCM sealed
inline constexpr uint16_t kKnownFrameFlags = kFrameFlagSealed;
inline constexpr uint32_t kSealTagSize = 16;  // GCM tag appended to a sealed frame's non-empty payload

// Limits that bound what a decoder allocates, whatever a header claims.
inline constexpr uint32_t kMaxFrameBlocks = 1024;                           // ops per blocks frame
inline constexpr uint32_t kMaxBlocksPayload = kMaxFrameBlocks * kBlockSize;  // 4 MiB
inline constexpr uint32_t kMaxTableRaw = kMaxFrameBlocks * 40;               // > worst-case op encoding
inline constexpr uint32_t kMaxOpaqueFileSize = 64u << 20;                    // 64 MiB
// The most bytes zstd may need to store `raw` bytes (ZSTD_COMPRESSBOUND,
// checked against zstd in frame_codec.cc). A stored part larger than the
// bound of its raw size cannot come from the encoder and is refused before
// anything is allocated for it.
constexpr uint64_t zstd_bound(uint64_t raw) {
  return raw + (raw >> 8) + (raw < (128u << 10) ? ((128u << 10) - raw) >> 11 : 0);
}
// zstd window bound used by encoder and decoder: prefix (<= 4 MiB) + content (<= 4 MiB).
inline constexpr int kZstdWindowLog = 23;

enum class OpKind : uint8_t {
  kZero = 0,      // block is all zeros
  kBaseCopy = 1,  // block equals the base block (image, index)
  kSelfCopy = 2,  // block equals a launch block produced by an op of an earlier frame
  kDelta = 3,     // block is in the payload, compressed with the base block at the same address as prefix
  kLiteral = 4,   // block is in the payload
};
inline constexpr unsigned kOpKindCount = 5;
std::string_view op_kind_name(OpKind k);

struct BlockAddress {
  uint8_t image = 0;   // image_index(ImageKind): 0 memory, 1 disk
  uint64_t block = 0;  // block index within the image
  friend bool operator==(const BlockAddress&, const BlockAddress&) = default;
};

struct BlockOp {
  OpKind kind = OpKind::kZero;
  BlockAddress target;
  BlockAddress source;  // kBaseCopy: base block; kSelfCopy: launch block; otherwise unused
  Hash128 hash{};       // XXH3-128 of the reconstructed 4096-byte block
};

struct FrameHeader {
  FrameType type = FrameType::kBlocks;
  uint16_t flags = 0;        // kFrameFlagSealed in encrypted overlays, else 0
  uint64_t index = 0;        // 0, 1, 2, ... in stream order; the end frame has the next index
  uint32_t table_stored = 0; // bytes of the op table as stored (zstd)
  uint32_t table_raw = 0;    // bytes of the op table once decompressed
  uint32_t payload_stored = 0;
  uint32_t payload_raw = 0;
  uint32_t op_count = 0;     // blocks frames: ops; file frames: 1; end frame: 0
  std::array<uint32_t, kOpKindCount> kind_count{};  // ops per OpKind (blocks frames)
  uint64_t table_checksum = 0;    // XXH3-64 of the stored table
  uint64_t payload_checksum = 0;  // XXH3-64 of the stored payload
  std::array<uint8_t, 16> auth_tag{};  // sealed: GCM tag of the table message; else zero

  bool sealed() const { return (flags & kFrameFlagSealed) != 0; }

  uint64_t body_size() const { return uint64_t{table_stored} + payload_stored; }
};

std::array<std::byte, kFrameHeaderSize> encode_frame_header(const FrameHeader& h);
// Validates magic, checksum, type, and every size against the limits above.
FrameHeader decode_frame_header(std::span<const std::byte, kFrameHeaderSize> bytes);
// Bytes of an encoded frame header that a sealed frame authenticates (its
// AAD): everything before the two checksums, tag and header checksum.
inline constexpr size_t kFrameAadSize = 56;
// XXH3-64 checksum field of an encoded frame header (the last 8 bytes).
uint64_t frame_header_checksum(std::span<const std::byte, kFrameHeaderSize> bytes);

// Op table of a blocks frame (before compression). Columnar: all descriptors,
// then all 16-byte hashes. Validates op kinds and that it consumes exactly `raw`.
std::vector<std::byte> encode_op_table(std::span<const BlockOp> ops);
std::vector<BlockOp> decode_op_table(std::span<const std::byte> raw, uint32_t op_count);

// ---- Opaque files ----------------------------------------------------------

// The file frames' table: which file, how it is encoded, what it must hash to.
enum class FileId : uint8_t { kDevState = 0, kVmJson = 1 };
inline constexpr unsigned kFileIdCount = 2;
std::string_view file_id_name(FileId id);  // "devstate.bin", "vm.json"

enum class FileEncoding : uint8_t {
  kZstd = 0,           // payload is zstd of the content
  kZstdBasePrefix = 1, // payload is zstd with the base VM's file of the same name as prefix
};

struct FileRecord {
  FileId id = FileId::kDevState;
  FileEncoding encoding = FileEncoding::kZstd;
  uint64_t size = 0;        // bytes of the content
  Hash128 hash{};           // XXH3-128 of the content
  Hash128 prefix_hash{};    // kZstdBasePrefix: XXH3-128 of the base file used as prefix
};
inline constexpr size_t kFileRecordSize = 1 + 1 + 8 + 16 + 16;
std::vector<std::byte> encode_file_record(const FileRecord& r);
FileRecord decode_file_record(std::span<const std::byte> raw);

// ---- End frame -------------------------------------------------------------

// The end frame's payload (stored raw): totals that let a reader tell a
// complete overlay from one cut at a frame boundary.
struct Trailer {
  uint64_t frame_count = 0;                     // frames before the end frame
  std::array<uint64_t, kOpKindCount> kind_count{};
  Hash128 frame_chain{};  // XXH3-128 over the checksums of every frame header, in order
};
inline constexpr size_t kTrailerSize = 8 + 8 * kOpKindCount + 16;
std::vector<std::byte> encode_trailer(const Trailer& t);
Trailer decode_trailer(std::span<const std::byte> raw);

}  // namespace vmsynth::format
