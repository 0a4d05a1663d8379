// The client side of vmsynthd's API (docs/daemon.md): pushing an overlay to
// a cloudlet, as `vmsynth push` does. Holds no HTTP server code, so the
// command line tool links this (vmsynth_cloudlet_client) and not the daemon.
//
// push_overlay() streams the overlay to `POST URL/v1/vms` with cpp-httplib's
// client: a file with Content-Length, read in chunks of kPushChunkBytes
// (never whole); standard input chunked. Before the upload it asks
// `GET URL/v1/bases` (with the token), so that a refused token, an
// unreachable or unverifiable cloudlet, and an overlay made for a base the
// cloudlet does not hold are reported before a byte of the overlay is sent —
// the daemon answers such refusals early and closes the connection, and a
// client still writing a large body then sees only a reset connection.
//
// Refusals the daemon makes once it has the overlay's header (a wrong or
// missing key, say) come while the client is still sending: the daemon
// answers and closes, the close resets the connection, and httplib 0.11
// reports only the failed write. Over http the answer is then read from a
// duplicate of the socket (Linux keeps bytes that arrived before a reset);
// over https it cannot be (TLS records need the session), and such a
// refusal of an overlay larger than the socket buffers is reported as the
// connection closing (kIo, api_code "connection_closed").
//
// https:// always verifies the server's certificate and host name (against
// --cacert's PEM file, else the system's CAs); http:// and https:// are the
// only schemes.
//
// REQUIRES: SIGPIPE ignored (neither httplib nor OpenSSL sends with
// MSG_NOSIGNAL; the library leaves process-wide signal state to its caller).
//
// Thread safety: push_overlay() may run on any thread; `cancelled` and
// `progress` are called on the calling thread and one internal thread.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"

namespace vmsynth::cloudlet {

// Bytes read from the overlay per write to the socket.
inline constexpr size_t kPushChunkBytes = size_t{1} << 20;
// Seconds to establish the connection (TCP and TLS).
inline constexpr int kConnectTimeoutSeconds = 10;
// Seconds one write may block: the daemon reads no faster than it
// synthesizes, and drops a silent sender after its --idle-timeout (30 s).
inline constexpr int kWriteTimeoutSeconds = 120;
// Seconds to wait for the answer after the last byte (the synthesis's tail
// and, with launch, QEMU's resume).
inline constexpr int kResponseTimeoutSeconds = 3600;

// A cloudlet's address: http[s]://HOST[:PORT][/PREFIX].
struct CloudletUrl {
  bool tls = false;
  std::string host;    // without brackets for IPv6
  int port = 0;        // 80 / 443 when not given
  std::string prefix;  // path before /v1/..., no trailing '/'; may be empty
  std::string text;    // as given, without a trailing '/'
};
// Throws kUsage naming the URL for any other scheme or a malformed one.
CloudletUrl parse_cloudlet_url(const std::string& url);

// Whether `host` names only this machine (127.0.0.0/8, ::1, localhost).
bool is_loopback(const std::string& host);

struct PushRequest {
  std::string url;
  std::string overlay;       // a file, or "-" for standard input
  std::string token;         // sent as "Authorization: Bearer TOKEN"; empty: none
  std::string ca_cert_file;  // PEM CA certificates for https; empty: the system's
  bool launch = false;
  std::string disk_format = "raw";
  std::string key_hex;     // X-Vmsynth-Key: 64 hex digits; empty: none
  std::string passphrase;  // X-Vmsynth-Passphrase; empty: none
  // Bytes of the overlay sent so far, and its size (0 for standard input);
  // `waiting` once the last byte is sent and the answer is awaited.
  std::function<void(uint64_t sent, uint64_t total, bool waiting)> progress;
  // Polled every 100 ms and between chunks: true stops the upload.
  std::function<bool()> cancelled;
};

// A push that failed. code() is the vmsynth error the failure matches (the
// daemon's error code, e.g. wrong_base -> kWrongBase); http_status is the
// daemon's answer (0 when none came: connection, TLS, local checks) and
// api_code its `error.code` (or what the client calls the failure, e.g.
// "connection", "tls_verification").
class PushError : public Error {
 public:
  PushError(ErrorCode code, std::string message, int http_status, std::string api_code)
      : Error(code, std::move(message)), http_status_(http_status), api_code_(std::move(api_code)) {}
  int http_status() const { return http_status_; }
  const std::string& api_code() const { return api_code_; }

 private:
  int http_status_;
  std::string api_code_;
};

// The vmsynth error an API error code (and its HTTP status) corresponds to:
// the library's codes as themselves; unauthorized, forbidden, too_large,
// not_found and other 4xx -> kUsage; no_space, busy, shutting_down,
// incomplete, internal and other 5xx -> kIo; cancelled -> kInterrupted.
ErrorCode error_code_for(const std::string& api_code, int http_status);

// GET URL/v1/bases: the ids of the base VMs the cloudlet at `url` holds,
// with `token` (empty: none) and TLS verified against `ca_cert_file` (empty:
// the system's CAs). Throws PushError as push_overlay does.
std::vector<std::string> list_base_ids(const std::string& url, const std::string& token,
                                       const std::string& ca_cert_file);

// Pushes the overlay; returns the daemon's document for the new VM (201).
// Throws PushError for every failure (kInterrupted when `cancelled`).
nlohmann::json push_overlay(const PushRequest& request);

}  // namespace vmsynth::cloudlet
