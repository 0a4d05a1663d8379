// Cancellation of long-running engine work (synthesis, overlay creation,
// gen-pair) from outside, e.g. by a signal handler in the command line tool.
//
// One process-wide flag: request_cancel() sets it and is async-signal-safe (a
// lock-free atomic store, nothing else), so a signal handler may call it. Both
// synthesis engines poll it once per frame, overlay creation and gen-pair once
// per chunk and frame, and they stop with
// vmsynth::Error(kInterrupted); their usual error path then removes the
// staging directory. The flag is sticky: it stays set until clear_cancel(), so
// a signal that arrives before an engine starts is not lost (tests and
// long-lived callers that run several syntheses clear it themselves).
//
// This is deliberately the one global of the engine: a signal handler cannot
// reach anything else. Thread safety: every function may be called from any
// thread at any time.
#pragma once

namespace vmsynth {

// Asks running and future engine work to stop. Async-signal-safe.
void request_cancel() noexcept;
// True once request_cancel() was called and clear_cancel() has not been since.
bool cancel_requested() noexcept;
// Resets the flag.
void clear_cancel() noexcept;
// Throws Error(kInterrupted) if cancellation was requested.
void throw_if_cancelled();

// An eventfd that is readable while cancellation is requested (request_cancel
// writes to it, clear_cancel drains it), so a thread blocked waiting for
// input can poll it beside its input and wake up: a signal interrupts only one
// arbitrary thread of the process, usually not the one waiting. Created on the
// first call (call it before installing signal handlers); -1 if it cannot be.
int cancel_wake_fd();

}  // namespace vmsynth
