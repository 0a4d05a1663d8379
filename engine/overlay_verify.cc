#include "engine/overlay_verify.h"

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/base_check.h"
#include "engine/cancel.h"
#include "engine/frame_decoder.h"
#include "engine/op_validator.h"
#include "engine/overlay_reader.h"
#include "engine/stopwatch.h"

namespace vmsynth {

using format::BlockAddress;
using format::BlockOp;
using format::kBlockSize;
using format::OpKind;

namespace {

// What each produced launch block reads back as, for SELF_COPY checks (see
// the header). Only blocks whose read-back content is known are recorded.
class ReadBack {
 public:
  explicit ReadBack(const format::FileHeader& h) : launch_size_(h.launch_size) {}

  // An image's last block when the image is not a whole number of blocks:
  // only its bytes inside the image are written, the rest reads back as zeros.
  bool partial_tail(BlockAddress a) const {
    const uint64_t size = launch_size_[a.image];
    return size % kBlockSize != 0 && a.block == size / kBlockSize;
  }

  // Records the verified content of the op at `a`.
  void produced(BlockAddress a, const Hash128& hash, std::span<const std::byte> content) {
    if (!partial_tail(a)) {
      hashes_[key(a)] = hash;
      return;
    }
    std::array<std::byte, kBlockSize> b;
    std::copy(content.begin(), content.end(), b.begin());
    const size_t inside = launch_size_[a.image] % kBlockSize;
    std::fill(b.begin() + static_cast<std::ptrdiff_t>(inside), b.end(), std::byte{0});
    hashes_[key(a)] = hash128(b);
  }
  // Records a block whose content is known by hash only (a checked SELF_COPY).
  // Returns false for a partial tail block: its read-back is then unknown.
  bool produced_as_copy(BlockAddress a, const Hash128& hash) {
    if (partial_tail(a)) {
      copied_tail_[a.image] = true;
      return false;
    }
    hashes_[key(a)] = hash;
    return true;
  }
  const Hash128* find(BlockAddress a) const {
    auto it = hashes_.find(key(a));
    return it == hashes_.end() ? nullptr : &it->second;
  }
  bool copied_tail(BlockAddress a) const { return partial_tail(a) && copied_tail_[a.image]; }

 private:
  static uint64_t key(BlockAddress a) { return (uint64_t{a.image} << 63) | a.block; }

