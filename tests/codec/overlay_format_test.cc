// Encoding and decoding of overlay format records: round trips, and that the
// validation catches what it promises to catch.
#include <gtest/gtest.h>

#include <random>

#include "codec/frame_codec.h"
#include "codec/overlay_format.h"
#include "codec/zstd_codec.h"
#include "common/error.h"

namespace vmsynth {
namespace {

using format::BlockOp;
using format::OpKind;

std::vector<std::byte> random_block(uint64_t seed) {
  std::vector<std::byte> b(format::kBlockSize);
  std::mt19937_64 rng(seed);
  for (auto& x : b) x = static_cast<std::byte>(rng());
  return b;
}

TEST(FileHeader, RoundTrip) {
  format::FileHeader h;
  h.base_id.bytes[3] = 7;
  h.base_size = {123456789, 987654321};
  h.launch_size = {5, 1ull << 40};
  h.max_frame_blocks = 1024;
  auto bytes = format::encode_file_header(h);
  format::FileHeader d = format::decode_file_header(bytes);
  EXPECT_EQ(d.base_id, h.base_id);
  EXPECT_EQ(d.base_size, h.base_size);
  EXPECT_EQ(d.launch_size, h.launch_size);
  EXPECT_EQ(d.max_frame_blocks, 1024u);
}

TEST(FileHeader, EveryFlippedByteIsCaught) {
  auto good = format::encode_file_header(format::FileHeader{});
  for (size_t i = 0; i < good.size(); ++i) {
    auto bad = good;
    bad[i] ^= std::byte{0x04};
    EXPECT_THROW(format::decode_file_header(bad), Error) << "byte " << i;
  }
}

TEST(FrameHeader, LimitsAreEnforced) {
  format::FrameHeader h;
  h.type = format::FrameType::kBlocks;
  h.op_count = 2000;  // above kMaxFrameBlocks
  h.kind_count[0] = 2000;
  auto bytes = format::encode_frame_header(h);
  try {
    format::decode_frame_header(bytes);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("op count"), std::string::npos) << e.what();
  }
  h.op_count = 3;
  h.kind_count = {1, 1, 0, 0, 0};  // adds up to 2, not 3
  EXPECT_THROW(format::decode_frame_header(format::encode_frame_header(h)), Error);
  h.kind_count = {0, 0, 0, 0, 3};
  h.payload_raw = 4096;  // three literals need 12288 bytes
  EXPECT_THROW(format::decode_frame_header(format::encode_frame_header(h)), Error);
}

TEST(OpTable, RoundTripWithBackwardAndCrossImageAddresses) {
  std::vector<BlockOp> ops;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 1000; ++i) {
    BlockOp op;
    op.kind = static_cast<OpKind>(rng() % format::kOpKindCount);
    op.target = {static_cast<uint8_t>(rng() % 2), rng() % (1ull << 38)};
    if (op.kind == OpKind::kBaseCopy || op.kind == OpKind::kSelfCopy) {
      op.source = {static_cast<uint8_t>(rng() % 2), rng() % (1ull << 38)};
    }
    for (auto& b : op.hash.bytes) b = static_cast<uint8_t>(rng());
    ops.push_back(op);
  }
  auto raw = format::encode_op_table(ops);
  auto back = format::decode_op_table(raw, static_cast<uint32_t>(ops.size()));
  ASSERT_EQ(back.size(), ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    EXPECT_EQ(back[i].kind, ops[i].kind);
    EXPECT_EQ(back[i].target, ops[i].target);
    if (ops[i].kind == OpKind::kBaseCopy || ops[i].kind == OpKind::kSelfCopy) {
      EXPECT_EQ(back[i].source, ops[i].source);
    }
    EXPECT_EQ(back[i].hash, ops[i].hash);
  }
  // One op fewer than encoded leaves bytes over; one more runs out.
  EXPECT_THROW(format::decode_op_table(raw, static_cast<uint32_t>(ops.size() - 1)), Error);
  EXPECT_THROW(format::decode_op_table(raw, static_cast<uint32_t>(ops.size() + 1)), Error);
}

TEST(OpTable, UnknownKindIsRejected) {
  std::vector<BlockOp> ops(1);
  auto raw = format::encode_op_table(ops);
  raw[0] = std::byte{7};
  EXPECT_THROW(format::decode_op_table(raw, 1), Error);
}

TEST(Zstd, PrefixMakesAnEditedBlockTiny) {
  auto base = random_block(1);
  auto edited = base;
  edited[100] ^= std::byte{1};
  codec::ZstdCompressor cz(3, format::kZstdWindowLog);
  auto literal = cz.compress(edited);
  auto delta = cz.compress(edited, base);
  EXPECT_GT(literal.size(), 4000u);
  EXPECT_LT(delta.size(), 64u);
  codec::ZstdDecompressor dz;
  std::vector<std::byte> out(edited.size());
  dz.decompress(delta, base, out, "delta");
  EXPECT_EQ(out, edited);
  // Without the prefix the delta cannot decode to the right bytes.
  auto other = random_block(2);
  EXPECT_THROW(
      {
        dz.decompress(delta, other, out, "delta");
        if (out != edited) throw Error(ErrorCode::kCorrupt, "wrong output");
      },
      Error);
}

TEST(Zstd, SizeMismatchIsCorrupt) {
  codec::ZstdCompressor cz(1);
  auto data = random_block(3);
  auto z = cz.compress(data);
  codec::ZstdDecompressor dz;
  std::vector<std::byte> small(100);
  try {
    dz.decompress(z, {}, small, "payload");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  }
}

TEST(FrameCodec, BlocksFrameRoundTrip) {
  std::vector<BlockOp> ops(3);
  ops[0] = {OpKind::kZero, {0, 5}, {}, {}};
  ops[1] = {OpKind::kDelta, {1, 9}, {}, {}};
  ops[2] = {OpKind::kLiteral, {1, 10}, {}, {}};
  auto ref = random_block(4);
  auto d = ref;
  d[7] ^= std::byte{9};
  auto lit = random_block(5);
  std::vector<std::byte> payload(d);
  payload.insert(payload.end(), lit.begin(), lit.end());
  codec::FrameCodec fc(3);
  codec::EncodedFrame f = fc.encode_blocks(7, ops, payload, ref);
  std::span<const std::byte, format::kFrameHeaderSize> head(f.bytes.data(), format::kFrameHeaderSize);
  format::FrameHeader h = format::decode_frame_header(head);
  EXPECT_EQ(h.index, 7u);
  EXPECT_EQ(h.op_count, 3u);
  auto body = std::span(f.bytes).subspan(format::kFrameHeaderSize);
  auto back = fc.decode_blocks_table(h, body.first(h.table_stored));
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[1].target, (format::BlockAddress{1, 9}));
  std::vector<std::byte> out(h.payload_raw);
  fc.decode_payload(h, body.subspan(h.table_stored), ref, out);
  EXPECT_EQ(out, payload);
  // The delta block compressed to far less than a literal would.
  EXPECT_LT(h.payload_stored, format::kBlockSize + 200);
}

}  // namespace
}  // namespace vmsynth
