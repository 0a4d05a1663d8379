// DNS-SD discovery of cloudlets over mDNS, through avahi-daemon (libavahi-client).
//
// A cloudlet daemon advertises itself as a `_vmsynth._tcp` service (Publisher);
// a client lists the cloudlets on its links (browse) and picks one that holds
// the base VM it needs (pick_cloudlet). The TXT record is documented in
// docs/daemon.md ("Discovery"):
//
//   txtvers=1  api=v1  tls=0|1
//   bases=<id>,<id>,...            when that string fits in 255 bytes, else
//   bases_digest=<16 hex> nbases=N (the client then reads GET /v1/bases)
//
// Both sides talk to avahi-daemon over the D-Bus system bus
// ($DBUS_SYSTEM_BUS_ADDRESS, default /run/dbus/system_bus_socket).
//
// Thread safety: a Publisher runs its own avahi poll thread; its public member
// functions may be called from any thread, except from inside its notice
// callback (which runs on that thread) where only name() and state() are
// allowed. browse() and the free functions are reentrant.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vmsynth::cloudlet {

// The DNS-SD service type of a vmsynth cloudlet.
inline constexpr const char* kServiceType = "_vmsynth._tcp";
// The longest string one TXT entry can hold (RFC 6763 section 6.1: one length byte).
inline constexpr std::size_t kMaxTxtEntry = 255;

// The TXT entries a cloudlet publishes for these base ids (each 32 hex digits,
// any case; written in lower case): txtvers, api, tls, then either bases= or
// bases_digest= + nbases=. Throws vmsynth::Error (kUsage) on a malformed id.
std::vector<std::string> txt_entries(bool tls, const std::vector<std::string>& base_ids);

// First 16 hex digits of SHA-256 over the sorted (lower-case) ids joined by ','.
// The empty list hashes the empty string.
std::string bases_digest(std::vector<std::string> base_ids);

// http://ADDR:PORT or https://ADDR:PORT; an IPv6 address goes in brackets, its
// zone ("fe80::1%eth0") written as %25 (RFC 6874).
std::string cloudlet_url(const std::string& address, std::uint16_t port, bool tls);

// Publishes one cloudlet. Never fails for lack of avahi-daemon: it reports a
// notice and keeps trying in the background; it re-registers after
// avahi-daemon restarts and picks an alternative name ("name #2") when the
// name is taken on the network. The destructor withdraws the service.
class Publisher {
 public:
  enum class State {
    kWaitingForDaemon,  // avahi-daemon (or the system bus) is not reachable yet
    kRegistering,       // avahi-daemon is probing the name
    kEstablished,       // the service is on the network under name()
  };

  struct Options {
    std::string name;                   // wanted instance name, 1..63 bytes of UTF-8 (e.g. "vmsynth on rack-3")
    std::uint16_t port = 0;             // the daemon's HTTP port, 1..65535
    bool tls = false;                   // whether that port speaks HTTPS
    std::vector<std::string> base_ids;  // 32 hex digits each
    // Called (on the publisher's thread, or inside the constructor) with one
    // line for a person: daemon missing or back, name changed, failure.
    std::function<void(const std::string&)> notice;
    // How long to wait before trying again when the system bus itself cannot be
    // reached (avahi-daemon's own absence is watched for, not polled).
    // Default 2 s; at least 10 ms.
    std::chrono::milliseconds retry_interval{2000};
  };

  // Throws vmsynth::Error (kUsage) on an invalid name, port or base id, and
  // (kIo) when the poll thread cannot start; never for avahi-daemon's absence.
  explicit Publisher(Options options);
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Publishes a new base id list (same validation as the constructor).
  void update_bases(std::vector<std::string> base_ids);

  State state() const;
  // The name the service is registered under: the wanted name or, after
  // collisions, the alternative avahi chose. Empty until first established.
  std::string name() const;
  // Waits until the service is established (true) or the timeout passes (false).
  bool wait_established(std::chrono::milliseconds timeout) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One resolved `_vmsynth._tcp` service.
struct Cloudlet {
  std::string name;     // DNS-SD instance name
  std::string host;     // host name, e.g. "rack-3.local"
  std::string address;  // "192.0.2.7", "2001:db8::7", "fe80::7%eth0"
  std::uint16_t port = 0;
  bool tls = false;
  std::string url;      // cloudlet_url(address, port, tls)
  std::string api;      // "v1"
  std::string txtvers;  // "1"
  // The base ids from bases=; empty when the cloudlet publishes a digest only
  // (until a caller fills them from GET <url>/v1/bases).
  std::vector<std::string> base_ids;
  std::string bases_digest;  // from bases_digest=, else empty
  std::size_t nbases = 0;    // from nbases=, else base_ids.size()
};

// Every `_vmsynth._tcp` service seen within `timeout` (it always waits that
// long), resolved, one entry per service name (an IPv4 address preferred),
// sorted by name. Services that do not resolve in time are left out.
// Throws vmsynth::Error (kUnsupported) when avahi-daemon cannot be reached
// ("is avahi-daemon running?"), (kIo) when it fails while browsing.
std::vector<Cloudlet> browse(std::chrono::milliseconds timeout);

// The cloudlet to send an overlay for `base_id` to: among those whose base_ids
// hold it (any case), the first TLS one, else the first, by name then URL.
// nullptr when none does. Cloudlets that publish only a digest count only once
// their base_ids have been filled in.
const Cloudlet* pick_cloudlet(const std::vector<Cloudlet>& cloudlets, const std::string& base_id);

}  // namespace vmsynth::cloudlet
