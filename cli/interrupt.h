// Signal handling for the long commands (gen-pair, overlay create/verify,
// synthesize).
//
// install_interrupt_handlers() makes SIGINT, SIGTERM and SIGHUP request the
// command's cancel token, interrupt_cancel() (a vmsynth_cancel of the public
// API; interrupt_token() is the same token for jobs that call the engine
// directly): the CLI runs one job per process, and that job is given this
// token. The engine stops at its next chunk or
// frame and throws Error(kInterrupted); the command's usual error path removes
// what it staged, and main() prints the message and exits 9. SA_RESETHAND: a
// second signal of the same kind kills the process the default way (its
// staging is then removed by the next run for the same output). Commands that
// do not poll a token do not call this, so a signal stops them at once.
#pragma once

#include <string>

#include "engine/cancel.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth::cli {

void install_interrupt_handlers();

// The token the handlers request; made before they are installed.
vmsynth_cancel* interrupt_cancel();
const CancelToken& interrupt_token();

// The last signal that asked to stop (0 if none); for the exit message.
int interrupting_signal();

// Names the output the running command stages (a directory or a file), so
// that a process ending in std::terminate (an exception in a worker thread,
// where nothing unwinds) removes its own staging first: remove_own_staging().
void note_output(const std::string& final_path);
void remove_own_staging() noexcept;

}  // namespace vmsynth::cli
