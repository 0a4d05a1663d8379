// engine/overlay_verify.h: verify_overlay checks what synthesis checks and
// says what it could not check.
//
// - A clean overlay is intact with and without the base; without it, the
//   blocks that need the base are counted, not checked, and say why.
// - Every byte of a small overlay (plain and encrypted), flipped one at a
//   time, is reported with the exact error code and the frame it is in, with
//   and without --base.
// - Hand-made overlays whose checksums are all correct but whose content or
//   ops are wrong (what `overlay info` cannot see) are refused exactly when
//   the serial synthesizer refuses them.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/base_id.h"
#include "engine/overlay_info.h"
#include "engine/overlay_verify.h"
#include "synthesis_test_util.h"

namespace vmsynth {
namespace {

using format::BlockOp;
using format::kBlockSize;
using format::OpKind;
using Bytes = std::vector<std::byte>;

codec::KeySpec test_key(uint8_t seed) {
  std::array<std::byte, codec::kKeyBytes> k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::byte>(seed + 31 * i);
  return codec::raw_key(k);
}

std::string block_of(uint64_t seed, bool text) {
  return text ? testutil::text_bytes(kBlockSize, seed) : testutil::random_bytes(kBlockSize, seed);
}

// Memory ends 1000 bytes into block 16: the launch memory's last block is partial.
constexpr uint64_t kMemoryBytes = 16 * kBlockSize + 1000;
constexpr uint64_t kDiskBytes = 24 * kBlockSize;

class Verify : public ::testing::Test {
 protected:
  void SetUp() override {
    testutil::VmContent b;
    for (uint64_t i = 0; i < 16; ++i) b.memory += block_of(100 + i, false);
    b.memory += testutil::random_bytes(1000, 116);
    for (uint64_t i = 0; i < 24; ++i) b.disk += block_of(200 + i, false);
    b.devstate = testutil::text_bytes(20000, 7);
    b.vm_json = "{\"memory_mib\": 1}";
    testutil::VmContent l = b;
    auto put = [](std::string& img, uint64_t block, const std::string& content) {
      img.replace(block * kBlockSize, kBlockSize, content);
    };
    put(l.memory, 1, std::string(kBlockSize, '\0'));              // ZERO
    put(l.memory, 2, b.disk.substr(5 * kBlockSize, kBlockSize));  // BASE_COPY
    put(l.memory, 3, block_of(300, true));                        // LITERAL
    put(l.memory, 4, block_of(301, true));                        // LITERAL
    put(l.disk, 20, block_of(300, true));                         // SELF_COPY of memory block 3
    l.disk[9 * kBlockSize + 77] ^= 0x40;                          // DELTA
    l.memory[16 * kBlockSize + 10] ^= 0x01;                       // the partial last block
    l.disk += block_of(302, true);                                // grown disk: LITERAL
    l.devstate[500] = 'X';                                        // encoded against the base's copy
    l.vm_json = "{\"memory_mib\": 2}";
    testutil::write_vm(base_, b);
    testutil::write_vm(launch_, l);
  }

  Bytes make(const codec::KeySpec& key = {}) {
    CreateOptions c;
    c.base_dir = base_;
    c.launch_dir = launch_;
    c.output = dir_.sub(key.present() ? "sealed.vmo" : "plain.vmo");
    c.level = 3;
    c.force = true;
    c.require_page_aligned_memory = false;  // the partial last memory block is part of what is verified
    c.key = key;
    c.threads = testutil::kThreadSanitizer ? 1 : 0;
    create_overlay(c);
    return testutil::read_bytes(c.output);
  }

  VerifyStats verify(Bytes overlay, const codec::KeySpec& key = {}, bool with_base = false,
                     const std::string& base = "") {
    VerifyOptions o;
    o.key = key;
    if (with_base) o.base_dir = base.empty() ? base_ : base;
    o.use_base_id_cache = false;  // tests must not leave cache files behind
    auto src = io::memory_source(std::move(overlay), 1 << 12);
    return verify_overlay(*src, o);
  }

  // The error verify reports, or nullopt when the overlay is intact.
  std::optional<Error> error_of(Bytes overlay, const codec::KeySpec& key = {}, bool with_base = false) {
    try {
      verify(std::move(overlay), key, with_base);
    } catch (const Error& e) {
      return e;
    }
    return std::nullopt;
  }

  // The serial synthesizer's verdict on the same overlay (nullopt: success).
  std::optional<ErrorCode> synthesis_error(Bytes overlay) {
    SynthesizeOptions o = testutil::synth_options(base_, dir_.sub("out"), EngineKind::kSerial);
    try {
      testutil::synthesize_bytes(std::move(overlay), o);
    } catch (const Error& e) {
      return e.code();
    }
    std::filesystem::remove_all(dir_.sub("out"));
    return std::nullopt;
  }

