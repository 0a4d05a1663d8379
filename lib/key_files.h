// Reading the key of an encrypted overlay from the files the user names: a
// key file (32 raw bytes or 64 hex digits) or a passphrase file (one trailing
// line break ignored). The secret never appears in messages; a file is read
// to its end, so `<(command)` works. Shared by the C API's key_file /
// passphrase_file parameters and the command line tool's --key-file /
// --passphrase-file.
#pragma once

#include <string>

#include "codec/crypto.h"

namespace vmsynth::lib {

// Reads the key file if key_file is not empty, else the passphrase file if
// that is not empty; both empty: an empty KeySpec (no key). Messages name the
// file ("key file 'k.bin' ..."). Throws kUsage for an unreadable, overlong or
// malformed file.
codec::KeySpec load_key_spec(const std::string& key_file, const std::string& passphrase_file);

}  // namespace vmsynth::lib
