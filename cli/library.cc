#include "cli/library.h"

#include <new>
#include <stdexcept>

#include "cli/interrupt.h"
#include "common/error.h"

namespace vmsynth::cli {

LibraryParams::LibraryParams() : p_(vmsynth_params_new()) {
  if (p_ == nullptr) throw std::bad_alloc();
}

LibraryParams::~LibraryParams() { vmsynth_params_free(p_); }

LibraryParams& LibraryParams::set(const char* name, const std::string& value, const char* flag) {
  if (vmsynth_params_set(p_, name, value.c_str()) != VMSYNTH_OK) {
    throw Error(ErrorCode::kUsage, std::string(flag) + ": " + vmsynth_params_error(p_));
  }
  return *this;
}

LibraryParams& LibraryParams::key(const KeyOptions& k) {
  return set("key_file", k.key_file, "--key-file").set("passphrase_file", k.passphrase_file, "--passphrase-file");
}

LibraryParams& LibraryParams::progress(TerminalProgress& line) {
  progress_ = line.callback();
  if (!progress_) return *this;  // nothing will be drawn: no calls at all
  vmsynth_params_set_phase_progress(
      p_,
      [](void* ctx, const char* phase, uint64_t done, uint64_t total) {
        (*static_cast<ProgressFn*>(ctx))(Progress{phase, done, total});
      },
      &progress_);
  return *this;
}

LibraryParams& LibraryParams::cancel_on_interrupt() {
  install_interrupt_handlers();
  vmsynth_params_set_cancel(p_, interrupt_cancel());
  return *this;
}

nlohmann::json take_result(int rc, char* json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json != nullptr ? json : "null");
  } catch (...) {
    vmsynth_free(json);
    throw;
  }
  vmsynth_free(json);
  if (rc == VMSYNTH_OK) return j;
  const std::string message = j.is_object() ? j["error"].value("message", "") : "";
  const std::string context = j.is_object() ? j["error"].value("context", "") : "";
  if (rc < VMSYNTH_E_USAGE || rc > VMSYNTH_E_CANCELLED) {
    throw std::runtime_error(message.empty() ? std::string(vmsynth_status_name(rc)) : message);
  }
  Error e(static_cast<ErrorCode>(rc), message);
  if (!context.empty()) e.with(context);
  throw e;
}

}  // namespace vmsynth::cli
