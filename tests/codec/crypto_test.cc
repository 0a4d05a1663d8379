// Encryption of overlay frames (codec/crypto.h, codec/frame_codec.h): key
// parsing, key derivation and checking, and that a sealed frame opens only
// with its own key, at its own index, in its own overlay, unmodified.
#include "codec/crypto.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "codec/frame_codec.h"
#include "common/error.h"

namespace vmsynth::codec {
namespace {

using format::BlockOp;
using format::OpKind;

std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::array<std::byte, kKeyBytes> test_key(uint8_t seed) {
  std::array<std::byte, kKeyBytes> k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::byte>(seed * 31 + i);
  return k;
}

template <typename F>
ErrorCode code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_FALSE(std::string(e.what()).empty());
    return e.code();
  }
  ADD_FAILURE() << "no error thrown";
  return ErrorCode::kInterrupted;
}

TEST(KeyFile, RawAndHexFormsGiveTheSameKey) {
  auto raw = test_key(1);
  std::string hex;
  for (std::byte b : raw) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02X", static_cast<unsigned>(b));
    hex += buf;
  }
  KeySpec a = key_from_key_file(raw, "raw");
  KeySpec b = key_from_key_file(bytes_of(hex + "\n"), "hex");
  KeySpec c = key_from_key_file(bytes_of(hex), "hex");
  ASSERT_EQ(a.kind, KeySpec::Kind::kRawKey);
  ASSERT_EQ(a.secret.size(), kKeyBytes);
  EXPECT_TRUE(std::equal(a.secret.bytes().begin(), a.secret.bytes().end(), b.secret.bytes().begin()));
  EXPECT_TRUE(std::equal(a.secret.bytes().begin(), a.secret.bytes().end(), c.secret.bytes().begin()));
}

TEST(KeyFile, AnythingElseIsAUsageError) {
  for (std::string bad : {std::string(31, 'a'), std::string(33, 'a'), std::string(64, 'g'), std::string(63, 'a'),
                          std::string(65, 'a'), std::string(64, 'a') + "\n\n", std::string()}) {
    EXPECT_EQ(code_of([&] { key_from_key_file(bytes_of(bad), "key file 'k'"); }), ErrorCode::kUsage) << bad.size();
  }
  try {
    key_from_key_file(bytes_of("short"), "key file 'k'");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key file 'k'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("32 raw bytes or 64 hexadecimal"), std::string::npos);
  }
}

TEST(PassphraseFile, OneTrailingLineBreakIsIgnoredAndEmptyIsRefused) {
  KeySpec p = key_from_passphrase_file(bytes_of("correct horse\r\n"), "p");
  EXPECT_EQ(p.kind, KeySpec::Kind::kPassphrase);
  EXPECT_EQ(p.secret.size(), 13u);
  EXPECT_EQ(code_of([] { key_from_passphrase_file(bytes_of("\n"), "p"); }), ErrorCode::kUsage);
  EXPECT_EQ(code_of([] { key_from_passphrase_file(bytes_of(std::string(kMaxPassphraseBytes + 1, 'x')), "p"); }),
            ErrorCode::kUsage);
}

// An encoded, key-checked header for `key`.
struct SealedHeader {
  format::FileHeader h;
  std::array<std::byte, format::kFileHeaderSize> bytes;
  std::shared_ptr<const FrameKeys> keys;
};

SealedHeader seal_header(const KeySpec& key, ScryptParams scrypt = {10, 8, 1}) {
  SealedHeader s;
  s.h.base_size = {1 << 20, 1 << 20};
  s.h.launch_size = {1 << 20, 1 << 20};
  s.h.max_frame_blocks = 4;
  auto k = FrameKeys::create(s.h, key, scrypt);
  s.bytes = format::encode_file_header(s.h);
  k->seal_header(s.bytes);
  s.h = format::decode_file_header(s.bytes);
  s.keys = k;
  return s;
}

TEST(FrameKeys, RightKeyOpensWrongKeyIsReportedAsSuch) {
  KeySpec key = raw_key(test_key(1));
  SealedHeader s = seal_header(key);
  EXPECT_TRUE(s.h.encrypted());
  EXPECT_EQ(s.h.kdf, format::Kdf::kRawKey);
  EXPECT_NE(FrameKeys::open(s.h, s.bytes, key), nullptr);
  EXPECT_EQ(code_of([&] { FrameKeys::open(s.h, s.bytes, raw_key(test_key(2))); }), ErrorCode::kWrongKey);
  EXPECT_EQ(code_of([&] { FrameKeys::open(s.h, s.bytes, KeySpec{}); }), ErrorCode::kWrongKey);
  EXPECT_EQ(code_of([&] { FrameKeys::open(s.h, s.bytes, key_from_passphrase_file(bytes_of("pw"), "p")); }),
            ErrorCode::kWrongKey);
}

