#include "cli/key_options.h"

#include "lib/key_files.h"

namespace vmsynth::cli {

void KeyOptions::add_to(CLI::App& cmd, const std::string& purpose) {
  auto* k = cmd.add_option("--key-file", key_file,
                           "Key file " + purpose + ": 32 raw bytes or 64 hex characters (make one with: head -c 32 "
                           "/dev/urandom > FILE)");
  auto* p = cmd.add_option("--passphrase-file", passphrase_file,
                           "Passphrase file " + purpose + " (stretched with scrypt; one trailing newline is ignored)");
  k->excludes(p);
}

codec::KeySpec KeyOptions::load() const { return lib::load_key_spec(key_file, passphrase_file); }

}  // namespace vmsynth::cli
