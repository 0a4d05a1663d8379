// `vmsynth push`: stream an overlay to a cloudlet (vmsynthd), which
// synthesizes it while it arrives and may launch it. The HTTP side is
// cloudlet/client.h; this file is flags, the key, progress and printing.

#include <signal.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "cli/cloudlet_lookup.h"
#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/key_options.h"
#include "cli/progress.h"
#include "cloudlet/client.h"
#include "cloudlet/discovery.h"
#include "cloudlet/tokens.h"
#include "common/error.h"
#include "common/hex.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth::cli {

namespace {

// Prints a failed push (stderr, and stdout with --json) and returns its
// exit status.
int report_push_failure(const cloudlet::PushError& e, bool json) {
  const int status = static_cast<int>(e.code());
  if (json) {
    nlohmann::json j = {
        {"ok", false},
        {"error",
         {{"code", std::string(error_code_name(e.code()))},
          {"message", e.message()},
          {"api_code", e.api_code()},
          {"http_status", e.http_status() != 0 ? nlohmann::json(e.http_status()) : nlohmann::json(nullptr)}}}};
    std::printf("%s\n", j.dump(2).c_str());
  }
  if (e.http_status() != 0) {
    std::fprintf(stderr, "vmsynth: push: %s (HTTP %d %s)\n", e.message().c_str(), e.http_status(),
                 e.api_code().c_str());
  } else if (e.code() == ErrorCode::kInterrupted && interrupting_signal() != 0) {
    const char* abbrev = sigabbrev_np(interrupting_signal());
    std::fprintf(stderr, "vmsynth: push: interrupted by SIG%s: %s\n", abbrev ? abbrev : "NAL", e.message().c_str());
  } else {
    std::fprintf(stderr, "vmsynth: push: %s\n", e.message().c_str());
  }
  return status;
}

void print_push_result(const nlohmann::json& doc, const std::string& url, bool json) {
  if (doc.contains("launch_error") && doc["launch_error"].is_object()) {
    std::fprintf(stderr, "vmsynth: notice: %s synthesized VM %s but did not launch it: %s (%s)\n", url.c_str(),
                 doc.value("id", "").c_str(), doc["launch_error"].value("message", "").c_str(),
                 doc["launch_error"].value("code", "").c_str());
  }
  if (json) {
    // "ok" first and "url" last, the cloudlet's fields between them.
    nlohmann::ordered_json j = {{"ok", true}};
    const nlohmann::ordered_json fields = nlohmann::ordered_json::parse(doc.dump());
    for (const auto& [k, v] : fields.items()) j[k] = v;
    j["url"] = url;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  const nlohmann::json t = doc.value("timings", nlohmann::json::object());
  const std::string id = doc.value("id", ""), dir = doc.value("dir", "");
  if (doc.value("state", "") == "running" && t.contains("first_byte_to_running_s")) {
    std::printf("running VM %s on %s %.3f s after the first byte (synthesized in %.3f s; %s)\n", id.c_str(),
                url.c_str(), t.value("first_byte_to_running_s", 0.0), t.value("first_byte_to_synthesized_s", 0.0),
                dir.c_str());
  } else {
    std::printf("synthesized VM %s on %s in %.3f s (%s)\n", id.c_str(), url.c_str(),
                t.value("first_byte_to_synthesized_s", 0.0), dir.c_str());
  }
}

// The base id of an overlay file, from its header.
std::string overlay_base_id(const std::string& path) {
  if (path == "-") {
    throw cloudlet::PushError(ErrorCode::kUsage, "--discover with an overlay on standard input needs --base-id", 0,
                              "usage");
  }
  char head[VMSYNTH_OVERLAY_HEADER_BYTES] = {};
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw cloudlet::PushError(ErrorCode::kUsage, "cannot open the overlay '" + path + "'", 0, "usage");
  const size_t n = std::fread(head, 1, sizeof head, f);
  std::fclose(f);
  char* out = nullptr;
  const int rc = vmsynth_overlay_header(head, n, &out);
  const nlohmann::json j = nlohmann::json::parse(out != nullptr ? out : "{}", nullptr, false);
  vmsynth_free(out);
  if (rc != VMSYNTH_OK) {
    const std::string why = j.is_object() && j.contains("error") ? j["error"].value("message", "") : "";
    throw cloudlet::PushError(static_cast<ErrorCode>(rc), "overlay '" + path + "': " + why, 0, "corrupt");
  }
  return j.value("base_id", "");
}

// --discover: the URL of a cloudlet on the local links that holds the base.
template <typename Args>
std::string discover_cloudlet(const Args& args, const std::string& token) {
  const std::string base_id = args.base_id.empty() ? overlay_base_id(args.overlay) : args.base_id;
  std::vector<cloudlet::Cloudlet> found =
      cloudlet::browse(std::chrono::milliseconds(static_cast<long long>(args.discover_timeout_s * 1000)));
  complete_base_ids(found, token, args.cacert);
  const cloudlet::Cloudlet* pick = cloudlet::pick_cloudlet(found, base_id);
  if (pick == nullptr) {
    throw cloudlet::PushError(ErrorCode::kWrongBase,
                              "none of the " + std::to_string(found.size()) + " cloudlet(s) found in " +
                                  std::to_string(args.discover_timeout_s) + " s holds base VM " + base_id +
                                  " (vmsynth discover lists them)",
                              0, "wrong_base");
  }
  if (!args.quiet) std::fprintf(stderr, "vmsynth: push: found %s at %s\n", pick->name.c_str(), pick->url.c_str());
  return pick->url;
}

}  // namespace

void add_push_command(CLI::App& app) {
  struct Args {
    std::string url, token_file, cacert, disk_format = "raw", overlay, base_id;
    bool launch = false, json = false, quiet = false, discover = false;
    double discover_timeout_s = 3;
    KeyOptions key;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "push",
      "Stream an overlay to a cloudlet (vmsynthd), which synthesizes the launch VM while the overlay arrives "
      "and, with --launch, runs it. Before sending, asks the cloudlet for its base VMs: a refused token, an "
      "unreachable or unverifiable cloudlet, or an overlay for a base it does not hold fail without an upload. "
      "Exit status: 0 done; 2 usage, bad URL, token missing or refused (HTTP 401/403), overlay too large "
      "(413) or other 4xx; 3 corrupt overlay; 4 wrong base; 5 wrong or missing key; 6 cannot connect, TLS "
      "verification failed, cloudlet out of space (507), busy or failing (5xx); 7 unsupported; 9 interrupted "
      "(Ctrl-C stops the upload) or cancelled by the cloudlet.");
  c->add_option("--to", args->url,
                "The cloudlet: http://HOST:PORT or https://HOST:PORT (vmsynthd's --listen, e.g. "
                "http://127.0.0.1:8470); other schemes are refused");
  CLI::Option* discover =
      c->add_flag("--discover", args->discover,
                  "Instead of --to: find a cloudlet on the local links (DNS-SD, as `vmsynth discover`) that holds "
                  "--base-id and push to it (one with TLS first, then by name)")
          ->excludes("--to");
  c->add_option("--base-id", args->base_id,
                "With --discover: the base VM the cloudlet must hold (32 hex digits; default: the overlay "
                "file's own, read from its header)")
      ->needs(discover);
  c->add_option("--discover-timeout", args->discover_timeout_s,
                "With --discover: seconds to listen for cloudlets, 0.1-60")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 60.0))
      ->needs(discover);
  c->add_option("--token-file", args->token_file,
                "Bearer token file (vmsynthd's format: NAME TOKEN lines); the first token is sent as "
                "'Authorization: Bearer TOKEN'")
      ->check(CLI::ExistingFile);
  c->add_option("--cacert", args->cacert,
                "PEM file of the CA certificate(s) that signed the cloudlet's certificate (https only; default: "
                "the system's CAs). The certificate and host name are always verified")
      ->check(CLI::ExistingFile);
  c->add_flag("--launch", args->launch,
              "Ask the cloudlet to run the VM once synthesized; the time from its first byte to a running "
              "guest is printed. A VM it cannot launch stays synthesized (a notice says why; exit 0)");
  c->add_option("--disk-format", args->disk_format,
                "Launch disk on the cloudlet: raw (default) or qcow2 (backed by its base disk)")
      ->check(CLI::IsMember({"raw", "qcow2"}));
  args->key.add_to(*c,
                   "of an encrypted overlay, sent to the cloudlet in a request header (so refused over plain "
                   "http except to a loopback host)");
  c->add_flag("--json", args->json,
              "Print the result as JSON: {\"ok\":true, the cloudlet's fields, \"url\"}, or "
              "{\"ok\":false,\"error\":{\"code\",\"message\",\"api_code\",\"http_status\"}}");
  add_quiet_flag(*c, args->quiet);
  c->add_option("overlay", args->overlay,
                "Overlay file (sent with Content-Length), or - for standard input (sent chunked, as is a pipe "
                "such as <(command))")
      ->required();
  c->callback([args] {
    if (args->url.empty() && !args->discover) throw Error(ErrorCode::kUsage, "push: give --to URL or --discover");
    cloudlet::PushRequest rq;
    rq.url = args->url;
    rq.overlay = args->overlay;
    rq.ca_cert_file = args->cacert;
    rq.launch = args->launch;
    rq.disk_format = args->disk_format;
    int status = 0;
    try {
      if (!args->token_file.empty()) {
        try {
          rq.token = cloudlet::read_client_token(args->token_file);
        } catch (const Error& e) {
          throw cloudlet::PushError(e.code(), e.message(), 0, "usage");
        }
      }
      if (args->key.given()) {
        codec::KeySpec k;
        try {
          k = args->key.load();
        } catch (const Error& e) {
          throw cloudlet::PushError(e.code(), e.message(), 0, "usage");
        }
        if (k.kind == codec::KeySpec::Kind::kRawKey) {
          rq.key_hex = to_hex(k.secret.bytes());
        } else {
          for (std::byte b : k.secret.bytes()) {
            const auto ch = std::to_integer<unsigned char>(b);
            if (ch < 0x20 || ch == 0x7f) {
              throw cloudlet::PushError(ErrorCode::kUsage,
                                        k.origin +
                                            " holds a line break or another control character, which an "
                                            "HTTP header cannot carry",
                                        0, "usage");
            }
            rq.passphrase += static_cast<char>(ch);
          }
        }
      }
      if (args->discover) rq.url = discover_cloudlet(*args, rq.token);
      // A reset connection must be an error from write(), not the end of
      // the process (neither httplib nor OpenSSL sends with MSG_NOSIGNAL).
      std::signal(SIGPIPE, SIG_IGN);
      install_interrupt_handlers();
      rq.cancelled = [] { return interrupting_signal() != 0; };
      TerminalProgress progress("pushing", args->quiet);
      if (ProgressFn fn = progress.callback()) {
        rq.progress = [fn](uint64_t sent, uint64_t total, bool waiting) {
          fn(Progress{waiting ? "waiting for the cloudlet" : "sending", sent, waiting ? 0 : total});
        };
      }
      const nlohmann::json doc = cloudlet::push_overlay(rq);
      progress.finish();
      print_push_result(doc, cloudlet::parse_cloudlet_url(rq.url).text, args->json);
      return;
    } catch (const cloudlet::PushError& e) {
      status = report_push_failure(e, args->json);
    } catch (const Error& e) {
      status = report_push_failure(
          cloudlet::PushError(e.code(), e.message(), 0, std::string(error_code_name(e.code()))), args->json);
    }
    throw CommandFailed{status};
  });
}

}  // namespace vmsynth::cli
