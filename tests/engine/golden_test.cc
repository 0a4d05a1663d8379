// A small golden overlay, committed under tests/golden/, decoded against a
// base VM that this test rebuilds deterministically. The synthesized launch
// VM must hash to the committed value, so any change to the format or to how
// it is decoded is deliberate: regenerate with VMSYNTH_UPDATE_GOLDEN=1 (see
// tests/golden/README.md) and say why in the commit.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "codec/block_hash.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/synthesis.h"
#include "io/byte_source.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

using namespace vmfiles;

const std::string kGoldenDir = std::string(VMSYNTH_SOURCE_DIR) + "/tests/golden";

// Base and launch with every op kind, unaligned sizes, a grown disk and both opaque files.
std::pair<VmImages, VmImages> golden_pair() {
  VmImages base{text_bytes(16 * kBlock + 1000, 1), random_bytes(24 * kBlock + 512, 2), text_bytes(20000, 3),
                text_bytes(300, 4)};
  for (uint64_t b = 0; b < 16; b += 3) put_block(base.memory, b, random_bytes(kBlock, 10 + b));
  VmImages launch = base;
  put_block(launch.memory, 1, Bytes(kBlock));                              // ZERO
  put_block(launch.memory, 2, get_block(base.disk, 9));                    // BASE_COPY
  put_block(launch.memory, 4, random_bytes(kBlock, 99));                   // LITERAL
  launch.memory[5 * kBlock + 77] ^= std::byte{0x5a};                       // DELTA
  launch.memory[16 * kBlock + 10] ^= std::byte{1};                         // unaligned tail block
  Bytes grown = random_bytes(3 * kBlock, 98);
  launch.disk.insert(launch.disk.end(), grown.begin(), grown.end());       // grown disk
  put_block(launch.disk, 6, random_bytes(kBlock, 99));                     // SELF_COPY of memory block 4
  (*launch.devstate)[100] = std::byte{'!'};
  launch.vmjson = text_bytes(310, 5);
  return {base, launch};
}

Hash128 vm_hash(const std::string& dir) {
  StreamHash128 h;
  for (const char* f : {"memory.img", "disk.img", "devstate.bin", "vm.json"}) {
    Bytes b = read_file(dir + "/" + f);
    h.update_u64(b.size());
    h.update(b);
  }
  return h.digest();
}

TEST(Golden, SmallOverlayDecodesToTheRecordedLaunchVm) {
  TempDir dir;
  auto [base, launch] = golden_pair();
  write_vm(dir / "base", base);
  write_vm(dir / "launch", launch);

  if (const char* u = std::getenv("VMSYNTH_UPDATE_GOLDEN"); u && std::string(u) == "1") {
    CreateOptions c;
    c.base_dir = dir / "base";
    c.launch_dir = dir / "launch";
    c.output = kGoldenDir + "/small.vmo";
    c.level = 19;
    c.force = true;
    c.require_page_aligned_memory = false;  // the golden pair has unaligned images on purpose
    create_overlay(c);
    std::ofstream(kGoldenDir + "/small.expected") << vm_hash(dir / "launch").hex() << "\n";
    GTEST_SKIP() << "golden overlay regenerated in " << kGoldenDir;
  }

  std::string expected;
  std::ifstream(kGoldenDir + "/small.expected") >> expected;
  // The generator itself must not have drifted, or the comparison below means nothing.
  ASSERT_EQ(vm_hash(dir / "launch").hex(), expected);

  auto info_src = io::open_source(kGoldenDir + "/small.vmo");
  OverlayInfo info = inspect_overlay(*info_src);
  EXPECT_EQ(info.kind_count[static_cast<unsigned>(format::OpKind::kZero)], 1u);
  EXPECT_EQ(info.kind_count[static_cast<unsigned>(format::OpKind::kBaseCopy)], 1u);
  EXPECT_EQ(info.kind_count[static_cast<unsigned>(format::OpKind::kSelfCopy)], 1u);
  EXPECT_EQ(info.files.size(), 2u);

  for (EngineKind engine : {EngineKind::kSerial, EngineKind::kParallel}) {
    SynthesizeOptions s;
    s.base_dir = dir / "base";
    s.out_dir = dir / "out";
    s.engine = engine;
    s.force = true;
    auto src = io::open_source(kGoldenDir + "/small.vmo");
    synthesize(*src, s);
    EXPECT_EQ(vm_hash(dir / "out").hex(), expected) << (engine == EngineKind::kSerial ? "serial" : "parallel");
  }
}

}  // namespace
}  // namespace vmsynth
