#include "cli/interrupt.h"

#include <signal.h>

#include <atomic>

#include "engine/cancel.h"
#include "lib/api.h"
#include "io/staged_dir.h"

namespace vmsynth::cli {

namespace {

std::atomic<int> g_signal{0};
std::string g_output;  // set once by the command, before any worker thread exists
static_assert(std::atomic<int>::is_always_lock_free);

vmsynth_cancel& cancel() {
  static vmsynth_cancel c;
  return c;
}

void on_signal(int sig) {  // async-signal-safe: atomic stores and a write(2)
  g_signal.store(sig, std::memory_order_relaxed);
  vmsynth_cancel_request(&cancel());
}

}  // namespace

vmsynth_cancel* interrupt_cancel() { return &cancel(); }
const CancelToken& interrupt_token() { return cancel().token; }

void install_interrupt_handlers() {
  (void)cancel();  // exists before a handler can want it
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

int interrupting_signal() { return g_signal.load(std::memory_order_relaxed); }

void note_output(const std::string& final_path) { g_output = final_path; }

void remove_own_staging() noexcept {
  if (g_output.empty()) return;
  try {
    io::StagedDirectory::remove_own(g_output);
  } catch (...) {
  }
}

}  // namespace vmsynth::cli
