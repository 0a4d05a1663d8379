// engine benchmarks: synthesis, serial vs parallel, on generated pairs.
//
// For each profile ("typical", "decode-heavy") a base/launch pair is generated
// once (tools/gen_pair/synthetic_pair.h; VMSYNTH_BENCH_MEMORY_MIB, default 256, and
// VMSYNTH_BENCH_DISK_MIB, default 1024) with its overlay (zstd level 9), in a
// scratch directory under $TMPDIR or /tmp removed at exit. Each iteration
// synthesizes into the same output path (replaced each time) and includes the
// final fsync, as a user waits for it. Bytes processed = launch image bytes.
// Caches are warm (the base and overlay were just written). Run with
// --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true for
// medians of interleaved repetitions. End-to-end numbers with the CLI, the
// copy floor and peak RSS come from bench/synthesis-e2e.sh.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "engine/overlay_creator.h"
#include "engine/synthesis.h"
#include "tools/gen_pair/synthetic_pair.h"
#include "io/byte_source.h"

namespace vmsynth {
namespace {

uint64_t env_mib(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  return (v && *v ? std::strtoull(v, nullptr, 10) : def) << 20;
}

class Scratch {
 public:
  Scratch() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/vmsynth-synth-bench-XXXXXX";
    if (::mkdtemp(tmpl.data())) path_ = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct Pair {
  std::string base, overlay, out;
  uint64_t launch_bytes = 0;
};

const Pair& pair_for(const std::string& profile) {
  static Scratch scratch;
  static std::map<std::string, Pair> pairs;
  auto it = pairs.find(profile);
  if (it != pairs.end()) return it->second;
  const std::string dir = scratch.path() + "/" + profile;
  PairSpec spec = PairSpec::profile(profile, env_mib("VMSYNTH_BENCH_MEMORY_MIB", 256),
                                    env_mib("VMSYNTH_BENCH_DISK_MIB", 1024), 1);
  generate_pair(spec, dir);
  Pair p;
  p.base = dir + "/base";
  p.overlay = dir + "/app.vmo";
  p.out = dir + "/out";
  CreateOptions c;
  c.base_dir = p.base;
  c.launch_dir = dir + "/launch";
  c.output = p.overlay;
  create_overlay(c);
  p.launch_bytes = spec.memory_bytes + spec.launch_disk_bytes();
  std::filesystem::remove_all(c.launch_dir);  // not needed any more; saves disk space
  return pairs.emplace(profile, p).first->second;
}

// state.range(0): profile (0 typical, 1 decode-heavy); range(1): engine (0
// serial, 1 parallel); range(2): parallel threads.
void BM_Synthesize(benchmark::State& state) {
  const std::string profile = state.range(0) == 0 ? "typical" : "decode-heavy";
  const Pair& p = pair_for(profile);
  SynthesizeOptions o;
  o.base_dir = p.base;
  o.out_dir = p.out;
  o.force = true;
  o.engine = state.range(1) == 0 ? EngineKind::kSerial : EngineKind::kParallel;
  o.threads = static_cast<unsigned>(state.range(2));
  SynthesizeStats st;
  for (auto _ : state) {
    auto src = io::open_source(p.overlay);
    st = synthesize(*src, o);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * p.launch_bytes));
  state.counters["overlay_MiB"] = static_cast<double>(st.overlay_bytes) / (1 << 20);
  state.counters["apply_s"] = st.seconds_apply;
  state.counters["clone_s"] = st.seconds_clone;
  state.counters["sync_s"] = st.seconds_sync;
  state.SetLabel(profile + " " + st.engine + " " + std::to_string(st.threads) + "t " + st.write_backend);
}

BENCHMARK(BM_Synthesize)
    ->ArgNames({"profile", "parallel", "threads"})
    ->Args({0, 0, 1})
    ->Args({0, 1, 2})
    ->Args({1, 0, 1})
    ->Args({1, 1, 1})
    ->Args({1, 1, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

}  // namespace
}  // namespace vmsynth
