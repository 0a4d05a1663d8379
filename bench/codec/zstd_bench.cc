// codec benchmarks: zstd compress/decompress by level and frame size, and
// delta-against-prefix encode/decode (codec/zstd_codec.h).
//
// Input: 16 MiB of VM-like pages (bench/codec/bench_corpus.h), cut into
// frames of 256 KiB, 1 MiB or 4 MiB; each iteration (de)compresses the next
// frame, cycling. Levels 1, 3, 9 (vmsynth's default) and 19. Bytes processed =
// uncompressed bytes; the compression ratio is reported as a counter.
//
// Delta: the "launch" is the base with 4 edits of 8 bytes per 4 KiB page.
//   BM_DeltaBlock*  one 4 KiB block against its 4 KiB base block, at the
//                   trial level overlay creation uses to choose deltas (3)
//                   and at the default level (9)
//   BM_DeltaFrame*  a 1 MiB frame of such blocks against the 1 MiB prefix of
//                   their base blocks, as a DELTA frame is encoded
// Run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true.
#include <benchmark/benchmark.h>

#include <span>

#include "bench/codec/bench_corpus.h"
#include "codec/zstd_codec.h"

namespace vmsynth {
namespace {

constexpr size_t kCorpusBytes = 16u << 20;

const std::vector<std::byte>& corpus() {
  static const std::vector<std::byte> buf = bench::vm_like_buffer(kCorpusBytes);
  return buf;
}
const std::vector<std::byte>& edited() {
  static const std::vector<std::byte> buf = bench::edited_copy(corpus(), 4);
  return buf;
}

std::span<const std::byte> frame(const std::vector<std::byte>& buf, size_t i, size_t size) {
  size_t n = buf.size() / size;
  return std::span<const std::byte>(buf).subspan((i % n) * size, size);
}

void BM_ZstdCompress(benchmark::State& state) {
  const int level = static_cast<int>(state.range(0));
  const size_t size = static_cast<size_t>(state.range(1));
  codec::ZstdCompressor cz(level);
  std::vector<std::byte> out;
  size_t i = 0, in_bytes = 0, out_bytes = 0;
  for (auto _ : state) {
    cz.compress(frame(corpus(), i++, size), {}, out);
    in_bytes += size;
    out_bytes += out.size();
  }
  state.SetBytesProcessed(static_cast<int64_t>(in_bytes));
  state.counters["ratio"] = static_cast<double>(in_bytes) / static_cast<double>(out_bytes);
}

void BM_ZstdDecompress(benchmark::State& state) {
  const int level = static_cast<int>(state.range(0));
  const size_t size = static_cast<size_t>(state.range(1));
  const size_t n = corpus().size() / size;
  codec::ZstdCompressor cz(level);
  std::vector<std::vector<std::byte>> frames;
  for (size_t k = 0; k < n; ++k) frames.push_back(cz.compress(frame(corpus(), k, size)));
  codec::ZstdDecompressor dz;
  std::vector<std::byte> dst(size);
  size_t i = 0;
  for (auto _ : state) {
    dz.decompress(frames[i++ % n], {}, dst, "frame");
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void level_size_args(benchmark::internal::Benchmark* b) {
  for (int level : {1, 3, 9, 19})
    for (int64_t size : {256 << 10, 1 << 20, 4 << 20}) b->Args({level, size});
  b->ArgNames({"level", "frame"})->Unit(benchmark::kMillisecond)->MinTime(0.2);
}
BENCHMARK(BM_ZstdCompress)->Apply(level_size_args);
BENCHMARK(BM_ZstdDecompress)->Apply(level_size_args);

// Delta encode/decode of `size`-byte units against the same-size prefix.
void BM_DeltaEncode(benchmark::State& state) {
  const int level = static_cast<int>(state.range(0));
  const size_t size = static_cast<size_t>(state.range(1));
  codec::ZstdCompressor cz(level);
  std::vector<std::byte> out;
  size_t i = 0, in_bytes = 0, out_bytes = 0;
  for (auto _ : state) {
    cz.compress(frame(edited(), i, size), frame(corpus(), i, size), out);
    ++i;
    in_bytes += size;
    out_bytes += out.size();
  }
  state.SetBytesProcessed(static_cast<int64_t>(in_bytes));
  state.counters["ratio"] = static_cast<double>(in_bytes) / static_cast<double>(out_bytes);
}

void BM_DeltaDecode(benchmark::State& state) {
  const int level = static_cast<int>(state.range(0));
  const size_t size = static_cast<size_t>(state.range(1));
  const size_t n = std::min<size_t>(corpus().size() / size, 1024);  // enough distinct units
  codec::ZstdCompressor cz(level);
  std::vector<std::vector<std::byte>> units;
  for (size_t k = 0; k < n; ++k) units.push_back(cz.compress(frame(edited(), k, size), frame(corpus(), k, size)));
  codec::ZstdDecompressor dz;
  std::vector<std::byte> dst(size);
  size_t i = 0;
  for (auto _ : state) {
    dz.decompress(units[i % n], frame(corpus(), i % n, size), dst, "delta");
    ++i;
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void delta_args(benchmark::internal::Benchmark* b) {
  b->Args({3, 4096})->Args({9, 4096})->Args({9, 1 << 20});
  b->ArgNames({"level", "unit"})->Unit(benchmark::kMicrosecond)->MinTime(0.2);
}
BENCHMARK(BM_DeltaEncode)->Apply(delta_args);
BENCHMARK(BM_DeltaDecode)->Apply(delta_args);

}  // namespace
}  // namespace vmsynth
