#include "cloudlet/client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "vmsynth/vmsynth.h"

namespace vmsynth::cloudlet {

namespace {

using json = nlohmann::json;

PushError usage(std::string message) { return PushError(ErrorCode::kUsage, std::move(message), 0, "usage"); }

// An open file descriptor, closed on destruction unless it is stdin.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ > STDIN_FILENO) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Where the overlay's bytes come from: a regular file (sized, read at
// offsets) or a stream (stdin, a pipe; read in order). A stream's first
// bytes are read ahead for the header check and sent first.
class OverlaySource {
 public:
  OverlaySource(const std::string& path, const std::function<bool()>& cancelled)
      : path_(path),
        fd_(path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC)),
        cancelled_(cancelled) {
    if (fd_.get() < 0) {
      const int err = errno;
      throw PushError(err == ENOENT || err == EACCES ? ErrorCode::kUsage : ErrorCode::kIo,
                      io_error("cannot open the overlay", path, err).message(), 0, "usage");
    }
    struct stat st {};
    if (::fstat(fd_.get(), &st) == 0 && S_ISREG(st.st_mode)) {
      sized_ = true;
      size_ = static_cast<uint64_t>(st.st_size);
    }
  }

  bool sized() const { return sized_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return path_; }

  // The first `n` bytes (fewer if the overlay is shorter).
  std::string head(size_t n) {
    std::string h(n, '\0');
    size_t got = 0;
    if (sized_) {
      while (got < n) {
        const ssize_t r = ::pread(fd_.get(), h.data() + got, n - got, static_cast<off_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
          throw PushError(ErrorCode::kIo, io_error("cannot read the overlay", path_, errno).message(), 0, "io");
        if (r == 0) break;
        got += static_cast<size_t>(r);
      }
    } else {
      while (got < n) {
        const size_t r = read_stream(h.data() + got, n - got);
        if (r == 0) break;
        got += r;
      }
      pending_ = h.substr(0, got);
    }
    h.resize(got);
    return h;
  }

  // Up to `n` bytes at `offset` of a file; 0 at its end.
  size_t read_at(char* buf, size_t n, uint64_t offset) {
    for (;;) {
      const ssize_t r = ::pread(fd_.get(), buf, n, static_cast<off_t>(offset));
      if (r >= 0) return static_cast<size_t>(r);
      if (errno != EINTR)
        throw PushError(ErrorCode::kIo, io_error("cannot read the overlay", path_, errno).message(), 0, "io");
    }
  }

  // The stream's next bytes (what head() read ahead first); 0 at its end.
  size_t read_next(char* buf, size_t n) {
    if (!pending_.empty()) {
      const size_t take = std::min(n, pending_.size());
      std::copy_n(pending_.data(), take, buf);
      pending_.erase(0, take);
      return take;
    }
    return read_stream(buf, n);
  }

 private:
  // Waits for input in slices of 100 ms so that a cancel is seen even while
  // standard input stays silent.
  size_t read_stream(char* buf, size_t n) {
    for (;;) {
      if (cancelled_ && cancelled_()) throw PushError(ErrorCode::kInterrupted, "interrupted", 0, "interrupted");
      pollfd p{fd_.get(), POLLIN, 0};
      const int pr = ::poll(&p, 1, 100);
      if (pr < 0 && errno != EINTR) {
        throw PushError(ErrorCode::kIo, io_error("cannot wait for the overlay", path_, errno).message(), 0, "io");
      }
      if (pr <= 0) continue;
      const ssize_t r = ::read(fd_.get(), buf, n);
      if (r >= 0) return static_cast<size_t>(r);
      if (errno == EINTR || errno == EAGAIN) continue;
      throw PushError(ErrorCode::kIo, io_error("cannot read the overlay", path_, errno).message(), 0, "io");
    }
  }

  std::string path_;
  Fd fd_;
  const std::function<bool()>& cancelled_;
  bool sized_ = false;
  uint64_t size_ = 0;
  std::string pending_;
};

// The cloudlet's words for a failed request that got no HTTP answer.
PushError transport_error(httplib::Error e, const CloudletUrl& url, const httplib::ClientImpl& cli, uint64_t sent) {
  const std::string& u = url.text;
  switch (e) {
    case httplib::Error::Connection:
      return PushError(
          ErrorCode::kIo,
          "cannot connect to " + u + " (connection refused or host unreachable: is vmsynthd running there?)", 0,
          "connection");
    case httplib::Error::ConnectionTimeout:
      return PushError(ErrorCode::kIo,
                       "cannot connect to " + u + ": no answer within " + std::to_string(kConnectTimeoutSeconds) + " s",
                       0, "connection");
    case httplib::Error::SSLConnection:
      return PushError(ErrorCode::kIo, "the TLS handshake with " + u + " failed (does it serve https on that port?)", 0,
                       "tls");
    case httplib::Error::SSLLoadingCerts:
      return usage("cannot load the CA certificates of --cacert (not a PEM file?)");
    case httplib::Error::SSLServerVerification: {
      long v = X509_V_OK;
      if (const auto* ssl = dynamic_cast<const httplib::SSLClient*>(&cli)) v = ssl->get_openssl_verify_result();
      const std::string why = v != X509_V_OK ? std::string(X509_verify_cert_error_string(v)) +
                                                   " (give the CA certificate that signed it with --cacert)"
                                             : "its certificate does not name the host '" + url.host +
                                                   "' (use the name or address its certificate gives)";
      return PushError(ErrorCode::kIo, "TLS certificate verification of " + u + " failed: " + why, 0,
                       "tls_verification");
    }
    case httplib::Error::Write:
      return PushError(ErrorCode::kIo,
                       u + " closed the connection after " + std::to_string(sent) +
                           " bytes of the overlay, before its answer could be read (it refuses an overlay early, "
                           "e.g. a wrong key or one too large, and its log says why)",
                       0, "connection_closed");
    case httplib::Error::Read:
      return PushError(ErrorCode::kIo,
                       u + " closed the connection without an HTTP answer, or sent none for " +
                           std::to_string(kResponseTimeoutSeconds) + " s (is it vmsynthd? does it serve " +
                           (url.tls ? "plain http" : "https") + " on that port?)",
                       0, "no_answer");
    default:
      return PushError(ErrorCode::kIo, "request to " + u + " failed: " + httplib::to_string(e), 0, "http");
  }
}

// A non-2xx answer as a PushError: the daemon's {"error":{code,message}}.
PushError answer_error(const httplib::Response& res, const CloudletUrl& url) {
  const json j = json::parse(res.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const std::string code = j["error"].value("code", "http");
    return PushError(error_code_for(code, res.status), j["error"].value("message", "(no message)"), res.status, code);
  }
  std::string body = res.body.substr(0, 200);
  std::replace_if(
      body.begin(), body.end(), [](char c) { return std::iscntrl(static_cast<unsigned char>(c)); }, ' ');
  return PushError(error_code_for("", res.status),
                   url.text + " answered HTTP " + std::to_string(res.status) + (body.empty() ? "" : ": " + body) +
                       " (is it vmsynthd?)",
                   res.status, "http");
}

// A duplicate of the connection's socket (plain http only), to read an
// answer that arrived while the body was still being sent. The daemon
// refuses an overlay as soon as it knows (a wrong key or base is known from
// the header), answers, and closes; the close resets the connection, the
// next write fails, and httplib (0.11) reports only that. Linux keeps the
// bytes that arrived before the reset readable, so they are read here.
class SocketTap {
 public:
  SocketTap() = default;
  ~SocketTap() { reset(-1); }
  SocketTap(const SocketTap&) = delete;
  SocketTap& operator=(const SocketTap&) = delete;

