// vmsynthd: the cloudlet daemon's executable. Flags, signals, readiness;
// the daemon itself is cloudlet/daemon.h.
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "cloudlet/daemon.h"
#include "common/error.h"
#include "vmsynth/vmsynth.h"

namespace {

using vmsynth::Error;
using vmsynth::ErrorCode;

void log_line(const std::string& s) {
  std::fprintf(stderr, "vmsynthd: %s\n", s.c_str());
  std::fflush(stderr);
}

// HOST:PORT, [V6]:PORT.
void parse_listen(const std::string& s, vmsynth::cloudlet::DaemonConfig& cfg) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 == s.size()) {
    throw Error(ErrorCode::kUsage, "--listen '" + s + "': expected HOST:PORT, e.g. 127.0.0.1:8470");
  }
  std::string host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1) port = -1;
  } catch (...) {
  }
  if (host.empty() || port < 0 || port > 65535) {
    throw Error(ErrorCode::kUsage, "--listen '" + s + "': expected HOST:PORT with a port from 0 to 65535");
  }
  cfg.listen_host = host;
  cfg.listen_port = port;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "vmsynthd: the vmsynth cloudlet daemon. Receives VM overlays over HTTP, synthesizes them against the "
      "base VMs it holds while they arrive, and launches them. API: docs/daemon.md."};
  app.set_version_flag("--version", std::string("vmsynthd ") + vmsynth_version_string());
  vmsynth::cloudlet::DaemonConfig cfg;
  std::string listen = "127.0.0.1:8470";
  bool mdns = true, no_mdns = false;
  unsigned idle = 30, drain = 20;
  app.add_option("--listen", listen,
                 "HOST:PORT to serve on (port 0: any free port, printed at start); an address "
                 "other than loopback needs --token-file")
      ->capture_default_str();
  app.add_option("--bases", cfg.bases_dir, "directory whose subdirectories are base VMs (memory.img + disk.img)")
      ->required();
  app.add_option("--state", cfg.state_dir, "directory for synthesized VMs and the daemon's own state")->required();
  app.add_option("--token-file", cfg.token_file,
                 "bearer tokens, one a line: NAME TOKEN or NAME sha256:HEX; every endpoint but /v1/health needs one");
  app.add_option("--tls-cert", cfg.tls_cert, "PEM certificate (chain): serve HTTPS")->check(CLI::ExistingFile);
  app.add_option("--tls-key", cfg.tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  app.add_option("--max-sessions", cfg.max_sessions, "overlays received at once; more get 503")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--max-overlay-bytes", cfg.max_overlay_bytes, "largest overlay accepted; larger get 413")
      ->capture_default_str();
  app.add_option("--max-state-bytes", cfg.max_state_bytes,
                 "disk space all synthesized VMs may take together; a VM that would pass it gets 507 (0: free space "
                 "is the only limit)")
      ->capture_default_str();
  CLI::Option* mdns_flag =
      app.add_flag("--mdns", mdns, "publish _vmsynth._tcp with DNS-SD through avahi-daemon (default)");
  app.add_flag("--no-mdns", no_mdns, "do not publish")->excludes(mdns_flag);
  app.add_option("--threads", cfg.threads, "engine threads per synthesis (0: one per core)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 256u));
  app.add_option("--qemu-user", cfg.qemu_user,
                 "unprivileged user QEMU runs as (required to launch VMs when vmsynthd runs as root)");
  app.add_option("--idle-timeout", idle, "seconds a connection may stay silent before it is dropped")
      ->capture_default_str()
      ->check(CLI::Range(1u, 3600u));
  app.add_option("--drain-timeout", drain,
                 "on SIGTERM, seconds in-flight uploads get to finish before they are cancelled")
      ->capture_default_str()
      ->check(CLI::Range(0u, 3600u));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every bad flag 2, as docs/daemon.md says.
    return app.exit(e) == 0 ? 0 : static_cast<int>(ErrorCode::kUsage);
  }
  cfg.mdns = mdns && !no_mdns;
  cfg.idle_timeout = std::chrono::seconds(idle);
  cfg.drain_timeout = std::chrono::seconds(drain);

  // Signals are taken by one thread with sigwait; every other thread
  // (created below, inheriting this mask) never sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  try {
    parse_listen(listen, cfg);
    vmsynth::cloudlet::Daemon daemon(cfg, log_line);
    daemon.bind();
    log_line("listening on " + daemon.url());
    sd_notify(0, "READY=1");
    std::thread signals([&] {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      sd_notify(0, "STOPPING=1");
      log_line(std::string("got ") + strsignal(sig));
      daemon.shutdown();
      // A second signal while draining: stop at once.
      sigwait(&stop_signals, &sig);
      log_line("second signal: exiting without draining");
      std::_Exit(128 + sig);
    });
    signals.detach();
    daemon.serve();
    daemon.stop_vms();
    log_line("stopped");
    return 0;
  } catch (const Error& e) {
    log_line("error: " + e.message());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    log_line(std::string("internal error: ") + e.what());
    return 70;
  }
}
