// Worker thread counts: the one range every engine entry point accepts.
//
// 0 means one per core. Above that, up to kMaxThreads: enough to oversubscribe
// a 128-core cloudlet twice over, and far below what makes thread creation
// fail or a task arena spend its time switching (5000 threads took 200x as
// long as 2 on the same synthesis). A value outside the range is a usage
// error, never silently clamped, so what a benchmark reports is what ran.
#pragma once

#include <string>

#include "common/error.h"

namespace vmsynth {

inline constexpr unsigned kMaxThreads = 256;

// Throws Error(kUsage) unless threads <= kMaxThreads.
inline void check_thread_count(unsigned threads) {
  if (threads > kMaxThreads) {
    throw Error(ErrorCode::kUsage, "--threads " + std::to_string(threads) + " is out of range: use 0 (one per core) to " +
                                       std::to_string(kMaxThreads));
  }
}

}  // namespace vmsynth
