// The command line on bad input: each case is a distinct, clear error with a
// non-zero exit, no output directory (and no staging directory) left behind,
// and the base VM untouched. Runs the real vmsynth binary.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "codec/block_hash.h"
#include "codec/overlay_format.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

using namespace vmfiles;

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    write_sample_pair(dir_.path());
    auto r = run_vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o",
                          dir_ / "good.vmo"},
                         dir_.path());
    ASSERT_EQ(r.status, 0) << r.err;
    good_ = read_file(dir_ / "good.vmo");
    base_hash_ = tree_hash(dir_ / "base");
  }

  static Hash128 tree_hash(const std::string& dir) {
    StreamHash128 h;
    for (const char* f : {"memory.img", "disk.img", "devstate.bin"}) h.update(read_file(dir + "/" + f));
    return h.digest();
  }

  // Synthesizes `overlay` and checks the failure contract; returns stderr.
  std::string expect_failure(const Bytes& overlay, int code, const std::string& needle,
                             const std::vector<std::string>& extra = {}) {
    write_file(dir_ / "bad.vmo", overlay);
    std::vector<std::string> args = {"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "bad.vmo",
                                     "--out", dir_ / "out"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = run_vmsynth(args, dir_.path());
    EXPECT_EQ(r.status, code) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
    EXPECT_FALSE(exists(dir_ / "out"));
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      EXPECT_EQ(e.path().filename().string().find(".out.partial"), std::string::npos) << e.path();
    }
    EXPECT_EQ(tree_hash(dir_ / "base"), base_hash_);
    return r.err;
  }

  // Offset of the first blocks frame's header and its decoded header.
  std::pair<size_t, format::FrameHeader> first_blocks_frame() const {
    size_t at = format::kFileHeaderSize;
    for (;;) {
      std::span<const std::byte, format::kFrameHeaderSize> head(good_.data() + at, format::kFrameHeaderSize);
      format::FrameHeader h = format::decode_frame_header(head);
      if (h.type == format::FrameType::kBlocks) return {at, h};
      at += format::kFrameHeaderSize + h.body_size();
    }
  }

  TempDir dir_;
  Bytes good_;
  Hash128 base_hash_;
};

TEST_F(BadInput, GoodOverlaySucceeds) {
  write_file(dir_ / "copy.vmo", good_);
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "copy.vmo", "--out", dir_ / "out"},
                       dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read_file(dir_ / "out/disk.img"), read_file(dir_ / "launch/disk.img"));
  EXPECT_EQ(read_file(dir_ / "out/memory.img"), read_file(dir_ / "launch/memory.img"));
}

TEST_F(BadInput, TruncatedOverlay) {
  Bytes cut(good_.begin(), good_.begin() + static_cast<long>(good_.size() / 2));
  expect_failure(cut, 3, "truncated");
}

TEST_F(BadInput, TruncatedAtTheEndFrame) {
  Bytes cut(good_.begin(), good_.end() - static_cast<long>(format::kFrameHeaderSize + format::kTrailerSize));
  expect_failure(cut, 3, "before its end frame");
}

TEST_F(BadInput, FlippedByteInHeader) {
  Bytes bad = good_;
  bad[30] ^= std::byte{0x10};  // inside the base id
  expect_failure(bad, 3, "overlay header checksum mismatch");
}

TEST_F(BadInput, FlippedByteInFrameMetadata) {
  auto [at, h] = first_blocks_frame();
  Bytes bad = good_;
  bad[at + 32] ^= std::byte{0x01};  // the op count
  expect_failure(bad, 3, "frame header checksum mismatch");
}

TEST_F(BadInput, FlippedByteInOpTable) {
  auto [at, h] = first_blocks_frame();
  Bytes bad = good_;
  bad[at + format::kFrameHeaderSize + h.table_stored / 2] ^= std::byte{0x01};
  expect_failure(bad, 3, "op table checksum mismatch");
}

TEST_F(BadInput, FlippedByteInPayload) {
  // The payload frame is the one with a payload.
  size_t at = format::kFileHeaderSize;
  format::FrameHeader h;
  for (;;) {
    h = format::decode_frame_header(
        std::span<const std::byte, format::kFrameHeaderSize>(good_.data() + at, format::kFrameHeaderSize));
    if (h.payload_stored > 0 && h.type == format::FrameType::kBlocks) break;
    at += format::kFrameHeaderSize + h.body_size();
  }
  Bytes bad = good_;
  bad[at + format::kFrameHeaderSize + h.table_stored + h.payload_stored / 2] ^= std::byte{0x01};
  expect_failure(bad, 3, "payload checksum mismatch");
  // The same with a qcow2 launch disk: nothing left either.
  expect_failure(bad, 3, "payload checksum mismatch", {"--disk-format", "qcow2"});
}

TEST_F(BadInput, DiskFormat) {
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out",
                        "--disk-format", "vmdk"},
                       dir_.path());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--disk-format"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(dir_ / "out"));
  r = run_vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out",
                   "--disk-format", "qcow2", "--json"},
                  dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).value("disk_format", ""), "qcow2");
  EXPECT_TRUE(exists(dir_ / "out/disk.qcow2"));
  EXPECT_FALSE(exists(dir_ / "out/disk.img"));
  EXPECT_EQ(read_file(dir_ / "out/memory.img"), read_file(dir_ / "launch/memory.img"));
  EXPECT_EQ(tree_hash(dir_ / "base"), base_hash_);
}

