// How the commands that the public API covers (synthesize, overlay create,
// overlay info) call it: parameters set by name, the progress line and the
// interrupt token attached, and a result document that is either returned or
// turned back into the vmsynth::Error that main() reports. The command line
// tool is thus one more client of include/vmsynth/vmsynth.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/key_options.h"
#include "cli/progress.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth::cli {

class LibraryParams {
 public:
  LibraryParams();
  ~LibraryParams();
  LibraryParams(const LibraryParams&) = delete;
  LibraryParams& operator=(const LibraryParams&) = delete;

  // vmsynth_params_set; a refusal is the command's usage error, naming `flag`
  // (the option the user typed) and then the library's reason.
  LibraryParams& set(const char* name, const std::string& value, const char* flag);
  // key_file / passphrase_file from --key-file / --passphrase-file.
  LibraryParams& key(const KeyOptions& k);
  // The line's callback receives the library's phases.
  LibraryParams& progress(TerminalProgress& line);
  // SIGINT, SIGTERM, SIGHUP cancel the operation (cli/interrupt.h).
  LibraryParams& cancel_on_interrupt();

  const vmsynth_params* get() const { return p_; }

 private:
  vmsynth_params* p_;
  ProgressFn progress_;
};

// Takes ownership of `json` (vmsynth_free) and parses it. rc != VMSYNTH_OK:
// throws the Error the document describes (its code, message and context;
// VMSYNTH_E_INTERNAL as a std::runtime_error, which main() reports as a bug).
nlohmann::json take_result(int rc, char* json);

}  // namespace vmsynth::cli
