// `vmsynth overlay verify` and what `vmsynth overlay info` says it did not
// check, through the real vmsynth binary: exit codes, messages naming the
// frame, the JSON counts, and that info never claims payload checks or
// payload authentication it did not do.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "codec/overlay_format.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

using namespace vmfiles;

class VerifyCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    write_sample_pair(dir_.path());
    // A key file as `head -c 32 /dev/urandom | xxd -p -c 64` would make it.
    const char* digits = "0123456789abcdef";
    std::string hex;
    for (int i = 0; i < 64; ++i) hex += digits[(i * 7 + i / 16) % 16];
    write_file(dir_ / "key", Bytes(reinterpret_cast<const std::byte*>(hex.data()),
                                   reinterpret_cast<const std::byte*>(hex.data() + hex.size())));
    for (bool encrypted : {false, true}) {
      std::vector<std::string> args = {"overlay", "create", "--base", dir_ / "base", "--launch", dir_ / "launch", "-o",
                                       dir_ / (encrypted ? "sealed.vmo" : "good.vmo")};
      if (encrypted) args.insert(args.end(), {"--key-file", dir_ / "key"});
      auto r = run_vmsynth(args, dir_.path());
      ASSERT_EQ(r.status, 0) << r.err;
    }
    good_ = read_file(dir_ / "good.vmo");
  }

  RunResult vmsynth(const std::vector<std::string>& args, const std::string& stdin_file = "") {
    return run_vmsynth(args, dir_.path(), stdin_file);
  }

  nlohmann::json json_of(const RunResult& r) {
    EXPECT_EQ(r.status, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }

  uint64_t total_ops(const std::string& overlay, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"overlay", "info", overlay, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto j = json_of(vmsynth(args));
    uint64_t n = 0;
    for (const auto& [kind, v] : j["ops"].items()) n += v["count"].get<uint64_t>();
    return n;
  }

  // The first blocks frame with a payload: its header offset and header.
  std::pair<size_t, format::FrameHeader> payload_frame() const {
    size_t at = format::kFileHeaderSize;
    for (;;) {
      auto h = format::decode_frame_header(
          std::span<const std::byte, format::kFrameHeaderSize>(good_.data() + at, format::kFrameHeaderSize));
      if (h.type == format::FrameType::kBlocks && h.payload_stored > 0) return {at, h};
      at += format::kFrameHeaderSize + h.body_size();
    }
  }

  // good.vmo with one byte of the first blocks payload flipped, as bad.vmo.
  std::string flipped_payload() {
    auto [at, h] = payload_frame();
    Bytes bad = good_;
    bad[at + format::kFrameHeaderSize + h.table_stored + h.payload_stored / 2] ^= std::byte{0x04};
    write_file(dir_ / "bad.vmo", bad);
    return dir_ / "bad.vmo";
  }

  TempDir dir_;
  Bytes good_;
};

TEST_F(VerifyCommand, CleanOverlayWithTheBaseChecksEveryBlock) {
  auto j = json_of(vmsynth({"overlay", "verify", dir_ / "good.vmo", "--base", dir_ / "base", "--json"}));
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["blocks_checked"].get<uint64_t>(), total_ops(dir_ / "good.vmo"));
  EXPECT_EQ(j["blocks_not_checked"], 0);
  EXPECT_EQ(j["not_checked_reason"], "");
  EXPECT_EQ(j["files_checked"], 1);  // devstate.bin
  EXPECT_EQ(j["base_checked"], true);
  EXPECT_EQ(j["authenticated"], false);  // unencrypted
  EXPECT_EQ(j["overlay_bytes"], good_.size());
  auto info = json_of(vmsynth({"overlay", "info", dir_ / "good.vmo", "--json"}));
  EXPECT_EQ(j["frames"], info["frames"]);
  EXPECT_GT(j["frames"].get<int>(), 1);
  // The same from standard input, in text.
  auto r = vmsynth({"overlay", "verify", "-", "--base", dir_ / "base"}, dir_ / "good.vmo");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("intact"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("NOT CHECKED"), std::string::npos) << r.out;
}

