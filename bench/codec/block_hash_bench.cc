// codec benchmarks: block hashing (XXH3-128) and zero detection (ISA-L).
//
// Both walk a 64 MiB buffer (bigger than the last-level cache, as an image
// is) in 4 KiB blocks, one call per block, the way overlay creation and the
// base index see images. Bytes processed = bytes walked. Run with
// --benchmark_repetitions=5 --benchmark_report_aggregates_only=true.
#include <benchmark/benchmark.h>

#include <span>

#include "bench/codec/bench_corpus.h"
#include "codec/block_hash.h"

namespace vmsynth {
namespace {

constexpr size_t kBufferBytes = 64u << 20;

const std::vector<std::byte>& mixed() {
  static const std::vector<std::byte> buf = bench::vm_like_buffer(kBufferBytes);
  return buf;
}

const std::vector<std::byte>& zeros() {
  static const std::vector<std::byte> buf(kBufferBytes);
  return buf;
}

// One function serves every per-block walk: `fn` is applied to each block.
template <typename Fn>
void walk_blocks(benchmark::State& state, const std::vector<std::byte>& buf, size_t block, Fn fn) {
  std::span<const std::byte> all(buf);
  for (auto _ : state) {
    for (size_t off = 0; off < all.size(); off += block) benchmark::DoNotOptimize(fn(all.subspan(off, block)));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * all.size()));
}

void BM_HashBlock(benchmark::State& state) {
  const size_t block = static_cast<size_t>(state.range(0));
  walk_blocks(state, mixed(), block, [block](std::span<const std::byte> b) { return hash_block(b, block); });
}
BENCHMARK(BM_HashBlock)->Arg(4096)->Unit(benchmark::kMillisecond)->MinTime(0.3);

// hash128 of the whole buffer in one call (base id, file records).
void BM_Hash128Whole(benchmark::State& state) {
  std::span<const std::byte> all(mixed());
  for (auto _ : state) benchmark::DoNotOptimize(hash128(all));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * all.size()));
}
BENCHMARK(BM_Hash128Whole)->Unit(benchmark::kMillisecond)->MinTime(0.3);

// Zero blocks are the worst case for is_zero (it must read every byte);
// mixed content exits at the first non-zero byte of most blocks.
void BM_IsZero_AllZero(benchmark::State& state) {
  walk_blocks(state, zeros(), 4096, [](std::span<const std::byte> b) { return is_zero(b); });
}
BENCHMARK(BM_IsZero_AllZero)->Unit(benchmark::kMillisecond)->MinTime(0.3);

void BM_IsZero_Mixed(benchmark::State& state) {
  walk_blocks(state, mixed(), 4096, [](std::span<const std::byte> b) { return is_zero(b); });
}
BENCHMARK(BM_IsZero_Mixed)->Unit(benchmark::kMillisecond)->MinTime(0.3);

}  // namespace
}  // namespace vmsynth
