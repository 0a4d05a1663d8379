// Progress reporting from long-running engine work to whoever shows it.
//
// The engine calls a ProgressFn with (done, total) in the unit of the work at
// hand (bytes or blocks); total may be 0 when unknown (a pipe). Calls come from
// one thread at a time but not always the same thread; keep the callback cheap.
#pragma once

#include <cstdint>
#include <functional>

namespace vmsynth {

using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

}  // namespace vmsynth