  // Called by httplib for every new connection.
  void reset(int fd) {
    std::lock_guard lock(mu_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd >= 0 ? ::fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  }

  // The HTTP answer waiting on the socket, if a whole one is there within
  // `timeout_ms`.
  std::optional<httplib::Response> answer(int timeout_ms) {
    std::lock_guard lock(mu_);
    if (fd_ < 0) return std::nullopt;
    std::string raw;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    size_t body_at = std::string::npos, length = std::string::npos;
    for (;;) {
      if (body_at == std::string::npos && (body_at = raw.find("\r\n\r\n")) != std::string::npos) {
        body_at += 4;
        const std::string head = raw.substr(0, body_at);
        std::string lower(head.size(), ' ');
        std::transform(head.begin(), head.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
        if (const size_t at = lower.find("\r\ncontent-length:"); at != std::string::npos) {
          length = std::strtoull(head.c_str() + at + 17, nullptr, 10);
        }
      }
      if (body_at != std::string::npos && length != std::string::npos && raw.size() >= body_at + length) break;
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
      pollfd p{fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, left) <= 0) break;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;  // end of the answer (the peer closed), or the reset
      raw.append(buf, static_cast<size_t>(n));
      if (raw.size() > (size_t{1} << 20)) break;
    }
    int status = 0;
    if (body_at == std::string::npos || std::sscanf(raw.c_str(), "HTTP/1.%*d %d", &status) != 1 || status < 200) {
      return std::nullopt;
    }
    httplib::Response res;
    res.status = status;
    res.body = raw.substr(body_at, length);
    return res;
  }

 private:
  std::mutex mu_;
  int fd_ = -1;
};

std::unique_ptr<httplib::ClientImpl> make_client(const CloudletUrl& url, const std::string& ca_cert_file) {
  std::unique_ptr<httplib::ClientImpl> cli;
  if (url.tls) {
    auto ssl = std::make_unique<httplib::SSLClient>(url.host, url.port);
    ssl->enable_server_certificate_verification(true);  // always
    if (!ca_cert_file.empty()) ssl->set_ca_cert_path(ca_cert_file);
    cli = std::move(ssl);
  } else {
    cli = std::make_unique<httplib::ClientImpl>(url.host, url.port);
  }
  cli->set_connection_timeout(kConnectTimeoutSeconds, 0);
  cli->set_write_timeout(kWriteTimeoutSeconds, 0);
  cli->set_read_timeout(kResponseTimeoutSeconds, 0);
  cli->set_keep_alive(true);  // the preflight's connection carries the upload
  cli->set_follow_location(false);
  cli->set_compress(false);
  return cli;
}

// Runs `request` on its own thread while this one polls `cancelled`; a
// cancel shuts the socket down, which ends a blocked read or write.
template <typename F>
httplib::Result run_cancellable(httplib::ClientImpl& cli, const std::function<bool()>& cancelled,
                                std::atomic<bool>& stop, F request) {
  std::optional<httplib::Result> result;
  std::exception_ptr failure;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread worker([&] {
    try {
      httplib::Result r = request();
      std::lock_guard lock(mu);
      result.emplace(std::move(r));
    } catch (...) {
      std::lock_guard lock(mu);
      failure = std::current_exception();
    }
    std::lock_guard lock(mu);
    done = true;
    cv.notify_all();
  });
  {
    std::unique_lock lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return done; })) {
      if (!stop && cancelled && cancelled()) {
        stop = true;
        lock.unlock();
        cli.stop();
        lock.lock();
      }
    }
  }
  worker.join();
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}

}  // namespace

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return false;
}

