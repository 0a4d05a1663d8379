#include "engine/cancel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "common/error.h"

namespace vmsynth {

namespace {
// Lock-free so that the store in a signal handler is async-signal-safe.
std::atomic<bool> g_cancel{false};
std::atomic<int> g_wake_fd{-1};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free);
}  // namespace

void request_cancel() noexcept {
  g_cancel.store(true, std::memory_order_relaxed);
  if (int fd = g_wake_fd.load(std::memory_order_relaxed); fd >= 0) {
    const uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);  // async-signal-safe; wakes every poll on fd
  }
}
bool cancel_requested() noexcept { return g_cancel.load(std::memory_order_relaxed); }
void clear_cancel() noexcept {
  g_cancel.store(false, std::memory_order_relaxed);
  if (int fd = g_wake_fd.load(std::memory_order_relaxed); fd >= 0) {
    uint64_t n;
    (void)!::read(fd, &n, sizeof n);  // non-blocking: empty is fine
  }
}

int cancel_wake_fd() {
  static std::once_flag once;
  std::call_once(once, [] {
    int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd >= 0 && g_cancel.load()) {
      const uint64_t one = 1;
      (void)!::write(fd, &one, sizeof one);
    }
    g_wake_fd.store(fd);
  });
  return g_wake_fd.load();
}

void throw_if_cancelled() {
  if (cancel_requested()) {
    throw Error(ErrorCode::kInterrupted, "stopped before finishing; what was staged has been removed and nothing was left at the output");
  }
}

}  // namespace vmsynth
