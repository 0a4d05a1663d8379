// engine benchmarks: the base index (engine/block_index.h), insert and find.
//
// BM_BaseIndexInsert builds an index of N distinct XXH3-128 block hashes
// (N = 256 Ki blocks = a 1 GiB image, and 2 Mi = 8 GiB), pre-sized as overlay
// creation does. BM_BaseIndexFind looks up N hashes in a full index, half of
// them present (a launch block found in the base) and half absent (a changed
// block). Items processed = hashes; bytes processed = 4 KiB per hash, i.e.
// image bytes indexed or looked up per second, comparable to the hashing
// benchmarks. Run with --benchmark_repetitions=5
// --benchmark_report_aggregates_only=true.
#include <benchmark/benchmark.h>

#include <vector>

#include "codec/block_hash.h"
#include "engine/block_index.h"

namespace vmsynth {
namespace {

std::vector<Hash128> hashes(size_t n, uint64_t salt) {
  std::vector<Hash128> out(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t key[2] = {i, salt};
    out[i] = hash128(std::as_bytes(std::span(key)));
  }
  return out;
}

void BM_BaseIndexInsert(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<Hash128> hs = hashes(n, 1);
  for (auto _ : state) {
    BlockIndex index(n);
    for (size_t i = 0; i < n; ++i) index.insert(hs[i], {image_index(ImageKind::kDisk), i});
    benchmark::DoNotOptimize(index.size());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * format::kBlockSize));
}
BENCHMARK(BM_BaseIndexInsert)->Arg(256 << 10)->Arg(2 << 20)->Unit(benchmark::kMillisecond)->MinTime(0.3);

void BM_BaseIndexFind(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<Hash128> present = hashes(n, 1);
  const std::vector<Hash128> absent = hashes(n / 2, 2);
  BlockIndex index(n);
  for (size_t i = 0; i < n; ++i) index.insert(present[i], {image_index(ImageKind::kDisk), i});
  // Interleave hits and misses in a fixed order.
  std::vector<const Hash128*> queries;
  for (size_t i = 0; i < n / 2; ++i) {
    queries.push_back(&present[(i * 2654435761u) % n]);
    queries.push_back(&absent[i]);
  }
  for (auto _ : state) {
    size_t hits = 0;
    for (const Hash128* q : queries) hits += index.find(*q).has_value();
    benchmark::DoNotOptimize(hits);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * queries.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * queries.size() * format::kBlockSize));
}
BENCHMARK(BM_BaseIndexFind)->Arg(256 << 10)->Arg(2 << 20)->Unit(benchmark::kMillisecond)->MinTime(0.3);

}  // namespace
}  // namespace vmsynth
