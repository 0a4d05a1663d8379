// vmsynth's one error type.
//
// Every failure that a user can cause or meet (bad overlay, wrong base, I/O
// trouble, bad flags) is reported as a vmsynth::Error: a stable Code that
// scripts and the exit status can rely on, a message that says what is wrong
// and what to do, and context (file, offset, frame, block) added as the error
// travels up. Data errors are expected and reported, never asserted.
//
// Thread safety: an Error is a value; copy it freely between threads.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace vmsynth {

enum class ErrorCode : int {
  kUsage = 2,        // bad command line or option value
  kCorrupt = 3,      // overlay bytes are damaged, truncated or inconsistent
  kWrongBase = 4,    // overlay was made against another base VM
  kWrongKey = 5,     // decryption key or passphrase does not match
  kIo = 6,           // the operating system refused a read, write, open, ...
  kUnsupported = 7,  // valid but not supported here (version, feature, kernel)
  kExists = 8,       // output already exists and --force was not given
  kInterrupted = 9,  // stopped by a signal or cancelled
};

// Short stable name of a code, e.g. "corrupt". Used in --json output.
constexpr std::string_view error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::kUsage: return "usage";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kWrongBase: return "wrong-base";
    case ErrorCode::kWrongKey: return "wrong-key";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kExists: return "exists";
    case ErrorCode::kInterrupted: return "interrupted";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message)
      : std::runtime_error(message), code_(code), message_(std::move(message)) {}

  ErrorCode code() const noexcept { return code_; }
  // The innermost message, without context.
  const std::string& message() const noexcept { return message_; }
  // Context from innermost to outermost, e.g. "frame 12", "overlay app.vmo".
  const std::string& context() const noexcept { return context_; }

  // Adds a context item and returns *this so that `throw e.with("frame 3")`
  // and `catch (Error& e) { e.with(...); throw; }` both read naturally.
  Error& with(std::string_view item) {
    if (!context_.empty()) context_ += ", ";
    context_ += item;
    full_ = message_ + " (" + context_ + ")";
    return *this;
  }

  const char* what() const noexcept override {
    return context_.empty() ? message_.c_str() : full_.c_str();
  }

 private:
  ErrorCode code_;
  std::string message_;
  std::string context_;
  std::string full_;
};

// Builds an kIo error from an errno value: "<what>: <strerror>" naming `path`.
inline Error io_error(std::string_view what, std::string_view path, int err) {
  std::string m(what);
  if (!path.empty()) {
    m += " '";
    m += path;
    m += "'";
  }
  m += ": ";
  m += std::strerror(err);
  return Error(ErrorCode::kIo, std::move(m));
}

[[noreturn]] inline void throw_corrupt(std::string message) {
  throw Error(ErrorCode::kCorrupt, std::move(message));
}

}  // namespace vmsynth