TEST(FrameKeys, PassphraseOverlayNeedsThePassphrase) {
  KeySpec pw = key_from_passphrase_file(bytes_of("open sesame"), "p");
  SealedHeader s = seal_header(pw);
  EXPECT_EQ(s.h.kdf, format::Kdf::kScrypt);
  EXPECT_EQ(s.h.kdf_log2_n, 10);
  EXPECT_NE(FrameKeys::open(s.h, s.bytes, pw), nullptr);
  EXPECT_EQ(code_of([&] { FrameKeys::open(s.h, s.bytes, key_from_passphrase_file(bytes_of("open sesame!"), "p")); }),
            ErrorCode::kWrongKey);
  EXPECT_EQ(code_of([&] { FrameKeys::open(s.h, s.bytes, raw_key(test_key(1))); }), ErrorCode::kWrongKey);
}

TEST(FrameKeys, HostileScryptCostIsRefusedBeforeDerivation) {
  EXPECT_EQ(code_of([] { check_scrypt_params({30, 8, 1}, false); }), ErrorCode::kCorrupt);
  EXPECT_EQ(code_of([] { check_scrypt_params({20, 16, 1}, false); }), ErrorCode::kCorrupt);  // 2 GiB
  EXPECT_EQ(code_of([] { check_scrypt_params({15, 8, 0}, true); }), ErrorCode::kUsage);
  check_scrypt_params({15, 8, 1}, false);
}

TEST(FrameKeys, EveryOverlayGetsAFreshSaltAndKey) {
  KeySpec key = raw_key(test_key(1));
  SealedHeader a = seal_header(key), b = seal_header(key);
  EXPECT_NE(a.h.salt, b.h.salt);
  std::vector<std::byte> plain(100, std::byte{7}), ca(100), cb(100);
  std::array<std::byte, format::kFrameAadSize> aad{};
  auto ta = a.keys->seal(FrameKeys::kPayloadPart, 0, aad, plain, ca);
  auto tb = b.keys->seal(FrameKeys::kPayloadPart, 0, aad, plain, cb);
  EXPECT_NE(ca, cb);
  EXPECT_NE(ta, tb);
  std::vector<std::byte> out(100);
  EXPECT_TRUE(a.keys->open(FrameKeys::kPayloadPart, 0, aad, ca, out, ta));
  EXPECT_EQ(out, plain);
  EXPECT_FALSE(b.keys->open(FrameKeys::kPayloadPart, 0, aad, ca, out, ta));  // same key file, other overlay
  EXPECT_FALSE(a.keys->open(FrameKeys::kPayloadPart, 1, aad, ca, out, ta));  // other index
  EXPECT_FALSE(a.keys->open(FrameKeys::kTablePart, 0, aad, ca, out, ta));    // other part
}

// A small blocks frame with a payload: 2 literal blocks and a zero op.
struct Sample {
  std::vector<BlockOp> ops;
  std::vector<std::byte> payload;
};
Sample sample() {
  Sample s;
  s.ops.resize(3);
  s.ops[0].kind = OpKind::kLiteral;
  s.ops[0].target = {0, 1};
  s.ops[1].kind = OpKind::kZero;
  s.ops[1].target = {0, 2};
  s.ops[2].kind = OpKind::kLiteral;
  s.ops[2].target = {1, 0};
  s.payload.resize(2 * format::kBlockSize);
  for (size_t i = 0; i < s.payload.size(); ++i) s.payload[i] = static_cast<std::byte>(i * 7 % 251);
  for (auto& op : s.ops) op.hash = hash128(std::span(s.payload).first(format::kBlockSize));
  return s;
}

struct Decoded {
  std::vector<BlockOp> ops;
  std::vector<std::byte> payload;
};
Decoded decode(FrameCodec& codec, std::span<const std::byte> frame) {
  auto h = format::decode_frame_header(frame.first<format::kFrameHeaderSize>());
  auto body = frame.subspan(format::kFrameHeaderSize);
  Decoded d;
  d.ops = codec.decode_blocks_table(h, body.first(h.table_stored));
  d.payload.resize(h.payload_raw);
  codec.decode_payload(h, body.subspan(h.table_stored), {}, d.payload);
  return d;
}