CloudletUrl parse_cloudlet_url(const std::string& url) {
  CloudletUrl u;
  const size_t sep = url.find("://");
  std::string scheme = sep == std::string::npos ? "" : url.substr(0, sep);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (scheme != "http" && scheme != "https") {
    throw usage("--to '" + url + "': the URL must start with http:// or https://, e.g. http://127.0.0.1:8470");
  }
  u.tls = scheme == "https";
  std::string rest = url.substr(sep + 3);
  if (rest.find_first_of("?#@") != std::string::npos) {
    throw usage("--to '" + url + "': expected http[s]://HOST[:PORT][/PATH] without user, query or fragment");
  }
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  u.prefix = slash == std::string::npos ? "" : rest.substr(slash);
  while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  std::string port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos) throw usage("--to '" + url + "': unclosed '[' in the host");
    u.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') throw usage("--to '" + url + "': expected ':PORT' after ']'");
    if (!after.empty()) port = after.substr(1);
    if (after == ":") port = "?";
  } else {
    const size_t colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = colon + 1 < authority.size() ? authority.substr(colon + 1) : "?";
  }
  if (u.host.empty()) throw usage("--to '" + url + "': no host");
  u.port = u.tls ? 443 : 80;
  if (!port.empty()) {
    if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }) ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      throw usage("--to '" + url + "': the port must be a number from 1 to 65535");
    }
    u.port = std::stoi(port);
  }
  u.text = url;
  while (u.text.size() > sep + 3 && u.text.back() == '/') u.text.pop_back();
  return u;
}

