// Worker thread counts: the one range every engine entry point accepts.
//
// 0 means one per core. Above that, up to kMaxThreads: enough to oversubscribe
// a 128-core cloudlet twice over, and far below what makes thread creation
// fail or a task arena spend its time switching (5000 threads took 200x as
// long as 2 on the same synthesis). A value outside the range is a usage
// error, never silently clamped, so what a benchmark reports is what ran.
//
// arena_slots() turns a thread count into the size of a job's own
// tbb::task_arena. Thread safety: all functions, any thread.
#pragma once

#include <tbb/global_control.h>  // read only: the engine never sets a global_control
#include <tbb/info.h>

#include <algorithm>
#include <string>

#include "common/error.h"

namespace vmsynth {

inline constexpr unsigned kMaxThreads = 256;

// Throws Error(kUsage) unless threads <= kMaxThreads.
inline void check_thread_count(unsigned threads) {
  if (threads > kMaxThreads) {
    throw Error(ErrorCode::kUsage, "--threads " + std::to_string(threads) +
                                       " is out of range: use 0 (one per core) to " + std::to_string(kMaxThreads));
  }
}

// Slots for a job's task_arena running `threads` threads (0: one per core):
// at most as many as oneTBB may run in this process. That limit is the
// application's (tbb::global_control::active_value(max_allowed_parallelism)
// reads it: a tbb::global_control the application set, else the core count);
// the engine never changes it, since it is the whole process's. An arena
// with more slots than that could never fill them (its workers come from the
// process's pool, which the limit bounds) and would make oneTBB print a
// warning on stderr. So --threads above the core count oversubscribes only
// if the application raised the limit; a job still reports the count it was
// given.
inline int arena_slots(unsigned threads) {
  const auto allowed = static_cast<unsigned>(
      std::max<size_t>(1, tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)));
  const unsigned wanted = threads == 0 ? static_cast<unsigned>(std::max(1, tbb::info::default_concurrency())) : threads;
  return static_cast<int>(std::min(wanted, allowed));
}

}  // namespace vmsynth
