// `vmsynth discover`: the cloudlets on this machine's links (DNS-SD
// `_vmsynth._tcp` through avahi-daemon, cloudlet/discovery.h) and the base VMs
// each holds. A cloudlet whose TXT record carries only a digest of its base
// ids is asked for them (GET <url>/v1/bases); when that fails the output says
// so for that cloudlet and the command still succeeds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/cloudlet_lookup.h"
#include "cli/commands.h"
#include "cloudlet/discovery.h"
#include "cloudlet/tokens.h"
#include "common/error.h"

namespace vmsynth::cli {

void add_discover_command(CLI::App& app) {
  struct Args {
    double timeout_s = 3;
    bool json = false;
    std::string token_file, cacert;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c =
      app.add_subcommand("discover",
                         "List the cloudlets on this machine's networks (DNS-SD _vmsynth._tcp through avahi-daemon) "
                         "and the base VMs each holds.");
  c->add_option("--timeout", args->timeout_s, "Seconds to listen for cloudlets, 0.1-60 (default 3)")
      ->check(CLI::Range(0.1, 60.0));
  c->add_flag("--json", args->json, "Print the result as JSON");
  c->add_option("--token-file", args->token_file,
                "File of 'NAME TOKEN' lines: the first token authorises GET /v1/bases, asked of cloudlets that "
                "publish only a digest of their base ids")
      ->check(CLI::ExistingFile);
  c->add_option("--cacert", args->cacert, "PEM file of the CAs that sign the cloudlets' TLS certificates")
      ->check(CLI::ExistingFile);
  c->footer("Needs avahi-daemon (Debian: avahi-daemon). Exit status 7 when it cannot be reached.");
  c->callback([args] {
    const std::string token = args->token_file.empty() ? "" : cloudlet::read_client_token(args->token_file);
    std::vector<cloudlet::Cloudlet> cloudlets =
        cloudlet::browse(std::chrono::milliseconds(static_cast<long long>(args->timeout_s * 1000)));
    const std::vector<std::string> fetch_errors = complete_base_ids(cloudlets, token, args->cacert);

    if (args->json) {
      nlohmann::json list = nlohmann::json::array();
      for (std::size_t i = 0; i < cloudlets.size(); ++i) {
        const auto& cl = cloudlets[i];
        nlohmann::json j = {{"name", cl.name}, {"url", cl.url}, {"host", cl.host}, {"address", cl.address},
                            {"port", cl.port}, {"tls", cl.tls}, {"api", cl.api},   {"base_ids", cl.base_ids}};
        if (!cl.bases_digest.empty()) {
          j["bases_digest"] = cl.bases_digest;
          j["nbases"] = cl.nbases;
        }
        if (!fetch_errors[i].empty()) j["bases_error"] = fetch_errors[i];
        list.push_back(std::move(j));
      }
      std::printf("%s\n", nlohmann::json({{"ok", true}, {"cloudlets", list}}).dump(2).c_str());
      return;
    }
    if (cloudlets.empty()) {
      std::printf("no cloudlets found in %g s\n", args->timeout_s);
      return;
    }
    std::size_t name_w = 4, url_w = 3;
    for (const auto& cl : cloudlets) {
      name_w = std::max(name_w, cl.name.size());
      url_w = std::max(url_w, cl.url.size());
    }
    const int nw = static_cast<int>(name_w), uw = static_cast<int>(url_w);
    std::printf("%-*s  %-*s  %s\n", nw, "NAME", uw, "URL", "BASE IDS");
    for (std::size_t i = 0; i < cloudlets.size(); ++i) {
      const auto& cl = cloudlets[i];
      std::vector<std::string> cells = cl.base_ids;
      if (!fetch_errors[i].empty()) {
        cells = {"(" + std::to_string(cl.nbases) + " bases, digest " + cl.bases_digest +
                 "; cannot list them: " + fetch_errors[i] + ")"};
      } else if (cells.empty()) {
        cells = {"-"};
      }
      for (std::size_t k = 0; k < cells.size(); ++k) {
        std::printf("%-*s  %-*s  %s\n", nw, k == 0 ? cl.name.c_str() : "", uw, k == 0 ? cl.url.c_str() : "",
                    cells[k].c_str());
      }
    }
  });
}

}  // namespace vmsynth::cli
