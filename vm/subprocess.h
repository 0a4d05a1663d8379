// Child processes run from argument vectors (never through a shell).
//
// Subprocess owns one child started with posix_spawnp: its pid and the read
// ends of pipes connected to its stdout and stderr (or /dev/null). If a
// Subprocess is destroyed while the child still runs, the destructor kills it
// (SIGKILL) and reaps it, so no child outlives its owner by accident.
// run_process() is the common "run to completion with a timeout, collect the
// output" case (qemu-img info/convert/create, the KVM probe's helpers).
//
// Also here: shell_quote() (vm/ no longer runs QEMU `exec:` URIs, which go
// through /bin/sh -c; kept for callers that build a shell line), and
// find_program().
//
// Thread safety: a Subprocess is used from one thread at a time; distinct
// objects are independent. posix_spawn is safe to call from several threads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/file.h"

namespace vmsynth::vm {

struct ProcessResult {
  int exit_code = -1;   // exit status, or -1 if killed by a signal
  int term_signal = 0;  // the signal that killed it, else 0
  std::string out;      // captured stdout (when captured)
  std::string err;      // captured stderr (when captured)
  bool ok() const { return exit_code == 0; }
  // "exit status 1" / "killed by signal 9" plus the last stderr line, for messages.
  std::string describe() const;
};

class Subprocess {
 public:
  // Starts argv[0] (looked up in PATH) with argv. stdin is /dev/null; stdout and
  // stderr are captured into pipes when `capture` is true, else /dev/null.
  // Throws kUnsupported when the program is not installed, kIo on other failures.
  // REQUIRES: !argv.empty().
  static Subprocess spawn(const std::vector<std::string>& argv, bool capture = true);

  Subprocess() = default;
  ~Subprocess();
  Subprocess(Subprocess&& o) noexcept;
  Subprocess& operator=(Subprocess&& o) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

  // Waits up to `timeout` for the child to exit while draining its pipes.
  // Returns the result, or nullopt on timeout (the child keeps running).
  std::optional<ProcessResult> wait_for(std::chrono::milliseconds timeout);
  // Sends `sig`; then SIGKILL if it has not exited after `grace`. Returns the result.
  ProcessResult terminate(int sig, std::chrono::milliseconds grace);

 private:
  bool reap(int options);  // waitpid; true when the child has exited
  void drain(int timeout_ms);

  pid_t pid_ = -1;
  io::File out_, err_;
  ProcessResult result_;
  std::string program_;
};

// Runs argv to completion, capturing stdout/stderr. On timeout the child is
// killed and kIo is thrown naming the program. A non-zero exit is returned,
// not thrown: callers decide what it means.
ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// Like run_process, but a non-zero exit throws `code` with
// "<what> failed: <describe()>".
ProcessResult run_checked(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          std::string_view what);

// Full path of `name` found in PATH, or nullopt.
std::optional<std::string> find_program(std::string_view name);

// Quotes `s` for /bin/sh: 'it'\''s' style. Safe for any byte string without NUL.
std::string shell_quote(std::string_view s);

}  // namespace vmsynth::vm