  testutil::TempDir dir_{"vmsynth-verify"};
  std::string base_ = dir_.sub("base"), launch_ = dir_.sub("launch");
};

uint64_t total(const std::array<uint64_t, format::kOpKindCount>& a) {
  uint64_t n = 0;
  for (uint64_t v : a) n += v;
  return n;
}

TEST_F(Verify, CleanOverlayIsIntactAndSaysWhatNeedsTheBase) {
  for (bool encrypted : {false, true}) {
    SCOPED_TRACE(encrypted ? "encrypted" : "plain");
    const codec::KeySpec key = encrypted ? test_key(1) : codec::KeySpec{};
    const Bytes good = make(key);
    OverlayInfo info = inspect_overlay(*io::memory_source(good), key);
    const uint64_t ops = total(info.kind_count);
    ASSERT_GT(info.kind_count[static_cast<unsigned>(OpKind::kDelta)], 0u);
    ASSERT_GT(info.kind_count[static_cast<unsigned>(OpKind::kBaseCopy)], 0u);
    ASSERT_GT(info.kind_count[static_cast<unsigned>(OpKind::kSelfCopy)], 0u);

    VerifyStats with = verify(good, key, true);
    EXPECT_TRUE(with.base_checked);
    EXPECT_EQ(with.base_id, with.header.base_id);
    EXPECT_EQ(with.blocks_checked, ops);
    EXPECT_EQ(with.blocks_not_checked, 0u);
    EXPECT_EQ(with.files_checked, 2u);
    EXPECT_EQ(with.files_not_checked, 0u);
    EXPECT_TRUE(with.everything_checked());
    EXPECT_EQ(with.not_checked_reason, "");
    EXPECT_EQ(with.frames, info.frames);
    EXPECT_EQ(with.overlay_bytes, good.size());
    EXPECT_EQ(with.authenticated, encrypted);

    VerifyStats without = verify(good, key);
    EXPECT_FALSE(without.base_checked);
    EXPECT_EQ(without.blocks_checked + without.blocks_not_checked, ops);
    // Everything but the ZERO blocks comes from the base here: the payload
    // frame has DELTA ops, the copy copies a block of it.
    EXPECT_EQ(without.blocks_checked, info.kind_count[static_cast<unsigned>(OpKind::kZero)]);
    EXPECT_EQ(without.not_checked_by_kind[static_cast<unsigned>(OpKind::kBaseCopy)],
              info.kind_count[static_cast<unsigned>(OpKind::kBaseCopy)]);
    EXPECT_EQ(without.not_checked_by_kind[static_cast<unsigned>(OpKind::kDelta)],
              info.kind_count[static_cast<unsigned>(OpKind::kDelta)]);
    uint64_t base_delta_files = 0;
    for (const auto& f : info.files) base_delta_files += f.base_prefix;
    ASSERT_GT(base_delta_files, 0u);
    EXPECT_EQ(without.files_not_checked, base_delta_files);
    EXPECT_EQ(without.files_checked, info.files.size() - base_delta_files);
    EXPECT_FALSE(without.everything_checked());
    for (const char* needle : {"no base VM given", "delta block", "base_copy block", "self_copy block", "file"}) {
      EXPECT_NE(without.not_checked_reason.find(needle), std::string::npos) << without.not_checked_reason;
    }
    EXPECT_EQ(without.not_checked_reason.find("GCM") != std::string::npos, encrypted) << without.not_checked_reason;
    EXPECT_EQ(without.authenticated, encrypted);
  }
}

TEST_F(Verify, KeyAndBaseProblemsAreThoseOfSynthesis) {
  const Bytes sealed = make(test_key(2));
  auto none = error_of(sealed);
  ASSERT_TRUE(none);
  EXPECT_EQ(none->code(), ErrorCode::kWrongKey);
  EXPECT_NE(std::string(none->what()).find("verifying it needs its key"), std::string::npos) << none->what();
  EXPECT_NE(std::string(none->what()).find("--key-file"), std::string::npos) << none->what();
  EXPECT_EQ(error_of(sealed, test_key(3))->code(), ErrorCode::kWrongKey);
  const Bytes plain = make();
  EXPECT_EQ(error_of(plain, test_key(2))->code(), ErrorCode::kWrongKey);  // a key for an unencrypted overlay

  // Another base of the same sizes: the content id differs.
  testutil::VmContent other{testutil::read_file(base_ + "/memory.img"), testutil::read_file(base_ + "/disk.img"),
                            testutil::read_file(base_ + "/devstate.bin"), testutil::read_file(base_ + "/vm.json")};
  other.disk[123] ^= 1;
  testutil::write_vm(dir_.sub("other"), other);
  try {
    verify(plain, {}, true, dir_.sub("other"));
    ADD_FAILURE() << "a wrong base was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kWrongBase) << e.what();
  }
  // The right images but another devstate.bin, which the overlay's is encoded against.
  std::filesystem::copy(base_, dir_.sub("otherfile"));
  testutil::write_file(dir_.sub("otherfile") + "/devstate.bin", "not the base's device state");
  try {
    verify(plain, {}, true, dir_.sub("otherfile"));
    ADD_FAILURE() << "a base with another devstate.bin was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kWrongBase) << e.what();
    EXPECT_NE(std::string(e.what()).find("devstate.bin"), std::string::npos) << e.what();
  }
}

// Byte ranges of the frames of an overlay (end frame included), in order.
struct FrameSpan {
  size_t at, size;
};
std::vector<FrameSpan> frames_of(const Bytes& o) {
  std::vector<FrameSpan> out;
  size_t at = format::kFileHeaderSize;
  while (at < o.size()) {
    auto h = format::decode_frame_header(std::span(o).subspan(at).first<format::kFrameHeaderSize>());
    out.push_back({at, format::kFrameHeaderSize + h.body_size()});
    at += out.back().size;
  }
  return out;
}

class VerifyDamage : public Verify, public ::testing::WithParamInterface<bool> {};

// Which code each flipped byte must give, worked out from the format:
// - bytes 8-9 (major version) are checked before the header checksum, so that
//   a future format is reported as such: kUnsupported;
// - every other header byte is covered by the header checksum (bytes 248-255
//   hold it), verified before any field is used, so kCorrupt. The base id and
//   sizes (24-55) are among them: a flip there never reaches the base check,
//   so even with --base it is kCorrupt, never kWrongBase;
// - every frame byte is covered by its frame header checksum or by the
//   checksum of its stored table or payload, verified before anything is
//   decoded, so kCorrupt naming that frame and its byte offset.
// Encrypted: the same. The XXH3 checksums are verified before the GCM tags,
// and the key check (whose failure is kWrongKey) is only computed over a
// header whose checksum passed, which a single flip never leaves. So no flip
// gives kWrongKey; that code is for a wrong or missing key (tested above).
// No flip may leave the overlay intact.
TEST_P(VerifyDamage, EveryFlippedByteIsReportedWithItsCodeAndFrame) {
  const bool encrypted = GetParam();
  const codec::KeySpec key = encrypted ? test_key(4) : codec::KeySpec{};
  const Bytes good = make(key);
  ASSERT_LT(good.size(), 16u << 10) << "the sample overlay grew; the exhaustive test would be slow";
  ASSERT_NO_THROW(verify(good, key, true));
  const std::vector<FrameSpan> frames = frames_of(good);
  size_t frame = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    while (i >= format::kFileHeaderSize && i >= frames[frame].at + frames[frame].size) ++frame;
    const std::string where = i < format::kFileHeaderSize
                                  ? "overlay header at byte 0"
                                  : "frame " + std::to_string(frame) + " at byte " + std::to_string(frames[frame].at);
    const ErrorCode expected = i == 8 || i == 9 ? ErrorCode::kUnsupported : ErrorCode::kCorrupt;
    Bytes bad = good;
    bad[i] ^= static_cast<std::byte>(1u << (i % 8));
    for (bool with_base : {false, true}) {
      auto e = error_of(bad, key, with_base);
      if (!e) {
        ADD_FAILURE() << "byte " << i << (with_base ? " (with base)" : "") << ": a flipped overlay verified";
        continue;
      }
      EXPECT_EQ(e->code(), expected) << "byte " << i << ": " << e->what();
      EXPECT_NE(std::string(e->what()).find(where), std::string::npos) << "byte " << i << ": " << e->what();
    }
  }
  RecordProperty("overlay_bytes", static_cast<int>(good.size()));
}

INSTANTIATE_TEST_SUITE_P(Overlay, VerifyDamage, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? std::string("Encrypted") : std::string("Plain"); });

