// Progress reporting from long-running engine work to whoever shows it.
//
// The engine calls a ProgressFn with a Progress: the phase it is in and, for
// phases that can be counted, bytes done out of total. total is 0 when it is
// unknown (an overlay read from a pipe) and done is 0 too for phases that
// cannot be counted (checking the base, syncing to disk); a display then shows
// the phase and a running clock. Each phase starts with a call whose done is
// 0, so a display can measure the phase's rate from there. Calls come from one
// thread at a time but not always the same thread; keep the callback cheap.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

namespace vmsynth {

struct Progress {
  std::string_view phase;  // lower-case words, e.g. "checking base", "applying", "syncing"
  uint64_t done = 0;       // bytes
  uint64_t total = 0;      // bytes; 0 = unknown or not counted
};

using ProgressFn = std::function<void(const Progress&)>;

// Calls fn (if set) with {phase, done, total}.
inline void report(const ProgressFn& fn, std::string_view phase, uint64_t done = 0, uint64_t total = 0) {
  if (fn) fn(Progress{phase, done, total});
}

}  // namespace vmsynth
