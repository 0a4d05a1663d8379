// The size of oneTBB's worker pool for the command being run.
//
// oneTBB keeps one worker pool per process, by default one thread per core,
// and every task arena draws from it. The library leaves it alone (a library
// must not resize its embedder's pool: tbb::global_control is a whole-process
// setting). The command line tool is the application, so when the user asks
// for --threads N it lets the pool grow to N, plus `extra` threads for the
// parallel engine's reader and writer, which spend their time blocked, for
// the life of this object.
#pragma once

#include <tbb/global_control.h>
#include <tbb/info.h>

#include <optional>

namespace vmsynth::cli {

class WorkerPool {
 public:
  // threads 0: one per core.
  WorkerPool(unsigned threads, unsigned extra) {
    const unsigned n = (threads == 0 ? static_cast<unsigned>(tbb::info::default_concurrency()) : threads) + extra;
    control_.emplace(tbb::global_control::max_allowed_parallelism, n);
  }

 private:
  std::optional<tbb::global_control> control_;
};

}  // namespace vmsynth::cli
