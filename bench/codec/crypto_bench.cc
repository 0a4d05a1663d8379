// codec benchmarks: the cost of overlay encryption.
//
//   BM_GcmSeal / BM_GcmOpen      AES-256-GCM (OpenSSL EVP, AES-NI where the
//                                CPU has it) over one 4 MiB frame payload,
//                                through FrameKeys: bytes/s = MB/s of cipher
//   BM_DecodePayload/sealed:0|1  FrameCodec::decode_payload of a 4 MiB
//                                blocks-frame payload (zstd level 3 of
//                                text-like blocks), plain vs sealed: what the
//                                decode stage pays for decryption
//   BM_OpenOverlayKeys/kdf       per-overlay key setup: HKDF (raw key) or
//                                scrypt N=2^15 r=8 p=1 (passphrase), once per
//                                synthesis
//
// Run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// for medians; results go to perf-data/encryption-<date>.json.
#include <benchmark/benchmark.h>

#include <random>

#include "codec/crypto.h"
#include "codec/frame_codec.h"

namespace vmsynth::codec {
namespace {

constexpr size_t kFrameBytes = 4u << 20;

struct Overlay {
  format::FileHeader h;
  std::array<std::byte, format::kFileHeaderSize> bytes;
  std::shared_ptr<const FrameKeys> keys;
};

Overlay sealed_overlay(const KeySpec& key, ScryptParams scrypt = {}) {
  Overlay o;
  auto k = FrameKeys::create(o.h, key, scrypt);
  o.bytes = format::encode_file_header(o.h);
  k->seal_header(o.bytes);
  o.h = format::decode_file_header(o.bytes);
  o.keys = k;
  return o;
}

KeySpec bench_key() {
  std::array<std::byte, kKeyBytes> k{};
  k[0] = std::byte{1};
  return raw_key(k);
}

std::vector<std::byte> text_blocks(size_t n) {
  static const char* kWords[] = {"frame ", "block ", "overlay ", "cloudlet ", "kernel ", "page ", "0x7f3a ", "\n"};
  std::mt19937_64 rng(1);
  std::vector<std::byte> v;
  v.reserve(n);
  while (v.size() < n) {
    const char* w = kWords[rng() % 8];
    for (const char* p = w; *p && v.size() < n; ++p) v.push_back(static_cast<std::byte>(*p));
  }
  return v;
}

void BM_GcmSeal(benchmark::State& state) {
  Overlay o = sealed_overlay(bench_key());
  std::vector<std::byte> in = text_blocks(kFrameBytes), out(kFrameBytes);
  std::array<std::byte, format::kFrameAadSize> aad{};
  uint64_t index = 0;
  for (auto _ : state) {
    auto tag = o.keys->seal(FrameKeys::kPayloadPart, index++, aad, in, out);
    benchmark::DoNotOptimize(tag);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFrameBytes));
}
BENCHMARK(BM_GcmSeal)->Unit(benchmark::kMicrosecond);

void BM_GcmOpen(benchmark::State& state) {
  Overlay o = sealed_overlay(bench_key());
  std::vector<std::byte> in = text_blocks(kFrameBytes), ct(kFrameBytes), out(kFrameBytes);
  std::array<std::byte, format::kFrameAadSize> aad{};
  auto tag = o.keys->seal(FrameKeys::kPayloadPart, 7, aad, in, ct);
  for (auto _ : state) {
    bool ok = o.keys->open(FrameKeys::kPayloadPart, 7, aad, ct, out, tag);
    if (!ok) state.SkipWithError("authentication failed");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFrameBytes));
}
BENCHMARK(BM_GcmOpen)->Unit(benchmark::kMicrosecond);

void BM_DecodePayload(benchmark::State& state) {
  const bool sealed = state.range(0) != 0;
  Overlay o = sealed_overlay(bench_key());
  std::vector<format::BlockOp> ops(format::kMaxFrameBlocks);
  for (uint32_t i = 0; i < ops.size(); ++i) {
    ops[i].kind = format::OpKind::kLiteral;
    ops[i].target = {0, i};
  }
  std::vector<std::byte> payload = text_blocks(kFrameBytes);
  FrameCodec codec(sealed ? o.keys : nullptr, 3);
  EncodedFrame f = codec.encode_blocks(0, ops, payload, {});
  auto body = std::span(f.bytes).subspan(format::kFrameHeaderSize);
  auto stored = body.subspan(f.header.table_stored);
  std::vector<std::byte> out(kFrameBytes);
  for (auto _ : state) {
    codec.decode_payload(f.header, stored, {}, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFrameBytes));
  state.counters["stored_bytes"] = static_cast<double>(stored.size());
}
BENCHMARK(BM_DecodePayload)->Arg(0)->Arg(1)->ArgName("sealed")->Unit(benchmark::kMicrosecond);

void BM_OpenOverlayKeys(benchmark::State& state) {
  const bool scrypt = state.range(0) != 0;
  std::string pass = "correct horse battery staple";
  KeySpec key = scrypt ? key_from_passphrase_file(std::as_bytes(std::span(pass)), "bench") : bench_key();
  Overlay o = sealed_overlay(key);
  for (auto _ : state) benchmark::DoNotOptimize(FrameKeys::open(o.h, o.bytes, key));
}
BENCHMARK(BM_OpenOverlayKeys)->Arg(0)->Arg(1)->ArgName("scrypt")->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace vmsynth::codec