ErrorCode error_code_for(const std::string& api_code, int http_status) {
  if (api_code == "usage") return ErrorCode::kUsage;
  if (api_code == "corrupt") return ErrorCode::kCorrupt;
  if (api_code == "wrong_base") return ErrorCode::kWrongBase;
  if (api_code == "wrong_key") return ErrorCode::kWrongKey;
  if (api_code == "io" || api_code == "no_space") return ErrorCode::kIo;
  if (api_code == "unsupported" || api_code == "refused") return ErrorCode::kUnsupported;
  if (api_code == "exists") return ErrorCode::kExists;
  if (api_code == "cancelled" || api_code == "interrupted") return ErrorCode::kInterrupted;
  if (http_status >= 400 && http_status < 500) return ErrorCode::kUsage;  // unauthorized, forbidden, too_large, ...
  return ErrorCode::kIo;                                                  // 5xx: busy, shutting_down, internal, ...
}

std::vector<std::string> list_base_ids(const std::string& url_text, const std::string& token,
                                       const std::string& ca_cert_file) {
  const CloudletUrl url = parse_cloudlet_url(url_text);
  std::unique_ptr<httplib::ClientImpl> cli = make_client(url, ca_cert_file);
  httplib::Headers headers;
  if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
  httplib::Result r = cli->Get(url.prefix + "/v1/bases", headers);
  if (!r) throw transport_error(r.error(), url, *cli, 0);
  if (r->status != 200) throw answer_error(*r, url);
  std::vector<std::string> ids;
  const json list = json::parse(r->body, nullptr, false);
  if (list.is_array()) {
    for (const json& b : list) {
      if (b.is_object() && b.contains("id") && b["id"].is_string()) ids.push_back(b["id"].get<std::string>());
    }
  }
  if (!list.is_array() || ids.size() != list.size()) {
    throw PushError(ErrorCode::kIo, "GET " + url.text + "/v1/bases did not answer a list of bases with ids", r->status,
                    "http");
  }
  return ids;
}