TEST(SealedFrame, RoundTripsAndHidesItsContent) {
  SealedHeader s = seal_header(raw_key(test_key(3)));
  Sample smp = sample();
  FrameCodec enc(s.keys);
  EncodedFrame f = enc.encode_blocks(5, smp.ops, smp.payload, {});
  EXPECT_TRUE(f.header.sealed());
  EXPECT_NE(f.header.auth_tag, (std::array<uint8_t, 16>{}));
  // The payload compresses well; sealed, it must not contain the op hashes in the clear.
  auto hash = std::as_bytes(std::span(smp.ops[0].hash.bytes));
  EXPECT_EQ(std::search(f.bytes.begin(), f.bytes.end(), hash.begin(), hash.end()), f.bytes.end());
  FrameCodec dec(s.keys);
  Decoded d = decode(dec, f.bytes);
  ASSERT_EQ(d.ops.size(), 3u);
  EXPECT_EQ(d.ops[2].target, (format::BlockAddress{1, 0}));
  EXPECT_EQ(d.payload, smp.payload);
}

TEST(SealedFrame, EveryModifiedByteIsDetected) {
  SealedHeader s = seal_header(raw_key(test_key(3)));
  Sample smp = sample();
  FrameCodec codec(s.keys);
  EncodedFrame f = codec.encode_blocks(5, smp.ops, smp.payload, {});
  for (size_t i = 0; i < f.bytes.size(); ++i) {
    std::vector<std::byte> bad = f.bytes;
    bad[i] ^= std::byte{0x20};
    EXPECT_EQ(code_of([&] { decode(codec, bad); }), ErrorCode::kCorrupt) << "byte " << i;
  }
}

// Rewrites a frame header field and fixes its XXH3 checksums, as an attacker
// without the key could: only the seal notices.
std::vector<std::byte> forge(const EncodedFrame& f, auto&& change) {
  format::FrameHeader h = f.header;
  change(h);
  auto head = format::encode_frame_header(h);
  std::vector<std::byte> out = f.bytes;
  std::copy(head.begin(), head.end(), out.begin());
  return out;
}

TEST(SealedFrame, MovedOrSplicedFramesDoNotOpen) {
  KeySpec key = raw_key(test_key(4));
  SealedHeader a = seal_header(key), b = seal_header(key);
  Sample smp = sample();
  FrameCodec ca(a.keys), cb(b.keys);
  EncodedFrame f = ca.encode_blocks(5, smp.ops, smp.payload, {});
  // Renumbered: the index is in the nonce and the AAD.
  auto moved = forge(f, [](format::FrameHeader& h) { h.index = 6; });
  EXPECT_EQ(code_of([&] { decode(ca, moved); }), ErrorCode::kCorrupt);
  // A header field changed (an op count moved between kinds).
  auto counts = forge(f, [](format::FrameHeader& h) {
    --h.kind_count[static_cast<unsigned>(OpKind::kZero)];
    ++h.kind_count[static_cast<unsigned>(OpKind::kBaseCopy)];
  });
  EXPECT_EQ(code_of([&] { decode(ca, counts); }), ErrorCode::kCorrupt);
  // Same key file, same index, another overlay (other salt and header).
  EXPECT_EQ(code_of([&] { decode(cb, f.bytes); }), ErrorCode::kCorrupt);
  // Sealed frame without keys, plain frame with keys.
  FrameCodec plain;
  EXPECT_EQ(code_of([&] { decode(plain, f.bytes); }), ErrorCode::kWrongKey);
  EncodedFrame p = plain.encode_blocks(5, smp.ops, smp.payload, {});
  EXPECT_EQ(code_of([&] { decode(ca, p.bytes); }), ErrorCode::kCorrupt);
}

TEST(SealedFrame, EndFrameTrailerIsAuthenticated) {
  SealedHeader s = seal_header(raw_key(test_key(5)));
  format::Trailer t;
  t.frame_count = 9;
  t.kind_count = {1, 2, 3, 4, 5};
  EncodedFrame f = FrameCodec::encode_end(9, t, s.keys.get());
  EXPECT_EQ(f.header.payload_stored, format::kTrailerSize + kGcmTagBytes);
  auto body = std::span(f.bytes).subspan(format::kFrameHeaderSize);
  format::Trailer back = FrameCodec::decode_end(f.header, body, s.keys.get());
  EXPECT_EQ(back.frame_count, 9u);
  auto renumbered = forge(f, [](format::FrameHeader& h) { h.index = 8; });
  auto h8 = format::decode_frame_header(std::span(renumbered).first<format::kFrameHeaderSize>());
  EXPECT_EQ(code_of([&] { FrameCodec::decode_end(h8, body, s.keys.get()); }), ErrorCode::kCorrupt);
  std::vector<std::byte> bad(body.begin(), body.end());
  bad[0] ^= std::byte{1};
  format::FrameHeader hb = f.header;
  hb.payload_checksum = hash64(bad);  // an attacker fixes the checksum too
  EXPECT_EQ(code_of([&] { FrameCodec::decode_end(hb, bad, s.keys.get()); }), ErrorCode::kCorrupt);
}

