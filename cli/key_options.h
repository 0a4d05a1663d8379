// The key options shared by `overlay create`, `overlay info`, `overlay
// verify` and `synthesize`: --key-file FILE (32 raw bytes or 64 hex
// characters) and --passphrase-file FILE (the passphrase; one trailing line
// break is ignored). Reads the file and returns the codec::KeySpec; the secret
// never appears on the command line, in the environment or in messages.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "codec/crypto.h"

namespace vmsynth::cli {

struct KeyOptions {
  std::string key_file;
  std::string passphrase_file;

  // Adds --key-file and --passphrase-file (mutually exclusive) to `cmd`.
  void add_to(CLI::App& cmd, const std::string& purpose);
  bool given() const { return !key_file.empty() || !passphrase_file.empty(); }
  // Reads the file named by the option that was given; none given: an empty
  // KeySpec. Throws kUsage for an unreadable or malformed file.
  codec::KeySpec load() const;
};

}  // namespace vmsynth::cli
