#include "engine/cancel.h"

#include <atomic>

#include "common/error.h"

namespace vmsynth {

namespace {
// Lock-free so that the store in a signal handler is async-signal-safe.
std::atomic<bool> g_cancel{false};
static_assert(std::atomic<bool>::is_always_lock_free);
}  // namespace

void request_cancel() noexcept { g_cancel.store(true, std::memory_order_relaxed); }
bool cancel_requested() noexcept { return g_cancel.load(std::memory_order_relaxed); }
void clear_cancel() noexcept { g_cancel.store(false, std::memory_order_relaxed); }

void throw_if_cancelled() {
  if (cancel_requested()) {
    throw Error(ErrorCode::kInterrupted, "stopped before finishing; what was staged has been removed and nothing was left at the output");
  }
}

}  // namespace vmsynth