// ---- Hand-made overlays: every checksum right, something else wrong ----------

// Writes overlays for the fixture's base frame by frame (plain), with correct
// checksums, chain and trailer.
class Builder {
 public:
  explicit Builder(const std::string& base_dir) {
    h_.base_id = compute_base_id(VmDir{base_dir}, BaseIdOptions{.use_cache = false, .cache_dir = {}});
    h_.base_size = {kMemoryBytes, kDiskBytes};
    h_.launch_size = {kMemoryBytes, kDiskBytes};
    h_.max_frame_blocks = 16;
    auto head = format::encode_file_header(h_);
    out_.assign(head.begin(), head.end());
  }
  Builder& blocks(std::vector<BlockOp> ops, const Bytes& payload = {}) {
    codec::EncodedFrame f = codec_.encode_blocks(index_++, ops, payload, {});
    chain_.add(format::frame_header_checksum(std::span(f.bytes).first<format::kFrameHeaderSize>()));
    for (unsigned k = 0; k < format::kOpKindCount; ++k) trailer_.kind_count[k] += f.header.kind_count[k];
    out_.insert(out_.end(), f.bytes.begin(), f.bytes.end());
    return *this;
  }
  Bytes finish() {
    trailer_.frame_count = index_;
    trailer_.frame_chain = chain_.digest();
    auto end = codec::FrameCodec::encode_end(index_, trailer_, nullptr);
    Bytes o = out_;
    o.insert(o.end(), end.bytes.begin(), end.bytes.end());
    return o;
  }

