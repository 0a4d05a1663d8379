// vmsynthd: the cloudlet daemon. One Daemon serves the HTTP API of
// docs/daemon.md over the library's front door (vmsynth/vmsynth.h: overlay
// headers, base ids, streaming synthesis through vmsynth_synth_feed) and
// vm/ (launch, status, stop of the VMs it synthesized).
//
// Life cycle: construct (reads tokens, scans bases, recovers the state
// directory), bind() (the port is taken; READY may be announced), serve()
// (blocks on the caller's thread until shutdown), shutdown() from another
// thread (stops accepting; sessions get `drain` to finish, then are
// cancelled and their sockets shut), then stop_vms().
//
// Thread safety: serve() on one thread; shutdown(), url() and stats from any.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vmsynth::cloudlet {

struct DaemonConfig {
  std::string listen_host = "127.0.0.1";
  int listen_port = 8470;
  std::string bases_dir;
  std::string state_dir;
  std::string token_file;  // empty: no authentication (loopback only)
  std::string tls_cert, tls_key;
  unsigned max_sessions = 16;                       // overlays received at once
  uint64_t max_overlay_bytes = uint64_t{64} << 30;  // per upload
  uint64_t max_state_bytes = 0;                     // VMs on disk, all told; 0: only free space limits
  bool mdns = true;
  unsigned threads = 0;                    // engine threads per synthesis; 0 = one per core
  std::string qemu_user;                   // run QEMU as this user (required when root)
  std::chrono::seconds idle_timeout{30};   // a sender silent this long is dropped
  std::chrono::seconds drain_timeout{20};  // SIGTERM: sessions' time to finish
};

class Daemon {
 public:
  using Log = std::function<void(const std::string&)>;
  // Throws vmsynth::Error (kUsage for bad configuration, naming the flag).
  Daemon(DaemonConfig cfg, Log log);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Binds the listening socket; returns the port (useful with port 0).
  int bind();
  // Serves until shutdown() has drained every session.
  void serve();
  // Stops accepting, lets sessions finish within drain_timeout, then
  // cancels the rest. Returns at once; serve() returns when all are done.
  void shutdown();
  // Stops every VM this daemon launched (after serve() returned).
  void stop_vms();

  std::string url() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmsynth::cloudlet
