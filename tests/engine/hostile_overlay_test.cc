// Hostile and damaged overlays: every one must end in a clear vmsynth::Error
// (or, for an unencrypted overlay whose damage hit nothing that matters, a
// verified correct launch VM), never a crash, never a silently wrong image,
// never a write outside the output directory, never a change to the base.
//
// Covers encryption end to end (keys, wrong keys, reordering, splicing,
// forged trailers), hand-made overlays that break each rule of the format
// (docs/overlay-format.md), and exhaustive damage: every byte of a small
// overlay flipped and the overlay cut at every frame boundary and at random
// offsets, against the serial engine in-process and a sample against the
// parallel engine.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <optional>
#include <random>
#include <set>

#include "codec/frame_codec.h"
#include "codec/zstd_codec.h"
#include "common/error.h"
#include "engine/base_id.h"
#include "engine/op_validator.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/synthesis.h"
#include "synthesis_test_util.h"

namespace vmsynth {
namespace {

using format::BlockOp;
using format::kBlockSize;
using format::OpKind;
using Bytes = std::vector<std::byte>;

codec::KeySpec test_key(uint8_t seed) {
  std::array<std::byte, codec::kKeyBytes> k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::byte>(seed + 17 * i);
  return codec::raw_key(k);
}

std::string block_of(uint64_t seed, bool text) {
  return text ? testutil::text_bytes(kBlockSize, seed) : testutil::random_bytes(kBlockSize, seed);
}

// A small base/launch pair whose overlay has every op kind and both opaque
// files, and is a few KiB: small enough to damage every byte of it.
testutil::VmContent small_base() {
  testutil::VmContent b;
  for (uint64_t i = 0; i < 16; ++i) b.memory += block_of(100 + i, false);
  for (uint64_t i = 0; i < 24; ++i) b.disk += block_of(200 + i, false);
  b.devstate = testutil::text_bytes(20000, 7);
  b.vm_json = "{\"memory_mib\": 1}";
  return b;
}

testutil::VmContent small_launch(const testutil::VmContent& base) {
  testutil::VmContent l = base;
  auto put = [](std::string& img, uint64_t block, const std::string& content) {
    img.replace(block * kBlockSize, kBlockSize, content);
  };
  put(l.memory, 1, std::string(kBlockSize, '\0'));           // ZERO
  put(l.memory, 2, base.disk.substr(5 * kBlockSize, kBlockSize));  // BASE_COPY
  put(l.memory, 3, block_of(300, true));                     // LITERAL
  put(l.memory, 4, block_of(301, true));                     // LITERAL
  put(l.disk, 20, block_of(300, true));                      // SELF_COPY of memory block 3
  l.disk[9 * kBlockSize + 77] ^= 0x40;                       // DELTA
  l.disk += block_of(302, true);                             // grown disk: LITERAL
  l.devstate[500] = 'X';
  l.vm_json = "{\"memory_mib\": 2}";
  return l;
}

// A scratch directory on /dev/shm when there is one: the damage tests run
// thousands of syntheses, and on a journalling disk creating and removing
// their staging directories dominates. Falls back to $TMPDIR or /tmp.
std::string scratch_root() {
  std::error_code ec;
  return std::filesystem::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "";
}

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    base_content_ = small_base();
    launch_content_ = small_launch(base_content_);
    testutil::write_vm(base_, base_content_);
    testutil::write_vm(launch_, launch_content_);
  }

  Bytes make(const codec::KeySpec& key = {}, const std::string& name = "app.vmo") {
    CreateOptions c;
    c.base_dir = base_;
    c.launch_dir = launch_;
    c.output = dir_.sub(name);
    c.level = 3;
    c.force = true;
    c.key = key;
    c.scrypt = {10, 8, 1};  // cheap for tests; the default is N=2^15
    // Under TSan, set-up runs on one thread: Debian's oneTBB is not instrumented.
    c.threads = testutil::kThreadSanitizer ? 1 : 0;
    create_overlay(c);
    return testutil::read_bytes(c.output);
  }