 private:
  format::FileHeader h_;
  Bytes out_;
  codec::FrameCodec codec_;
  codec::FrameChain chain_;
  format::Trailer trailer_;
  uint64_t index_ = 0;
};

BlockOp op(OpKind kind, uint8_t image, uint64_t block, const Hash128& hash, format::BlockAddress source = {}) {
  BlockOp o;
  o.kind = kind;
  o.target = {image, block};
  o.source = source;
  o.hash = hash;
  return o;
}

Bytes bytes_of(const std::string& s) {
  Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

TEST_F(Verify, ContentAndOpErrorsInfoCannotSeeAreRefusedExactlyWhenSynthesisRefusesThem) {
  const Bytes lit = bytes_of(block_of(400, true));
  const Hash128 lit_hash = hash128(lit);
  const Hash128 zero_hash = hash128(Bytes(kBlockSize));
  // A block for the partial last memory block (1000 bytes inside the image)
  // with bytes past the image's end that are not zero: written, they are cut
  // off, so a copy of the block reads back zeros there.
  const Bytes tail = bytes_of(block_of(401, true));
  Bytes tail_padded = tail;
  std::fill(tail_padded.begin() + 1000, tail_padded.end(), std::byte{0});
  const Hash128 tail_hash = hash128(tail), padded_hash = hash128(tail_padded);
  ASSERT_NE(tail_hash, padded_hash);
  const Hash128 base_block_hash = hash128(bytes_of(testutil::read_file(base_ + "/disk.img").substr(0, kBlockSize)));

  struct Case {
    const char* what;
    Bytes overlay;
    std::optional<ErrorCode> expected;  // with the base
    const char* needle;                 // in verify's message
  };
  std::vector<Case> cases;
  cases.push_back({"a LITERAL block that does not match its hash",
                   Builder(base_).blocks({op(OpKind::kLiteral, 0, 3, zero_hash)}, lit).finish(), ErrorCode::kCorrupt,
                   "memory block 3 reconstructs content that does not match"});
  cases.push_back({"a ZERO op whose hash is not that of zeros",
                   Builder(base_).blocks({op(OpKind::kZero, 1, 2, lit_hash)}).finish(), ErrorCode::kCorrupt,
                   "disk block 2"});
  cases.push_back({"two ops for one block",
                   Builder(base_)
                       .blocks({op(OpKind::kZero, 0, 5, zero_hash)})
                       .blocks({op(OpKind::kZero, 0, 5, zero_hash)})
                       .finish(),
                   ErrorCode::kCorrupt, "already covers"});
  cases.push_back({"a target past the launch image",
                   Builder(base_).blocks({op(OpKind::kZero, 1, 24, zero_hash)}).finish(), ErrorCode::kCorrupt,
                   "past the end of the launch disk image"});
  cases.push_back({"a SELF_COPY of a block no earlier frame produced",
                   Builder(base_).blocks({op(OpKind::kSelfCopy, 1, 0, lit_hash, {0, 3})}).finish(),
                   ErrorCode::kCorrupt, "which no earlier frame produced"});
  cases.push_back({"a SELF_COPY of a checked block, right hash",
                   Builder(base_)
                       .blocks({op(OpKind::kLiteral, 0, 3, lit_hash)}, lit)
                       .blocks({op(OpKind::kSelfCopy, 1, 0, lit_hash, {0, 3})})
                       .finish(),
                   std::nullopt, ""});
  cases.push_back({"a SELF_COPY of a checked block, wrong hash",
                   Builder(base_)
                       .blocks({op(OpKind::kLiteral, 0, 3, lit_hash)}, lit)
                       .blocks({op(OpKind::kSelfCopy, 1, 0, zero_hash, {0, 3})})
                       .finish(),
                   ErrorCode::kCorrupt, "self_copy op for disk block 0"});
  cases.push_back({"a SELF_COPY of a partial last block, hash of the block as written",
                   Builder(base_)
                       .blocks({op(OpKind::kLiteral, 0, 16, tail_hash)}, tail)
                       .blocks({op(OpKind::kSelfCopy, 1, 0, tail_hash, {0, 16})})
                       .finish(),
                   ErrorCode::kCorrupt, "self_copy op for disk block 0"});
  cases.push_back({"a SELF_COPY of a partial last block, hash of the block as read back",
                   Builder(base_)
                       .blocks({op(OpKind::kLiteral, 0, 16, tail_hash)}, tail)
                       .blocks({op(OpKind::kSelfCopy, 1, 0, padded_hash, {0, 16})})
                       .finish(),
                   std::nullopt, ""});
  cases.push_back({"a BASE_COPY that does not match its hash",
                   Builder(base_).blocks({op(OpKind::kBaseCopy, 0, 0, zero_hash, {1, 0})}).finish(),
                   ErrorCode::kCorrupt, "base_copy op for memory block 0"});
  cases.push_back({"a BASE_COPY that matches its hash",
                   Builder(base_).blocks({op(OpKind::kBaseCopy, 0, 0, base_block_hash, {1, 0})}).finish(),
                   std::nullopt, ""});

  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    // What `overlay info` reads is intact in every case: only verify can tell.
    EXPECT_NO_THROW(inspect_overlay(*io::memory_source(c.overlay)));
    EXPECT_EQ(synthesis_error(c.overlay), c.expected);
    auto e = error_of(c.overlay, {}, true);
    EXPECT_EQ(e ? std::optional(e->code()) : std::nullopt, c.expected) << (e ? e->what() : "intact");
    if (e) {
      EXPECT_NE(std::string(e->what()).find(c.needle), std::string::npos) << e->what();
      EXPECT_NE(std::string(e->what()).find(" at byte "), std::string::npos) << e->what();
    }
  }

  // Without the base, a BASE_COPY is counted, not checked; the rest of the
  // verdicts stand, since they need no base.
  VerifyStats s = verify(Builder(base_).blocks({op(OpKind::kBaseCopy, 0, 0, zero_hash, {1, 0})}).finish());
  EXPECT_EQ(s.blocks_not_checked, 1u);
  EXPECT_EQ(s.not_checked_by_kind[static_cast<unsigned>(OpKind::kBaseCopy)], 1u);
  EXPECT_NE(s.not_checked_reason.find("base_copy"), std::string::npos) << s.not_checked_reason;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (std::string(cases[i].what).find("BASE_COPY") != std::string::npos) continue;
    SCOPED_TRACE(cases[i].what);
    auto e = error_of(cases[i].overlay);
    EXPECT_EQ(e ? std::optional(e->code()) : std::nullopt, cases[i].expected) << (e ? e->what() : "intact");
  }
}

