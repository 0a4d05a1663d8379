// Round trips through overlay creation and the serial engine on hand-made
// base/launch pairs of many shapes: the synthesized launch VM must equal the
// original byte for byte, and `overlay info` must count exactly the ops the
// shape implies.
#include <gtest/gtest.h>

#include "common/error.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/synthesis.h"
#include "io/byte_source.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

using namespace vmfiles;
using format::OpKind;

struct Counts {
  uint64_t zero = 0, base_copy = 0, self_copy = 0, delta = 0, literal = 0;
};

class RoundTrip : public ::testing::Test {
 protected:
  // Creates the overlay, checks its op counts (when given), synthesizes with
  // the serial engine and compares every launch file.
  OverlayInfo run(const VmImages& base, const VmImages& launch, std::optional<Counts> expect = std::nullopt,
                  int level = 3) {
    write_vm(dir_ / "base", base);
    write_vm(dir_ / "launch", launch);
    CreateOptions c;
    c.base_dir = dir_ / "base";
    c.launch_dir = dir_ / "launch";
    c.output = dir_ / "app.vmo";
    c.level = level;
    c.force = true;
    c.require_page_aligned_memory = false;  // SizesNotMultipleOfBlock tests the tail blocks
    CreateStats cs = create_overlay(c);
    EXPECT_EQ(cs.overlay_bytes, read_file(c.output).size());

    auto src = io::open_source(c.output);
    OverlayInfo info = inspect_overlay(*src);
    for (unsigned k = 0; k < format::kOpKindCount; ++k) EXPECT_EQ(info.kind_count[k], cs.kind_count[k]) << k;
    if (expect) {
      EXPECT_EQ(info.kind_count[0], expect->zero);
      EXPECT_EQ(info.kind_count[1], expect->base_copy);
      EXPECT_EQ(info.kind_count[2], expect->self_copy);
      EXPECT_EQ(info.kind_count[3], expect->delta);
      EXPECT_EQ(info.kind_count[4], expect->literal);
    }

    SynthesizeOptions s;
    s.base_dir = dir_ / "base";
    s.out_dir = dir_ / "out";
    s.engine = EngineKind::kSerial;
    s.force = true;
    s.use_base_id_cache = false;
    auto src2 = io::open_source(c.output);
    SynthesizeStats ss = synthesize(*src2, s);
    EXPECT_EQ(ss.overlay_bytes, cs.overlay_bytes);
    EXPECT_EQ(read_file(dir_ / "out/memory.img"), launch.memory);
    EXPECT_EQ(read_file(dir_ / "out/disk.img"), launch.disk);
    EXPECT_EQ(exists(dir_ / "out/devstate.bin"), launch.devstate.has_value());
    if (launch.devstate) {
      EXPECT_EQ(read_file(dir_ / "out/devstate.bin"), *launch.devstate);
    }
    if (launch.vmjson) {
      EXPECT_EQ(read_file(dir_ / "out/vm.json"), *launch.vmjson);
    }
    // The base is never modified.
    EXPECT_EQ(read_file(dir_ / "base/memory.img"), base.memory);
    EXPECT_EQ(read_file(dir_ / "base/disk.img"), base.disk);
    return info;
  }

  TempDir dir_;
};

VmImages random_vm(size_t mem, size_t disk, uint64_t seed) {
  return {random_bytes(mem, seed), random_bytes(disk, seed + 1000), std::nullopt, std::nullopt};
}

TEST_F(RoundTrip, IdenticalImagesGiveAnEmptyOverlay) {
  VmImages base = random_vm(64 * kBlock, 128 * kBlock, 1);
  OverlayInfo info = run(base, base, Counts{});
  EXPECT_EQ(info.block_frames, 0u);
}

TEST_F(RoundTrip, AllZeroLaunch) {
  VmImages base = random_vm(32 * kBlock, 48 * kBlock, 2);
  VmImages launch{Bytes(base.memory.size()), Bytes(base.disk.size()), std::nullopt, std::nullopt};
  run(base, launch, Counts{.zero = 80});
}

TEST_F(RoundTrip, AllRandomLaunch) {
  VmImages base = random_vm(32 * kBlock, 48 * kBlock, 3);
  VmImages launch = random_vm(32 * kBlock, 48 * kBlock, 4);
  run(base, launch, Counts{.literal = 80});
}

TEST_F(RoundTrip, ZeroBaseAndTextLaunch) {
  VmImages base{Bytes(16 * kBlock), Bytes(16 * kBlock), std::nullopt, std::nullopt};
  VmImages launch{text_bytes(16 * kBlock, 5), text_bytes(16 * kBlock, 6), std::nullopt, std::nullopt};
  OverlayInfo info = run(base, launch);
  EXPECT_EQ(info.kind_count[static_cast<unsigned>(OpKind::kDelta)], 0u);  // a zero base block is no reference
  EXPECT_LT(info.payload_stored_bytes, info.payload_raw_bytes / 2);
}

TEST_F(RoundTrip, GrownDisk) {
  VmImages base = random_vm(16 * kBlock, 32 * kBlock, 7);
  VmImages launch = base;
  launch.disk.resize(40 * kBlock);  // 8 new blocks: 4 zero (no op needed), 4 with data
  for (int i = 0; i < 4; ++i) put_block(launch.disk, 32 + i, random_bytes(kBlock, 100 + i));
  run(base, launch, Counts{.literal = 4});
}