TEST_F(VerifyCommand, WithoutTheBaseBlocksThatNeedItAreReportedAsNotChecked) {
  auto j = json_of(vmsynth({"overlay", "verify", dir_ / "good.vmo", "--json"}));
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["base_checked"], false);
  EXPECT_GT(j["blocks_not_checked"].get<uint64_t>(), 0u);
  EXPECT_GT(j["blocks_not_checked_by_kind"]["base_copy"].get<uint64_t>(), 0u);
  EXPECT_GT(j["blocks_not_checked_by_kind"]["delta"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["blocks_checked"].get<uint64_t>() + j["blocks_not_checked"].get<uint64_t>(),
            total_ops(dir_ / "good.vmo"));
  EXPECT_NE(j["not_checked_reason"].get<std::string>().find("no base VM given"), std::string::npos) << j;
  auto r = vmsynth({"overlay", "verify", dir_ / "good.vmo"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("NOT CHECKED: " + std::to_string(j["blocks_not_checked"].get<uint64_t>()) + " blocks"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("--base DIR"), std::string::npos) << r.out;
}

TEST_F(VerifyCommand, FlippedPayloadByteIsCorruptNamingTheFrame) {
  const std::string bad = flipped_payload();
  auto [at, h] = payload_frame();
  const std::string where = "frame " + std::to_string(h.index) + " at byte " + std::to_string(at);
  for (bool with_base : {false, true}) {
    std::vector<std::string> args = {"overlay", "verify", bad};
    if (with_base) args.insert(args.end(), {"--base", dir_ / "base"});
    auto r = vmsynth(args);
    EXPECT_EQ(r.status, 3) << r.err;
    EXPECT_NE(r.err.find("payload checksum mismatch"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(where), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  auto r = vmsynth({"overlay", "verify", bad, "--json"});
  EXPECT_EQ(r.status, 3);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["error"]["code"], "corrupt");
  EXPECT_EQ(j["error"]["context"], where);
}

TEST_F(VerifyCommand, EncryptedOverlayNeedsItsKey) {
  auto r = vmsynth({"overlay", "verify", dir_ / "sealed.vmo"});
  EXPECT_EQ(r.status, 5) << r.err;
  EXPECT_NE(r.err.find("verifying it needs its key"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--key-file"), std::string::npos) << r.err;
  auto j = json_of(vmsynth({"overlay", "verify", dir_ / "sealed.vmo", "--key-file", dir_ / "key", "--base",
                            dir_ / "base", "--json"}));
  EXPECT_EQ(j["authenticated"], true);
  EXPECT_EQ(j["encrypted"], true);
  EXPECT_EQ(j["blocks_checked"].get<uint64_t>(), total_ops(dir_ / "sealed.vmo", {"--key-file", dir_ / "key"}));
  write_file(dir_ / "other.key", Bytes(32, std::byte{9}));
  r = vmsynth({"overlay", "verify", dir_ / "sealed.vmo", "--key-file", dir_ / "other.key"});
  EXPECT_EQ(r.status, 5) << r.err;
  r = vmsynth({"overlay", "verify", dir_ / "good.vmo", "--key-file", dir_ / "key"});
  EXPECT_EQ(r.status, 5) << r.err;  // a key for an unencrypted overlay, as synthesize refuses it
}

TEST_F(VerifyCommand, WrongBaseIsExitFour) {
  VmImages other{random_bytes(64 * kBlock, 9), random_bytes(96 * kBlock, 10), std::nullopt, std::nullopt};
  write_vm(dir_ / "other", other);
  auto r = vmsynth({"overlay", "verify", dir_ / "good.vmo", "--base", dir_ / "other"});
  EXPECT_EQ(r.status, 4) << r.err;
  EXPECT_NE(r.err.find("another base VM"), std::string::npos) << r.err;
}

TEST_F(VerifyCommand, HelpSaysWhatIsNotCheckedWithoutTheBase) {
  auto r = vmsynth({"overlay", "verify", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("Without --base"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exit status is 0"), std::string::npos) << r.out;
  r = vmsynth({"overlay", "info", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("overlay verify"), std::string::npos) << r.out;
}

// ---- overlay info does not claim what it did not check ------------------------

TEST_F(VerifyCommand, InfoOnAFlippedPayloadSaysPayloadsWereNotChecked) {
  const std::string bad = flipped_payload();
  auto j = json_of(vmsynth({"overlay", "info", bad, "--json"}));  // info cannot see the damage
  EXPECT_EQ(j["payloads_checked"], false);
  EXPECT_EQ(j["payloads_authenticated"], false);
  EXPECT_EQ(j["authenticated"], false);  // unencrypted: nothing is authenticated
  EXPECT_EQ(j["checked"].get<std::string>().find("payload"), std::string::npos) << j["checked"];
  EXPECT_NE(j["not_checked"].get<std::string>().find("payloads"), std::string::npos) << j["not_checked"];
  EXPECT_NE(j["not_checked"].get<std::string>().find("block and file contents"), std::string::npos);
  auto r = vmsynth({"overlay", "info", bad});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("not checked: payloads"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("vmsynth overlay verify"), std::string::npos) << r.out;
  // What info missed, verify finds.
  EXPECT_EQ(vmsynth({"overlay", "verify", bad}).status, 3);
}

TEST_F(VerifyCommand, InfoAuthenticatesHeadersOnlyAndSaysSo) {
  auto with = json_of(vmsynth({"overlay", "info", dir_ / "sealed.vmo", "--key-file", dir_ / "key", "--json"}));
  EXPECT_EQ(with["authenticated"], true);  // headers, op tables, file records, trailer
  EXPECT_EQ(with["payloads_authenticated"], false);
  EXPECT_EQ(with["payloads_checked"], false);
  EXPECT_NE(with["checked"].get<std::string>().find("authenticated with the key"), std::string::npos);
  EXPECT_NE(with["not_checked"].get<std::string>().find("GCM tags"), std::string::npos) << with["not_checked"];
  auto without = json_of(vmsynth({"overlay", "info", dir_ / "sealed.vmo", "--json"}));
  EXPECT_EQ(without["authenticated"], false);
  EXPECT_EQ(without["tables_decoded"], false);
  EXPECT_NE(without["not_checked"].get<std::string>().find("nothing authenticated"), std::string::npos);
  auto r = vmsynth({"overlay", "info", dir_ / "sealed.vmo", "--key-file", dir_ / "key"});
  EXPECT_NE(r.out.find("(payloads not)"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace vmsynth