  // Runs an engine in-process. Returns the error, or nullopt after checking
  // that the output is the launch VM.
  std::optional<Error> run(Bytes overlay, const codec::KeySpec& key = {}, EngineKind engine = EngineKind::kSerial) {
    SynthesizeOptions o = testutil::synth_options(base_, out_, engine, 2);
    o.key = key;
    try {
      testutil::synthesize_bytes(std::move(overlay), o, 1 << 12);
    } catch (const Error& e) {
      EXPECT_FALSE(std::filesystem::exists(out_)) << "output left after: " << e.what();
      EXPECT_TRUE(testutil::entries_with_prefix(dir_.path(), ".out.").empty()) << "staging left after: " << e.what();
      EXPECT_FALSE(std::string(e.what()).empty());
      return e;
    }
    EXPECT_EQ(testutil::vm_dir_difference(out_, launch_), "") << "a synthesis succeeded with a wrong image";
    std::filesystem::remove_all(out_);
    return std::nullopt;
  }

  ErrorCode fails(Bytes overlay, const codec::KeySpec& key = {}, EngineKind engine = EngineKind::kSerial) {
    auto e = run(std::move(overlay), key, engine);
    if (!e) {
      ADD_FAILURE() << "synthesis succeeded";
      return ErrorCode::kInterrupted;
    }
    return e->code();
  }

  void expect_base_untouched() {
    EXPECT_EQ(testutil::read_file(base_ + "/memory.img"), base_content_.memory);
    EXPECT_EQ(testutil::read_file(base_ + "/disk.img"), base_content_.disk);
    EXPECT_EQ(testutil::read_file(base_ + "/devstate.bin"), base_content_.devstate);
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) names.insert(e.path().filename());
    for (const auto& n : names) {
      EXPECT_TRUE(n == "base" || n == "launch" || n.ends_with(".vmo")) << "unexpected entry " << n;
    }
  }

  testutil::TempDir dir_{"vmsynth-hostile", scratch_root()};
  std::string base_ = dir_.sub("base"), launch_ = dir_.sub("launch"), out_ = dir_.sub("out");
  testutil::VmContent base_content_, launch_content_;
};

// Byte ranges of the frames of an overlay (end frame included).
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