TEST_F(Verify, ACopyOfACopiedPartialLastBlockIsReportedAsNotChecked) {
  // Memory block 0 carries bytes that a copy into the partial last memory
  // block cuts off; what that block reads back as is then unknown to verify,
  // which writes nothing, so a copy of it is not checked (and says so), while
  // synthesis, which reads it back, refuses the recorded hash.
  const Bytes lit = bytes_of(block_of(402, true));
  const Hash128 lit_hash = hash128(lit);
  const Bytes overlay = Builder(base_)
                            .blocks({op(OpKind::kLiteral, 0, 0, lit_hash)}, lit)
                            .blocks({op(OpKind::kSelfCopy, 0, 16, lit_hash, {0, 0})})
                            .blocks({op(OpKind::kSelfCopy, 1, 0, lit_hash, {0, 16})})
                            .finish();
  EXPECT_EQ(synthesis_error(overlay), ErrorCode::kCorrupt);
  VerifyStats s = verify(overlay, {}, true);
  EXPECT_EQ(s.blocks_checked, 2u);
  EXPECT_EQ(s.blocks_not_checked, 1u);
  EXPECT_EQ(s.not_checked_by_kind[static_cast<unsigned>(OpKind::kSelfCopy)], 1u);
  EXPECT_NE(s.not_checked_reason.find("partial last block"), std::string::npos) << s.not_checked_reason;
}

}  // namespace
}  // namespace vmsynth