// check_payload is what `overlay verify` runs on a payload compressed against
// a base it does not have: the checksum and the seal, no decompression.
TEST(SealedFrame, CheckPayloadAuthenticatesWithoutThePrefix) {
  SealedHeader s = seal_header(raw_key(test_key(7)));
  Sample smp = sample();
  smp.ops[0].kind = OpKind::kDelta;  // compressed against a prefix the checker does not get
  std::vector<std::byte> prefix(smp.payload.begin(), smp.payload.begin() + format::kBlockSize);
  FrameCodec codec(s.keys);
  EncodedFrame f = codec.encode_blocks(2, smp.ops, smp.payload, prefix);
  auto payload_of = [&](const std::vector<std::byte>& frame) {
    return std::span(frame).subspan(format::kFrameHeaderSize + f.header.table_stored);
  };
  EXPECT_NO_THROW(codec.check_payload(f.header, payload_of(f.bytes)));
  std::vector<std::byte> bad = f.bytes;
  bad.back() ^= std::byte{1};  // the payload's GCM tag
  EXPECT_EQ(code_of([&] { codec.check_payload(f.header, payload_of(bad)); }), ErrorCode::kCorrupt);
  // With the checksum fixed, as an attacker can: the tag still fails.
  format::FrameHeader fixed = f.header;
  fixed.payload_checksum = hash64(payload_of(bad));
  try {
    codec.check_payload(fixed, payload_of(bad));
    ADD_FAILURE() << "a payload with a forged checksum passed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  }
  FrameCodec no_keys;
  EXPECT_EQ(code_of([&] { no_keys.check_payload(f.header, payload_of(f.bytes)); }), ErrorCode::kWrongKey);
  // A plain payload has its checksum only: a forged one passes, which is why
  // only encrypted overlays resist tampering (docs/security.md).
  EncodedFrame p = no_keys.encode_blocks(2, smp.ops, smp.payload, prefix);
  std::vector<std::byte> forged = p.bytes;
  forged.back() ^= std::byte{1};
  auto stored = std::span(forged).subspan(format::kFrameHeaderSize + p.header.table_stored);
  format::FrameHeader ph = p.header;
  EXPECT_EQ(code_of([&] { no_keys.check_payload(ph, stored); }), ErrorCode::kCorrupt);
  ph.payload_checksum = hash64(stored);
  EXPECT_NO_THROW(no_keys.check_payload(ph, stored));
}

TEST(SealedFrame, FileFrameKeepsTheSmallerEncodingAndSealsIt) {
  SealedHeader s = seal_header(raw_key(test_key(6)));
  std::vector<std::byte> base(50000), content(50000);
  for (size_t i = 0; i < base.size(); ++i) base[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  content = base;
  content[100] = std::byte{1};
  FrameCodec codec(s.keys);
  format::FileRecord rec;
  rec.id = format::FileId::kDevState;
  rec.hash = hash128(content);
  std::span<const std::byte> prefix = base;
  EncodedFrame f = codec.encode_file(0, rec, content, &prefix);
  auto body = std::span(f.bytes).subspan(format::kFrameHeaderSize);
  format::FileRecord back = codec.decode_file_table(f.header, body.first(f.header.table_stored));
  EXPECT_EQ(back.encoding, format::FileEncoding::kZstdBasePrefix);
  EXPECT_EQ(back.size, content.size());
  std::vector<std::byte> out(content.size());
  codec.decode_payload(f.header, body.subspan(f.header.table_stored), base, out);
  EXPECT_EQ(out, content);
}

TEST(FrameLimits, StoredSizesBeyondTheCompressBoundAreRefused) {
  FrameCodec codec;
  Sample smp = sample();
  EncodedFrame f = codec.encode_blocks(0, smp.ops, smp.payload, {});
  auto big = forge(f, [](format::FrameHeader& h) { h.payload_stored = 8u << 20; });
  EXPECT_EQ(code_of([&] { format::decode_frame_header(std::span(big).first<format::kFrameHeaderSize>()); }),
            ErrorCode::kCorrupt);
  auto big_table = forge(f, [](format::FrameHeader& h) { h.table_stored = 1u << 20; });
  EXPECT_EQ(code_of([&] { format::decode_frame_header(std::span(big_table).first<format::kFrameHeaderSize>()); }),
            ErrorCode::kCorrupt);
  auto tagged = forge(f, [](format::FrameHeader& h) { h.auth_tag[0] = 1; });
  EXPECT_EQ(code_of([&] { format::decode_frame_header(std::span(tagged).first<format::kFrameHeaderSize>()); }),
            ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace vmsynth::codec