TEST_F(RoundTrip, ShrunkImages) {
  VmImages base = random_vm(16 * kBlock, 32 * kBlock, 8);
  VmImages launch = base;
  launch.memory.resize(10 * kBlock);
  launch.disk.resize(20 * kBlock + 512);  // cut inside a block: the tail block differs from the base's
  OverlayInfo info = run(base, launch);
  EXPECT_EQ(info.kind_count[3] + info.kind_count[4], 1u);  // the tail block, as DELTA or LITERAL
  EXPECT_EQ(info.kind_count[0] + info.kind_count[1] + info.kind_count[2], 0u);
}

TEST_F(RoundTrip, SizesNotMultipleOfBlock) {
  VmImages base = random_vm(10 * kBlock + 1000, 7 * kBlock + 1536, 9);
  VmImages launch = base;
  // Change bytes in both tail blocks; grow the disk by 2560 bytes of data.
  launch.memory[10 * kBlock + 10] ^= std::byte{0xff};
  launch.disk[7 * kBlock + 100] ^= std::byte{0xff};
  Bytes extra = random_bytes(2560, 10);
  launch.disk.insert(launch.disk.end(), extra.begin(), extra.end());
  OverlayInfo info = run(base, launch);
  EXPECT_EQ(info.kind_count[3] + info.kind_count[4], 2u);  // the two tail blocks (the disk's grows into block 7 and 8)
}

TEST_F(RoundTrip, OneChangedBlock) {
  VmImages base = random_vm(64 * kBlock, 64 * kBlock, 11);
  VmImages launch = base;
  launch.disk[17 * kBlock + 5] ^= std::byte{1};
  run(base, launch, Counts{.delta = 1});
}

TEST_F(RoundTrip, EveryOpKind) {
  // Memory: 32 blocks, disk: 64 blocks, base = compressible text, distinct per block.
  VmImages base{text_bytes(32 * kBlock, 20), text_bytes(64 * kBlock, 21), Bytes(300000, std::byte{7}),
                Bytes{std::byte{'{'}, std::byte{'}'}}};
  for (uint64_t b = 0; b < 32; ++b) put_block(base.memory, b, random_bytes(kBlock, 1000 + b));
  for (uint64_t b = 0; b < 64; ++b) put_block(base.disk, b, random_bytes(kBlock, 2000 + b));
  VmImages launch = base;
  // 3 ZERO: memory blocks zeroed.
  for (uint64_t b : {1, 2, 3}) put_block(launch.memory, b, Bytes(kBlock));
  // 4 BASE_COPY: memory 10..11 get base disk blocks 40..41; disk 5..6 get base memory 20..21.
  put_block(launch.memory, 10, get_block(base.disk, 40));
  put_block(launch.memory, 11, get_block(base.disk, 41));
  put_block(launch.disk, 5, get_block(base.memory, 20));
  put_block(launch.disk, 6, get_block(base.memory, 21));
  // 5 LITERAL fresh blocks in memory 25..29, 3 of them also on disk 50..52 (SELF_COPY, memory canonical),
  // and one twice more in disk 60 (SELF_COPY).
  for (uint64_t i = 0; i < 5; ++i) put_block(launch.memory, 25 + i, random_bytes(kBlock, 5000 + i));
  for (uint64_t i = 0; i < 3; ++i) put_block(launch.disk, 50 + i, random_bytes(kBlock, 5000 + i));
  put_block(launch.disk, 60, random_bytes(kBlock, 5004));
  // 2 DELTA: small in-place edits.
  launch.disk[30 * kBlock + 100] ^= std::byte{0x55};
  launch.memory[15 * kBlock + 2000] ^= std::byte{0x55};
  // Opaque files change slightly.
  (*launch.devstate)[1234] = std::byte{8};
  launch.vmjson = Bytes{std::byte{'{'}, std::byte{' '}, std::byte{'}'}};
  OverlayInfo info = run(base, launch, Counts{.zero = 3, .base_copy = 4, .self_copy = 4, .delta = 2, .literal = 5});
  ASSERT_EQ(info.files.size(), 2u);
  EXPECT_EQ(info.files[0].name, "devstate.bin");
  EXPECT_TRUE(info.files[0].base_prefix);
  EXPECT_LT(info.files[0].stored, 200u);  // a one-byte change against a 300 KB reference
}

TEST_F(RoundTrip, MovedPagesFoundAtAnyOffset) {
  VmImages base = random_vm(128 * kBlock, 16 * kBlock, 30);
  VmImages launch = base;
  // Rotate memory by 37 blocks: every block exists in the base, elsewhere.
  for (uint64_t b = 0; b < 128; ++b) put_block(launch.memory, b, get_block(base.memory, (b + 37) % 128));
  OverlayInfo info = run(base, launch, Counts{.base_copy = 128});
  EXPECT_LT(info.overlay_bytes, 16 * kBlock);  // hashes and addresses only
}

TEST_F(RoundTrip, StrongestLevelRoundTrips) {
  VmImages base = random_vm(16 * kBlock, 16 * kBlock, 40);
  VmImages launch = base;
  put_block(launch.disk, 3, text_bytes(kBlock, 41));
  launch.memory[5 * kBlock] ^= std::byte{1};
  run(base, launch, std::nullopt, kMaxLevel);
}

TEST_F(RoundTrip, MissingLaunchImageIsAUsageError) {
  VmImages base = random_vm(4 * kBlock, 4 * kBlock, 50);
  write_vm(dir_ / "base", base);
  write_file(dir_ / "launch/memory.img", base.memory);
  CreateOptions c;
  c.base_dir = dir_ / "base";
  c.launch_dir = dir_ / "launch";
  c.output = dir_ / "app.vmo";
  try {
    create_overlay(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("disk.img"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(exists(c.output));
}

}  // namespace
}  // namespace vmsynth