Bytes cut(const Bytes& o, size_t from, size_t to) { return Bytes(o.begin() + from, o.begin() + to); }
Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Rewrites the header of the frame at `at` (fixing its XXH3 checksum, as an
// attacker without the key can).
template <typename F>
void forge_header(Bytes& o, size_t at, F&& change) {
  auto h = format::decode_frame_header(std::span<const std::byte>(o).subspan(at).first<format::kFrameHeaderSize>());
  change(h);
  auto b = format::encode_frame_header(h);
  std::copy(b.begin(), b.end(), o.begin() + static_cast<std::ptrdiff_t>(at));
}

// ---- Encryption end to end -------------------------------------------------

TEST_F(Hostile, EncryptedOverlaysRoundTripWithKeyOrPassphrase) {
  codec::KeySpec key = test_key(1);
  Bytes sealed = make(key);
  EXPECT_FALSE(run(sealed, key));
  auto pw = codec::key_from_passphrase_file(std::as_bytes(std::span(std::string_view("tr0ub4dor\n"))), "pw");
  Bytes by_pw = make(pw, "pw.vmo");
  EXPECT_FALSE(run(by_pw, pw));
  EXPECT_NE(cut(sealed, 0, 256), cut(make(key, "again.vmo"), 0, 256));  // fresh salt every time
  expect_base_untouched();
}

TEST_F(Hostile, KeyProblemsAreReportedBeforeAnythingIsWritten) {
  Bytes sealed = make(test_key(1));
  EXPECT_EQ(fails(sealed, test_key(2)), ErrorCode::kWrongKey);
  EXPECT_EQ(fails(sealed), ErrorCode::kWrongKey);  // no key
  Bytes plain = make();
  EXPECT_EQ(fails(plain, test_key(1)), ErrorCode::kWrongKey);  // a key for an unencrypted overlay
  auto e = run(sealed);
  ASSERT_TRUE(e);
  EXPECT_NE(std::string(e->what()).find("--key-file"), std::string::npos) << e->what();
  expect_base_untouched();
}

TEST_F(Hostile, InfoReadsEncryptedHeadersWithoutTheKey) {
  Bytes plain = make();
  Bytes sealed = make(test_key(3), "sealed.vmo");
  auto p = inspect_overlay(*io::memory_source(plain));
  auto without = inspect_overlay(*io::memory_source(sealed));
  auto with = inspect_overlay(*io::memory_source(sealed), test_key(3));
  EXPECT_FALSE(p.headers_authenticated);  // unencrypted: checksums only
  EXPECT_FALSE(without.headers_authenticated);
  EXPECT_FALSE(without.tables_decoded);
  EXPECT_TRUE(with.headers_authenticated);
  // What each says it checked: never payloads; authentication only with the key.
  for (const OverlayInfo* i : {&p, &without, &with}) {
    EXPECT_EQ(i->checked().find("payload"), std::string::npos) << i->checked();
    EXPECT_NE(i->not_checked().find("payloads"), std::string::npos) << i->not_checked();
  }
  EXPECT_EQ(p.checked().find("authenticated"), std::string::npos) << p.checked();
  EXPECT_NE(with.checked().find("authenticated with the key"), std::string::npos) << with.checked();
  EXPECT_NE(without.not_checked().find("nothing authenticated"), std::string::npos) << without.not_checked();
  EXPECT_EQ(without.checked().find("op tables"), std::string::npos) << without.checked();
  EXPECT_EQ(without.kind_count, p.kind_count);
  EXPECT_EQ(with.kind_count_by_image, p.kind_count_by_image);
  EXPECT_EQ(without.frames, p.frames);
  ASSERT_EQ(with.files.size(), 2u);
  EXPECT_EQ(with.files[0].name, "devstate.bin");
  EXPECT_EQ(without.files[0].name, "(encrypted)");
  EXPECT_THROW(inspect_overlay(*io::memory_source(sealed), test_key(4)), Error);
}

TEST_F(Hostile, ReorderedDroppedDuplicatedOrSplicedFramesAreDetected) {
  codec::KeySpec key = test_key(5);
  for (bool encrypted : {false, true}) {
    SCOPED_TRACE(encrypted ? "encrypted" : "plain");
    Bytes o = encrypted ? make(key) : make();
    Bytes other = encrypted ? make(key, "other.vmo") : Bytes{};
    const codec::KeySpec k = encrypted ? key : codec::KeySpec{};
    auto fr = frames_of(o);
    ASSERT_GE(fr.size(), 5u);
    Bytes head = cut(o, 0, fr[1].at);
    Bytes f1 = cut(o, fr[1].at, fr[2].at), f2 = cut(o, fr[2].at, fr[3].at), rest = cut(o, fr[3].at, o.size());
    EXPECT_EQ(fails(cat({head, f2, f1, rest}), k), ErrorCode::kCorrupt);  // swapped
    EXPECT_EQ(fails(cat({head, f2, rest}), k), ErrorCode::kCorrupt);      // dropped
    EXPECT_EQ(fails(cat({head, f1, f1, f2, rest}), k), ErrorCode::kCorrupt);  // duplicated
    // Swapped with their indexes rewritten and checksums fixed: the frame
    // chain (plain) or the seal (encrypted) notices.
    Bytes swapped = cat({head, f2, f1, rest});
    forge_header(swapped, fr[1].at, [](format::FrameHeader& h) { h.index = 1; });
    forge_header(swapped, fr[1].at + f2.size(), [](format::FrameHeader& h) { h.index = 2; });
    EXPECT_EQ(fails(swapped, k), ErrorCode::kCorrupt);
    if (encrypted) {
      // The same frame of another overlay made with the same key file.
      auto ofr = frames_of(other);
      ASSERT_EQ(ofr.size(), fr.size());
      Bytes spliced = cat({head, cut(other, ofr[1].at, ofr[2].at), f2, rest});
      EXPECT_EQ(fails(spliced, k), ErrorCode::kCorrupt);
      // Cut after frame 2 with a new end frame whose counts match: needs the key.
      Bytes truncated = cut(o, 0, fr[3].at);
      format::Trailer t;
      t.frame_count = 3;
      codec::EncodedFrame end = codec::FrameCodec::encode_end(3, t, nullptr);
      EXPECT_EQ(fails(cat({truncated, end.bytes}), k), ErrorCode::kCorrupt);
      Bytes real_end = cut(o, fr.back().at, o.size());
      forge_header(real_end, 0, [](format::FrameHeader& h) { h.index = 3; });
      EXPECT_EQ(fails(cat({truncated, real_end}), k), ErrorCode::kCorrupt);
      // An encrypted overlay's frames in a plain overlay's place.
      Bytes plain = make({}, "plain.vmo");
      EXPECT_EQ(fails(cat({cut(plain, 0, 256), cut(o, 256, o.size())})), ErrorCode::kCorrupt);
    }
  }
  expect_base_untouched();
}

// ---- Hand-made overlays that break one rule each ----------------------------

// Writes overlays for the fixture's base frame by frame, with correct
// checksums, chain and trailer, so only the intended rule is broken.
class Builder {
 public:
  Builder(const std::string& base_dir, std::array<uint64_t, 2> launch_size, uint32_t max_frame_blocks = 1024) {
    h_.base_id = compute_base_id(VmDir{base_dir}, BaseIdOptions{.use_cache = false, .cache_dir = {}});
    for (unsigned i = 0; i < 2; ++i) {
      h_.base_size[i] = std::filesystem::file_size(VmDir{base_dir}.image(static_cast<ImageKind>(i)));
      h_.launch_size[i] = launch_size[i];
    }
    h_.max_frame_blocks = max_frame_blocks;
    auto head = format::encode_file_header(h_);
    out_.assign(head.begin(), head.end());
  }
  Builder& blocks(std::vector<BlockOp> ops, const Bytes& payload = {}) {
    return add(codec_.encode_blocks(index_, ops, payload, {}));
  }
  Builder& add(const codec::EncodedFrame& f) {
    chain_.add(format::frame_header_checksum(std::span(f.bytes).first<format::kFrameHeaderSize>()));
    for (unsigned k = 0; k < format::kOpKindCount; ++k) trailer_.kind_count[k] += f.header.kind_count[k];
    out_.insert(out_.end(), f.bytes.begin(), f.bytes.end());
    ++index_;
    return *this;
  }
  // A raw frame whose header is given and body is as given (checksums fixed).
  Builder& raw(format::FrameHeader h, const Bytes& table, const Bytes& payload) {
    h.index = index_;
    h.table_stored = static_cast<uint32_t>(table.size());
    h.payload_stored = static_cast<uint32_t>(payload.size());
    h.table_checksum = table.empty() ? 0 : hash64(table);
    h.payload_checksum = payload.empty() ? 0 : hash64(payload);
    codec::EncodedFrame f;
    f.header = h;
    auto head = format::encode_frame_header(h);
    f.bytes.assign(head.begin(), head.end());
    f.bytes.insert(f.bytes.end(), table.begin(), table.end());
    f.bytes.insert(f.bytes.end(), payload.begin(), payload.end());
    return add(f);
  }
  uint64_t index() const { return index_; }
  Bytes finish(int64_t frame_count_delta = 0) {
    trailer_.frame_count = index_ + frame_count_delta;
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

BlockOp op(OpKind kind, uint8_t image, uint64_t block, format::BlockAddress source = {}) {
  BlockOp o;
  o.kind = kind;
  o.target = {image, block};
  o.source = source;
  o.hash = hash128(Bytes(kBlockSize));  // right for ZERO; wrong (hence caught) for anything else
  return o;
}

TEST_F(Hostile, EachBrokenRuleIsACorruptOverlay) {
  const std::array<uint64_t, 2> sizes = {16 * kBlockSize, 24 * kBlockSize};
  auto builder = [&](uint32_t max_blocks = 1024) { return Builder(base_, sizes, max_blocks); };
  // A well-formed hand-made overlay succeeds (so the failures below are the rule's).
  {
    SynthesizeOptions o = testutil::synth_options(base_, out_, EngineKind::kSerial, 2);
    EXPECT_NO_THROW(testutil::synthesize_bytes(builder().blocks({op(OpKind::kZero, 0, 3)}).finish(), o));
    std::filesystem::remove_all(out_);
  }
  struct Case {
    const char* what;
    Bytes overlay;
  };
  std::vector<Case> cases;
  cases.push_back({"target past the launch image", builder().blocks({op(OpKind::kZero, 0, 16)}).finish()});
  cases.push_back({"target far past the launch image", builder().blocks({op(OpKind::kZero, 1, 1ull << 40)}).finish()});
  cases.push_back({"base copy past the base image",
                   builder().blocks({op(OpKind::kBaseCopy, 0, 0, {1, 24})}).finish()});
  cases.push_back({"self copy of itself", builder().blocks({op(OpKind::kSelfCopy, 0, 5, {0, 5})}).finish()});
  cases.push_back({"self copy forward in the same frame",
                   builder().blocks({op(OpKind::kSelfCopy, 0, 5, {0, 6}), op(OpKind::kZero, 0, 6)}).finish()});
  cases.push_back({"self copy backward in the same frame",
                   builder().blocks({op(OpKind::kZero, 0, 5), op(OpKind::kSelfCopy, 0, 6, {0, 5})}).finish()});
  cases.push_back({"self copy of a later frame's block",
                   builder().blocks({op(OpKind::kSelfCopy, 0, 5, {1, 3})}).blocks({op(OpKind::kZero, 1, 3)}).finish()});
  cases.push_back({"duplicate target in one frame",
                   builder().blocks({op(OpKind::kZero, 0, 5), op(OpKind::kZero, 0, 5)}).finish()});
  cases.push_back({"duplicate target across frames",
                   builder().blocks({op(OpKind::kZero, 1, 2)}).blocks({op(OpKind::kZero, 1, 2)}).finish()});
  cases.push_back({"more ops than the header declares",
                   builder(1).blocks({op(OpKind::kZero, 0, 1), op(OpKind::kZero, 0, 2)}).finish()});
  cases.push_back({"wrong block hash", [&] {
                     BlockOp lit = op(OpKind::kLiteral, 0, 1);
                     return builder().blocks({lit}, Bytes(kBlockSize, std::byte{1})).finish();
                   }()});
  cases.push_back({"trailer frame count", builder().blocks({op(OpKind::kZero, 0, 1)}).finish(+1)});
  cases.push_back({"data after the end frame", [&] {
                     Bytes o = builder().blocks({op(OpKind::kZero, 0, 1)}).finish();
                     o.push_back(std::byte{0});
                     return o;
                   }()});
  // A decompression bomb: the zstd frame declares 8 MiB where the header says 4 KiB.
  cases.push_back({"payload larger than declared", [&] {
                     codec::ZstdCompressor z(3);
                     Bytes bomb = z.compress(Bytes(8u << 20));
                     format::FrameHeader h;
                     h.type = format::FrameType::kBlocks;
                     h.op_count = 1;
                     h.kind_count[static_cast<unsigned>(OpKind::kLiteral)] = 1;
                     BlockOp lit = op(OpKind::kLiteral, 0, 1);
                     Bytes raw_table = format::encode_op_table(std::vector{lit});
                     h.table_raw = static_cast<uint32_t>(raw_table.size());
                     h.payload_raw = kBlockSize;
                     return builder().raw(h, z.compress(raw_table), bomb).finish();
                   }()});
  // An opaque file larger than its record says.
  cases.push_back({"opaque file larger than declared", [&] {
                     codec::ZstdCompressor z(3);
                     Bytes content(5000, std::byte{'a'});
                     format::FileRecord rec;
                     rec.size = 100;
                     rec.hash = hash128(std::span(content).first(100));
                     format::FrameHeader h;
                     h.type = format::FrameType::kFile;
                     h.op_count = 1;
                     h.table_raw = format::kFileRecordSize;
                     h.payload_raw = 100;
                     return builder().raw(h, format::encode_file_record(rec), z.compress(content)).finish();
                   }()});
  cases.push_back({"the same opaque file twice", [&] {
                     codec::FrameCodec c;
                     format::FileRecord rec;
                     Bytes content(10, std::byte{'z'});
                     rec.hash = hash128(content);
                     auto b = builder();
                     b.add(c.encode_file(0, rec, content, nullptr));
                     b.add(c.encode_file(1, rec, content, nullptr));
                     return b.finish();
                   }()});
  for (Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto e = run(c.overlay);
    ASSERT_TRUE(e) << c.what;
    EXPECT_EQ(e->code(), ErrorCode::kCorrupt) << e->what();
  }
  expect_base_untouched();
}

TEST(OpValidatorMemory, HugeDeclaredImagesCostNothingUntilCovered) {
  format::FileHeader h;
  h.base_size = {1 << 20, 1 << 20};
  h.launch_size = {1ull << 50, 1ull << 50};  // 1 PiB each: a flat bitmap would be 32 GiB
  OpValidator v(h);
  std::vector<BlockOp> ops;
  for (uint64_t i = 0; i < 1024; ++i) ops.push_back(op(OpKind::kZero, i & 1, i << 27));
  v.check_blocks_frame(ops);
  EXPECT_THROW(v.check_blocks_frame(std::vector{op(OpKind::kZero, 0, 0)}), Error);  // already covered
  EXPECT_NO_THROW(v.check_blocks_frame(std::vector{op(OpKind::kSelfCopy, 1, 5, {0, 0})}));
}

// ---- Exhaustive damage -------------------------------------------------------

class Damage : public Hostile, public ::testing::WithParamInterface<bool> {};

TEST_P(Damage, EveryFlippedByteAndEveryCutIsCaughtBySerialEngine) {
  const bool encrypted = GetParam();
  const codec::KeySpec key = encrypted ? test_key(9) : codec::KeySpec{};
  const Bytes good = make(key);
  ASSERT_LT(good.size(), 64u << 10) << "the sample overlay grew; the exhaustive test would be slow";
  size_t succeeded = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    Bytes bad = good;
    bad[i] ^= static_cast<std::byte>(1u << (i % 8));
    auto e = run(bad, key);
    if (!e) {
      ++succeeded;
      EXPECT_FALSE(encrypted) << "a damaged encrypted overlay was accepted (byte " << i << ")";
      continue;
    }
    EXPECT_TRUE(e->code() == ErrorCode::kCorrupt || e->code() == ErrorCode::kUnsupported ||
                (encrypted && e->code() == ErrorCode::kWrongKey))
        << "byte " << i << ": " << e->what();
  }
  RecordProperty("accepted_flips", static_cast<int>(succeeded));
  RecordProperty("overlay_bytes", static_cast<int>(good.size()));
  std::vector<size_t> cuts = {0, 1, 100, format::kFileHeaderSize - 1, format::kFileHeaderSize};
  for (const FrameSpan& f : frames_of(good)) {
    cuts.push_back(f.at);
    cuts.push_back(f.at + format::kFrameHeaderSize);
    cuts.push_back(f.at + f.size - 1);
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 64; ++i) cuts.push_back(rng() % good.size());
  for (size_t n : cuts) {
    EXPECT_EQ(fails(cut(good, 0, n), key), ErrorCode::kCorrupt) << "cut at " << n;
  }
  expect_base_untouched();
}

TEST_P(Damage, ASampleOfDamageIsCaughtByParallelEngine) {
  const bool encrypted = GetParam();
  const codec::KeySpec key = encrypted ? test_key(10) : codec::KeySpec{};
  const Bytes good = make(key);
  EXPECT_FALSE(run(good, key, EngineKind::kParallel));
  std::mt19937_64 rng(7);
  for (int i = 0; i < 150; ++i) {
    size_t at = rng() % good.size();
    Bytes bad = good;
    bad[at] ^= static_cast<std::byte>(1u << (rng() % 8));
    auto e = run(bad, key, EngineKind::kParallel);
    if (e) {
      EXPECT_NE(e->code(), ErrorCode::kIo) << "byte " << at << ": " << e->what();
    } else {
      EXPECT_FALSE(encrypted) << "byte " << at;
    }
  }
  for (const FrameSpan& f : frames_of(good)) {
    EXPECT_EQ(fails(cut(good, 0, f.at), key, EngineKind::kParallel), ErrorCode::kCorrupt);
  }
  expect_base_untouched();
}

INSTANTIATE_TEST_SUITE_P(Overlay, Damage, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? std::string("Encrypted") : std::string("Plain"); });

}  // namespace
}  // namespace vmsynth
