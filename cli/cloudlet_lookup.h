// What `discover` and `push --discover` share: completing the base id lists
// of cloudlets whose DNS-SD TXT record carries only a digest of them.
#pragma once

#include <string>
#include <vector>

#include "cloudlet/discovery.h"

namespace vmsynth::cli {

// For each cloudlet that published only `bases_digest`, fills its base_ids
// from GET <url>/v1/bases (with `token`, TLS checked against `cacert`).
// Returns, per cloudlet, "" or why its list could not be read.
std::vector<std::string> complete_base_ids(std::vector<cloudlet::Cloudlet>& cloudlets, const std::string& token,
                                           const std::string& cacert);

}  // namespace vmsynth::cli