json push_overlay(const PushRequest& rq) {
  const CloudletUrl url = parse_cloudlet_url(rq.url);
  if (!rq.ca_cert_file.empty()) {
    if (!url.tls) throw usage("--cacert is for https:// URLs; " + url.text + " is plain http");
    if (::access(rq.ca_cert_file.c_str(), R_OK) != 0) {
      throw usage(io_error("cannot read --cacert", rq.ca_cert_file, errno).message());
    }
  }
  if ((!rq.key_hex.empty() || !rq.passphrase.empty()) && !url.tls && !is_loopback(url.host)) {
    throw usage("refusing to send the overlay's " + std::string(rq.key_hex.empty() ? "passphrase" : "key") + " to " +
                url.text + " over plain http, where anyone on the way can read it: use https://");
  }
  // Name resolution first: its failure says more than "cannot connect".
  {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(url.host.c_str(), nullptr, &hints, &found);
    if (rc != 0) {
      throw PushError(ErrorCode::kIo,
                      "cannot resolve the host '" + url.host + "' of " + url.text + ": " + ::gai_strerror(rc), 0,
                      "dns");
    }
    ::freeaddrinfo(found);
  }

  OverlaySource source(rq.overlay, rq.cancelled);
  std::unique_ptr<httplib::ClientImpl> cli = make_client(url, rq.ca_cert_file);
  // TLS: the bytes on the socket are records only the TLS session can read.
  SocketTap tap;
  if (!url.tls) cli->set_socket_options([&tap](socket_t fd) { tap.reset(fd); });
  httplib::Headers headers;
  if (!rq.token.empty()) headers.emplace("Authorization", "Bearer " + rq.token);
  std::atomic<bool> stop{false};
  auto interrupted = [&](uint64_t sent) {
    return PushError(ErrorCode::kInterrupted,
                     "the upload to " + url.text + " was stopped after " + std::to_string(sent) + " bytes", 0,
                     "interrupted");
  };

  // Preflight: reachable, certificate good, token accepted, base held.
  httplib::Result bases =
      run_cancellable(*cli, rq.cancelled, stop, [&] { return cli->Get(url.prefix + "/v1/bases", headers); });
  if (stop) throw interrupted(0);
  if (!bases) throw transport_error(bases.error(), url, *cli, 0);
  if (bases->status != 200) throw answer_error(*bases, url);
  const json held = json::parse(bases->body, nullptr, false);

  std::string head;
  try {
    head = source.head(VMSYNTH_OVERLAY_HEADER_BYTES);
  } catch (const PushError& e) {
    if (e.code() == ErrorCode::kInterrupted) throw interrupted(0);
    throw;
  }
  {
    char* hj = nullptr;
    const int rc = vmsynth_overlay_header(head.data(), head.size(), &hj);
    const json header = json::parse(hj != nullptr ? hj : "{}", nullptr, false);
    vmsynth_free(hj);
    if (rc != VMSYNTH_OK) {
      std::string code = vmsynth_status_name(rc);
      std::replace(code.begin(), code.end(), '-', '_');
      const std::string why = header.is_object() && header.contains("error") && header["error"].is_object()
                                  ? header["error"].value("message", "bad overlay header")
                                  : "bad overlay header";
      const ErrorCode ec =
          rc >= VMSYNTH_E_USAGE && rc <= VMSYNTH_E_CANCELLED ? static_cast<ErrorCode>(rc) : ErrorCode::kIo;
      throw PushError(ec, "overlay '" + source.name() + "': " + why + "; not sent", 0, code);
    }
    const std::string base_id = header.value("base_id", "");
    if (held.is_array()) {
      const bool found = std::any_of(held.begin(), held.end(),
                                     [&](const json& b) { return b.is_object() && b.value("id", "") == base_id; });
      if (!found) {
        throw PushError(ErrorCode::kWrongBase,
                        "this overlay was made for base VM " + base_id + ", which the cloudlet at " + url.text +
                            " does not hold (it holds " + std::to_string(held.size()) + "; GET /v1/bases lists them)",
                        0, "wrong_base");
      }
    }
  }

  if (!rq.key_hex.empty()) headers.emplace("X-Vmsynth-Key", rq.key_hex);
  if (!rq.passphrase.empty()) headers.emplace("X-Vmsynth-Passphrase", rq.passphrase);
  const std::string path =
      url.prefix + "/v1/vms?launch=" + (rq.launch ? "true" : "false") + "&disk_format=" + rq.disk_format;
  constexpr auto kType = "application/octet-stream";
  std::atomic<uint64_t> sent{0};
  std::optional<PushError> source_failure;  // a read error inside the provider
  std::vector<char> buf(kPushChunkBytes);
  auto report = [&](uint64_t total, bool last) {
    if (rq.progress) rq.progress(sent, total, last);
  };
  auto guarded = [&](auto&& step) {
    if (stop) return false;
    try {
      return step();
    } catch (const PushError& e) {
      source_failure = e;
      return false;
    }
  };

  httplib::Result posted = run_cancellable(*cli, rq.cancelled, stop, [&] {
    if (source.sized()) {
      const uint64_t total = source.size();
      return cli->Post(
          path, headers, total,
          [&](size_t offset, size_t length, httplib::DataSink& sink) {
            return guarded([&] {
              const size_t n = source.read_at(buf.data(), std::min(length, buf.size()), offset);
              if (n == 0) {
                throw PushError(ErrorCode::kIo,
                                "overlay '" + source.name() + "' shrank while it was sent (" + std::to_string(offset) +
                                    " of " + std::to_string(total) + " bytes)",
                                0, "io");
              }
              if (!sink.write(buf.data(), n)) return true;  // httplib reports the write failure
              sent += n;
              report(total, sent == total);
              return true;
            });
          },
          kType);
    }
    return cli->Post(
        path, headers,
        [&](size_t, httplib::DataSink& sink) {
          return guarded([&] {
            const size_t n = source.read_next(buf.data(), buf.size());
            if (n == 0) {
              sink.done();
              report(0, true);
              return true;
            }
            if (!sink.write(buf.data(), n)) return true;
            sent += n;
            report(0, false);
            return true;
          });
        },
        kType);
  });
  if (stop) throw interrupted(sent);
  if (source_failure) {
    if (source_failure->code() == ErrorCode::kInterrupted) throw interrupted(sent);
    throw *source_failure;
  }
  if (!posted) {
    if (posted.error() == httplib::Error::Write) {
      if (std::optional<httplib::Response> early = tap.answer(5000)) throw answer_error(*early, url);
    }
    throw transport_error(posted.error(), url, *cli, sent);
  }
  if (posted->status != 201 && posted->status != 200) throw answer_error(*posted, url);
  json doc = json::parse(posted->body, nullptr, false);
  if (!doc.is_object()) {
    throw PushError(
        ErrorCode::kIo,
        url.text + " answered HTTP " + std::to_string(posted->status) + " with something other than a JSON object",
        posted->status, "http");
  }
  return doc;
}

}  // namespace vmsynth::cloudlet