  std::array<uint64_t, kImageCount> launch_size_;
  std::unordered_map<uint64_t, Hash128> hashes_;
  std::array<bool, kImageCount> copied_tail_{};
};

std::string count(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

VerifyStats verify_overlay(io::ByteSource& src, const VerifyOptions& opts) {
  const Stopwatch total;
  VerifyStats st;
  // kHeadersOnly so that a missing key is reported here, saying what it is
  // needed for; a wrong key, or a key for an unencrypted overlay, is still
  // refused by the reader (kWrongKey).
  OverlayReader reader(src, opts.key, KeyUse::kHeadersOnly);
  const format::FileHeader& h = reader.header();
  st.header = h;
  if (h.encrypted() && !reader.keys()) {
    throw Error(ErrorCode::kWrongKey,
                "this overlay is encrypted: verifying it needs its key, since its op tables, payloads and trailer "
                "can only be checked once opened; give it with --key-file or --passphrase-file (without a key, "
                "'vmsynth overlay info' shows the unverified headers)");
  }

  std::optional<VmDir> base;
  std::unique_ptr<BaseBlockReader> base_blocks;
  if (!opts.base_dir.empty()) {
    base = VmDir{opts.base_dir};
    Stopwatch t;
    report(opts.progress, "checking base");
    st.base_id = check_base(*base, h, {opts.use_base_id_cache, opts.cache_dir});
    st.seconds_base_id = t.seconds();
    st.base_checked = true;
    base_blocks = std::make_unique<BaseBlockReader>(*base);
  }

  BlockFrameDecoder::Sources sources;
  if (base_blocks) sources.base = [&](BlockAddress a, std::span<std::byte> b) { base_blocks->read(a, b); };
  // No sources.launch: nothing is written to read back; SELF_COPY is checked
  // against ReadBack below.
  ReadBack readback(h);
  uint64_t copies_of_unchecked = 0, copies_of_copied_tail = 0;
  const BlockFrameDecoder::Emit check = [&](const BlockOp& op, std::span<const std::byte> content) {
    if (!content.empty()) {
      readback.produced(op.target, op.hash, content);
      ++st.blocks_checked;
      return;
    }
    if (op.kind == OpKind::kSelfCopy) {
      if (const Hash128* source = readback.find(op.source)) {
        // The same comparison synthesis makes, hash128(source as read back) == op.hash.
        if (*source != op.hash) throw_hash_mismatch(op);
        readback.produced_as_copy(op.target, op.hash);
        ++st.blocks_checked;
        return;
      }
      ++(readback.copied_tail(op.source) ? copies_of_copied_tail : copies_of_unchecked);
    }
    ++st.blocks_not_checked;
    ++st.not_checked_by_kind[static_cast<unsigned>(op.kind)];
  };

  OpValidator validator(h);
  codec::FrameCodec codec(reader.keys());
  BlockFrameDecoder decoder;
  RawFrame frame;
  while (reader.next(frame)) {
    try {
      throw_if_cancelled(opts.cancel);
      if (frame.header.type == format::FrameType::kFile) {
        ++st.file_frames;
        validator.check_file(codec.decode_file_table(frame.header, frame.table()).id);
        DecodedFile f = decode_file_frame(codec, frame.header, frame.table(), frame.payload(), base ? &*base : nullptr);
        ++(f.checked ? st.files_checked : st.files_not_checked);
      } else {
        ++st.block_frames;
        std::vector<BlockOp> ops = codec.decode_blocks_table(frame.header, frame.table());
        validator.check_blocks_frame(ops);
        decoder.decode(codec, frame.header, frame.payload(), ops, sources, check);
      }
    } catch (Error& e) {
      throw e.with(frame.where());
    }
    report(opts.progress, "verifying", reader.bytes_read(), opts.source_size);
  }
  st.frames = reader.frames_read();
  st.overlay_bytes = reader.bytes_read();
  // The reader opened the key check and the trailer, the codec every table
  // and payload; reaching here means each of their tags verified.
  st.authenticated = h.encrypted();

  std::vector<std::string> why;
  const auto& nc = st.not_checked_by_kind;
  const uint64_t delta = nc[static_cast<unsigned>(OpKind::kDelta)];
  const uint64_t literal = nc[static_cast<unsigned>(OpKind::kLiteral)];
  const uint64_t base_copy = nc[static_cast<unsigned>(OpKind::kBaseCopy)];
  if (delta + literal > 0) {
    // LITERAL blocks go unchecked only beside DELTA ones, in the same zstd
    // frame. Op kinds are named as in messages and `overlay info`.
    std::string in = delta > 0 ? count(delta, "delta block", "delta blocks") : "";
    if (literal > 0) in += (delta > 0 ? " and " : "") + count(literal, "literal block", "literal blocks");
    why.push_back(in + " in frames whose payload is compressed against base VM blocks");
  }
  if (base_copy > 0) why.push_back(count(base_copy, "base_copy block", "base_copy blocks") + " (base VM content)");
  if (st.files_not_checked > 0) {
    why.push_back(count(st.files_not_checked, "file", "files") + " encoded against the base VM's copy");
  }
  if (!why.empty()) {
    std::string r = "no base VM given: ";
    for (size_t i = 0; i < why.size(); ++i) r += (i ? ", " : "") + why[i];
    r += std::string(" need the base VM to be reconstructed (their stored payloads' checksums") +
         (h.encrypted() ? " and GCM tags" : "") + " were verified)";
    st.not_checked_reason = r;
  }
  if (copies_of_unchecked > 0) {
    if (!st.not_checked_reason.empty()) st.not_checked_reason += "; ";
    st.not_checked_reason +=
        count(copies_of_unchecked, "self_copy block copies", "self_copy blocks copy") + " a block that was not checked";
  }
  if (copies_of_copied_tail > 0) {
    if (!st.not_checked_reason.empty()) st.not_checked_reason += "; ";
    st.not_checked_reason += count(copies_of_copied_tail, "self_copy block copies", "self_copy blocks copy") +
                             " an image's partial last block that was itself a self_copy, whose content as "
                             "read back is not known without writing it";
  }
  st.seconds_total = total.seconds();
  return st;
}

}  // namespace vmsynth
