// io benchmarks: WriteQueue (io_uring vs pwrite) and clone_image (copy-range
// vs read-write).
//
// BM_WriteQueue writes a whole file (256 MiB by default; set
// VMSYNTH_BENCH_FILE_MIB to change it) in blocks of 4 KiB / 64 KiB / 1 MiB at
// shuffled block offsets, the way synthesis scatters changed blocks over an
// image, with a buffer pool of depth + 1 recycled through the completion
// callback. No fsync: this measures the path into the page cache, which is what
// the synthesis writer waits for. BM_CloneImage copies a sparse file of the same
// size (1 MiB data / 1 MiB hole alternating). Files live in $TMPDIR or /tmp and
// are removed at exit. Bytes processed = bytes of file produced.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "io/file.h"
#include "io/image_clone.h"
#include "io/staged_dir.h"
#include "io/write_queue.h"

namespace vmsynth::io {
namespace {

uint64_t file_bytes() {
  const char* v = std::getenv("VMSYNTH_BENCH_FILE_MIB");
  uint64_t mib = v && *v ? std::strtoull(v, nullptr, 10) : 256;
  return std::max<uint64_t>(mib, 1) << 20;
}

// One scratch directory for the whole run, removed at exit.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vmsynth-io-bench-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data())) path_ = buf.data();
  }
  ~ScratchDir() {
    try {
      if (!path_.empty()) StagedDirectory::remove_tree(path_);
    } catch (...) {
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const std::string& scratch() {
  static ScratchDir dir;
  return dir.path();
}

void BM_WriteQueue(benchmark::State& state, bool use_uring) {
  const size_t block = static_cast<size_t>(state.range(0));
  const unsigned depth = static_cast<unsigned>(state.range(1));
  const uint64_t size = file_bytes();
  if (scratch().empty()) {
    state.SkipWithError("cannot create a scratch directory");
    return;
  }
  std::string path = scratch() + "/write.img";
  File f = File::create(path);
  f.truncate(size);

  std::vector<uint64_t> order(size / block);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(1));

  std::vector<std::vector<std::byte>> pool(depth + 1,
                                           std::vector<std::byte>(block, std::byte{0x5a}));
  std::vector<uint64_t> free_buffers(pool.size());
  std::iota(free_buffers.begin(), free_buffers.end(), 0);

  WriteQueueOptions opts;
  opts.queue_depth = depth;
  opts.force_pwrite = !use_uring;
  auto q =
      WriteQueue::open({f.fd()}, opts, [&](uint64_t tag) { free_buffers.push_back(tag); }, {path});
  if (use_uring && q->backend() != "io_uring") {
    state.SkipWithError(("io_uring not available: " + std::string(q->fallback_reason())).c_str());
    return;
  }
  for (auto _ : state) {
    for (uint64_t b : order) {
      uint64_t buf = free_buffers.back();  // never empty: pool is depth + 1
      free_buffers.pop_back();
      q->write(0, b * block, pool[buf], buf);
    }
    q->drain();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * order.size() * block));
  state.SetLabel(std::string(q->backend()));
}

void write_args(benchmark::internal::Benchmark* b) {
  for (int64_t block : {4 << 10, 64 << 10, 1 << 20}) {
    for (int64_t depth : {1, 8, 32, 128}) b->Args({block, depth});
  }
  // Wall time: io_uring does its work in kernel threads, not on our CPU clock.
  b->ArgNames({"block", "depth"})
      ->Iterations(1)
      ->Repetitions(3)
      ->ReportAggregatesOnly(true)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_WriteQueue, io_uring, true)->Apply(write_args);
BENCHMARK_CAPTURE(BM_WriteQueue, pwrite, false)->Apply(write_args);

// A sparse source: 1 MiB of data, 1 MiB of hole, alternating.
const std::string& sparse_source() {
  static std::string path = [] {
    std::string p = scratch() + "/sparse-base.img";
    uint64_t size = file_bytes();
    File f = File::create(p);
    f.truncate(size);
    std::vector<std::byte> data(1 << 20);
    std::mt19937_64 rng(2);
    for (auto& x : data) x = std::byte(rng() & 0xff);
    for (uint64_t off = 0; off < size; off += 2 << 20) {
      f.pwrite_full(std::span(data).first(std::min<uint64_t>(data.size(), size - off)), off);
    }
    f.sync();
    return p;
  }();
  return path;
}

void BM_CloneImage(benchmark::State& state, CloneMethod method) {
  if (scratch().empty()) {
    state.SkipWithError("cannot create a scratch directory");
    return;
  }
  const std::string& src = sparse_source();
  std::string dst = scratch() + "/clone.img";
  uint64_t size = file_bytes();
  uint64_t copied = 0;
  for (auto _ : state) {
    CloneResult r = clone_image(src, dst, size, method);
    copied = r.bytes_copied;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
  state.counters["copied_bytes"] = static_cast<double>(copied);
  state.SetLabel(std::string(clone_method_name(method)));
}

BENCHMARK_CAPTURE(BM_CloneImage, copy_range, CloneMethod::kCopyRange)
    ->Iterations(1)
    ->Repetitions(3)
    ->ReportAggregatesOnly(true)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_CloneImage, read_write, CloneMethod::kReadWrite)
    ->Iterations(1)
    ->Repetitions(3)
    ->ReportAggregatesOnly(true)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace vmsynth::io