TEST_F(BadInput, WriteBackend) {
  const std::vector<std::string> synth = {"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "good.vmo",
                                          "--out", dir_ / "out"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = synth;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_vmsynth(args, dir_.path());
  };
  auto r = with({"--write-backend", "aio"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--write-backend"), std::string::npos) << r.err;
  r = with({"--write-backend", "io_uring", "--no-io-uring"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("excludes"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(dir_ / "out"));
  r = with({"--write-backend", "pwrite", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).value("write_backend", ""), "pwrite");
  EXPECT_EQ(read_file(dir_ / "out/disk.img"), read_file(dir_ / "launch/disk.img"));
  EXPECT_EQ(tree_hash(dir_ / "base"), base_hash_);
}

TEST_F(BadInput, WrongBase) {
  VmImages other{random_bytes(64 * kBlock, 9), random_bytes(96 * kBlock, 10), std::nullopt, std::nullopt};
  write_vm(dir_ / "other", other);
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "other", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out"},
                       dir_.path());
  EXPECT_EQ(r.status, 4) << r.err;
  EXPECT_NE(r.err.find("another base VM"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(dir_ / "out"));
}

TEST_F(BadInput, WrongBaseOfTheSameSize) {
  // Same sizes, one byte different: only the content id can tell.
  Bytes mem = read_file(dir_ / "base/memory.img");
  std::filesystem::copy(dir_ / "base", dir_ / "other");
  mem[12345] ^= std::byte{1};
  write_file(dir_ / "other/memory.img", mem);
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "other", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out"},
                       dir_.path());
  EXPECT_EQ(r.status, 4) << r.err;
  EXPECT_FALSE(exists(dir_ / "out"));
}

TEST_F(BadInput, UnknownVersion) {
  Bytes bad = good_;
  bad[8] = std::byte{2};  // major version 2
  bad[10] = std::byte{0};  // minor 0, whatever minor version the creator writes
  std::string err = expect_failure(bad, 7, "version 2.0 is not supported");
}

TEST_F(BadInput, NotAnOverlay) {
  expect_failure(text_bytes(1000, 5), 3, "not a vmsynth overlay");
}

TEST_F(BadInput, ExistingOutputDirectoryIsRefused) {
  std::filesystem::create_directories(dir_ / "out");
  write_file(dir_ / "out/keep.txt", Bytes{std::byte{'x'}});
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out"},
                       dir_.path());
  EXPECT_EQ(r.status, 8) << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_TRUE(exists(dir_ / "out/keep.txt"));  // untouched
  EXPECT_FALSE(exists(dir_ / "out/disk.img"));
  // With --force it is replaced.
  r = run_vmsynth(
      {"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "good.vmo", "--out", dir_ / "out", "--force"},
      dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(exists(dir_ / "out/keep.txt"));
  EXPECT_EQ(read_file(dir_ / "out/disk.img"), read_file(dir_ / "launch/disk.img"));
}

TEST_F(BadInput, ErrorsAsJson) {
  write_file(dir_ / "bad.vmo", text_bytes(1000, 5));
  auto r = run_vmsynth(
      {"synthesize", "--base", dir_ / "base", "--overlay", dir_ / "bad.vmo", "--out", dir_ / "out", "--json"},
      dir_.path());
  EXPECT_EQ(r.status, 3);
  EXPECT_NE(r.out.find("\"code\": \"corrupt\""), std::string::npos) << r.out;
}

TEST_F(BadInput, UsageErrors) {
  auto r = run_vmsynth({"synthesize", "--base", dir_ / "base"}, dir_.path());
  EXPECT_EQ(r.status, 2);
  r = run_vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o", dir_ / "x.vmo",
                   "--level", "fast"},
                  dir_.path());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--level"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(dir_ / "x.vmo"));
  r = run_vmsynth({"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o", dir_ / "good.vmo"},
                  dir_.path());
  EXPECT_EQ(r.status, 8) << r.err;  // existing overlay file without --force
  r = run_vmsynth({"--help"}, dir_.path());
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("synthesize"), std::string::npos);
}

TEST_F(BadInput, InfoCountsMatchTheConstruction) {
  auto r = run_vmsynth({"overlay", "info", dir_ / "good.vmo", "--json"}, dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  // 20 literal memory blocks; on disk one zero, one base copy, one small edit.
  // (Text blocks over text base blocks may travel as deltas.)
  EXPECT_EQ(j["ops_memory"]["literal"]["count"].get<int>() + j["ops_memory"]["delta"]["count"].get<int>(), 20);
  EXPECT_EQ(j["ops_memory"]["literal"]["bytes"].get<int>() + j["ops_memory"]["delta"]["bytes"].get<int>(), 20 * 4096);
  EXPECT_EQ(j["ops_memory"]["zero"]["count"], 0);
  EXPECT_EQ(j["ops_disk"]["zero"]["count"], 1);
  EXPECT_EQ(j["ops_disk"]["base_copy"]["count"], 1);
  EXPECT_EQ(j["ops_disk"]["delta"]["count"].get<int>() + j["ops_disk"]["literal"]["count"].get<int>(), 1);
  EXPECT_EQ(j["ops"]["self_copy"]["count"], 0);
  EXPECT_EQ(j["overlay_bytes"], good_.size());
  EXPECT_EQ(j["launch_disk_bytes"], 96 * 4096);
  ASSERT_EQ(j["files"].size(), 1u);
  EXPECT_EQ(j["files"][0]["name"], "devstate.bin");
}

}  // namespace
}  // namespace vmsynth
