// Cancellation of long-running engine work (synthesis, overlay creation and
// verification, gen-pair) from outside: another thread, a signal handler, a
// daemon whose client went away.
//
// Every job is given its own CancelToken (through its options; null = not
// cancellable), so many jobs in one process stop independently: the library's
// handles each own one (lib/), the command line tool's signal handler
// requests the token of the one job it runs. A token may also follow a group
// token (a daemon session's, a caller's shared vmsynth_cancel): it then counts
// as requested when either is, while requesting it leaves the group alone. request() is async-signal-safe
// (a lock-free atomic store and one write(2) to an eventfd). Synthesis polls
// the token once per frame, overlay creation and gen-pair once per chunk and
// frame, and they stop with vmsynth::Error(kInterrupted); their usual error
// path then removes what was staged. A request is sticky: a token requested
// before its job starts stops the job before it writes anything.
//
// Thread safety: request(), requested() and wake_fd() may be called from any
// thread at any time, concurrently; construction and destruction need
// external synchronisation (no call may race the destructor).
#pragma once

#include <atomic>

#include "io/byte_source.h"

namespace vmsynth {

class CancelToken {
 public:
  // group: a token whose request stops this job too; null: none. It must
  // outlive this token.
  explicit CancelToken(const CancelToken* group = nullptr);
  ~CancelToken();
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  // Asks the job to stop. Async-signal-safe; idempotent.
  void request() noexcept;
  // True once request() was called on this token or its group.
  bool requested() const noexcept {
    return flag_.load(std::memory_order_relaxed) || (group_ != nullptr && group_->requested());
  }

  // An eventfd that becomes readable on request() of this token (not of its
  // group: poll both, as stop_check() does), so a thread blocked waiting for
  // input can poll it beside its input and wake up (a signal interrupts one
  // arbitrary thread, usually not the one waiting). -1 if the kernel refused
  // one; then only requested() tells.
  int wake_fd() const noexcept { return fd_; }

  // How a byte source's wait for input ends on this token (io::StopCheck).
  io::StopCheck stop_check() const;

 private:
  std::atomic<bool> flag_{false};
  const CancelToken* group_ = nullptr;
  int fd_ = -1;
  static_assert(std::atomic<bool>::is_always_lock_free);
};

// Throws Error(kInterrupted) if `token` is set and was requested.
void throw_if_cancelled(const CancelToken* token);

}  // namespace vmsynth
