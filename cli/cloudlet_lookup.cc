#include "cli/cloudlet_lookup.h"

#include "cloudlet/client.h"

namespace vmsynth::cli {

std::vector<std::string> complete_base_ids(std::vector<cloudlet::Cloudlet>& cloudlets, const std::string& token,
                                           const std::string& cacert) {
  std::vector<std::string> errors(cloudlets.size());
  for (size_t i = 0; i < cloudlets.size(); ++i) {
    cloudlet::Cloudlet& c = cloudlets[i];
    if (c.bases_digest.empty()) continue;
    try {
      // The answer may differ from the TXT's digest (the bases changed since): it is the newer.
      c.base_ids = cloudlet::list_base_ids(c.url, token, c.tls ? cacert : "");
    } catch (const cloudlet::PushError& e) {
      errors[i] = "GET " + c.url + "/v1/bases: " + e.message();
    }
  }
  return errors;
}

}  // namespace vmsynth::cli
