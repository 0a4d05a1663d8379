// `vmsynth discover`: the cloudlets on this machine's links (DNS-SD
// `_vmsynth._tcp` through avahi-daemon, cloudlet/discovery.h) and the base VMs
// each holds. A cloudlet whose TXT record carries only a digest of its base
// ids is asked for them (GET <url>/v1/bases); when that fails the output says
// so for that cloudlet and the command still succeeds.
#include <httplib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cloudlet/discovery.h"
#include "common/error.h"

namespace vmsynth::cli {

namespace {

// How long one GET /v1/bases may take to connect, and then to answer, in seconds.
constexpr time_t kFetchConnectTimeoutS = 3;
constexpr time_t kFetchReadTimeoutS = 5;

struct FetchOptions {
  std::string token;   // sent as "Authorization: Bearer <token>"; empty: none
  std::string cacert;  // PEM file of CAs that sign the cloudlets' certificates; empty: the system's
};

// The token of the first "NAME TOKEN" line (blank lines and '#' comments skipped).
std::string read_token(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw io_error("cannot read the token file", path, errno);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string name, token;
    if (!(fields >> name) || name[0] == '#') continue;
    if (fields >> token) return token;
    throw Error(ErrorCode::kUsage, "token file '" + path + "': line '" + name + "' has no token (want NAME TOKEN)");
  }
  throw Error(ErrorCode::kUsage, "token file '" + path + "' holds no NAME TOKEN line");
}

// Fills c.base_ids from GET <c.url>/v1/bases. Returns an empty string, or why not.
std::string fetch_base_ids(cloudlet::Cloudlet& c, const FetchOptions& opt) {
  std::unique_ptr<httplib::ClientImpl> http;
  if (c.tls) {
    auto ssl = std::make_unique<httplib::SSLClient>(c.address, c.port);
    if (!opt.cacert.empty()) ssl->set_ca_cert_path(opt.cacert);
    http = std::move(ssl);
  } else {
    http = std::make_unique<httplib::ClientImpl>(c.address, c.port);
  }
  http->set_connection_timeout(kFetchConnectTimeoutS);
  http->set_read_timeout(kFetchReadTimeoutS);
  if (!opt.token.empty()) http->set_bearer_token_auth(opt.token);
  const std::string what = "GET " + c.url + "/v1/bases: ";
  httplib::Result r = http->Get("/v1/bases");
  if (!r) {
    return what + (r.error() == httplib::Error::Connection ? std::string("cannot connect")
                                                           : "failed (" + httplib::to_string(r.error()) + ")");
  }
  if (r->status != 200) return what + "HTTP " + std::to_string(r->status);
  std::vector<std::string> ids;
  try {
    // The list may differ from the TXT's digest: the bases changed since; the answer is newer.
    for (const auto& base : nlohmann::json::parse(r->body)) ids.push_back(base.at("id").get<std::string>());
  } catch (const std::exception& e) {
    return what + "not a list of bases with ids (" + e.what() + ")";
  }
  c.base_ids = std::move(ids);
  return "";
}

}  // namespace

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
    FetchOptions fetch;
    fetch.cacert = args->cacert;
    if (!args->token_file.empty()) fetch.token = read_token(args->token_file);
    std::vector<cloudlet::Cloudlet> cloudlets =
        cloudlet::browse(std::chrono::milliseconds(static_cast<long long>(args->timeout_s * 1000)));
    std::vector<std::string> fetch_errors(cloudlets.size());
    for (std::size_t i = 0; i < cloudlets.size(); ++i) {
      if (!cloudlets[i].bases_digest.empty()) fetch_errors[i] = fetch_base_ids(cloudlets[i], fetch);
    }

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
