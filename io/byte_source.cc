#include "io/byte_source.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>

#include "common/error.h"
#include "io/file.h"

namespace vmsynth::io {

size_t ByteSource::read_some(std::span<std::byte> buf) {
  if (buf.empty()) return 0;
  try {
    size_t n = read_raw(buf);
    bytes_read_ += n;
    return n;
  } catch (Error& e) {
    e.with("at byte " + std::to_string(bytes_read_) + " of the stream");
    throw;
  }
}

size_t ByteSource::read_full(std::span<std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    size_t n = read_some(buf.subspan(done));
    if (n == 0) break;
    done += n;
  }
  return done;
}

namespace {

// Waits until `fd` is readable (or has hung up), or a stop is requested
// (stop.wake_fd or stop.group_wake_fd readable; or a signal interrupted the poll, which poll() never
// restarts whatever SA_RESTART says) and stop.requested() confirms it.
void wait_readable(int fd, const StopCheck& stop, const std::string& what) {
  for (;;) {
    // A negative fd in the set is ignored by poll(2).
    pollfd p[3] = {{fd, POLLIN, 0}, {stop.wake_fd, POLLIN, 0}, {stop.group_wake_fd, POLLIN, 0}};
    const int r = ::poll(p, 3, -1);
    if (r < 0 && errno != EINTR) throw io_error("cannot wait for", what, errno);
    if ((r < 0 || p[1].revents != 0 || p[2].revents != 0) && stop && stop.requested()) {
      throw Error(ErrorCode::kInterrupted, "stopped while waiting for input from " + what);
    }
    if (r > 0 && p[0].revents != 0) return;
  }
}

// Reads an fd: file, FIFO, socket or stdin.
class FdSource final : public ByteSource {
 public:
  // Takes ownership of `owned` if it is valid; otherwise reads `borrowed_fd`.
  FdSource(File owned, int borrowed_fd, std::string description, StopCheck stop = {})
      : owned_(std::move(owned)),
        fd_(owned_.valid() ? owned_.fd() : borrowed_fd),
        description_(std::move(description)),
        stop_(std::move(stop)) {
    struct stat st;
    may_wait_ = ::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode);
  }

  std::string describe() const override { return description_; }

 protected:
  size_t read_raw(std::span<std::byte> buf) override {
    for (;;) {
      // A pipe or socket may block: wait where a signal can end the wait.
      if (may_wait_ && stop_) wait_readable(fd_, stop_, description_);
      ssize_t n = ::read(fd_, buf.data(), buf.size());
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) {
        if (stop_ && stop_.requested()) throw Error(ErrorCode::kInterrupted, "stopped while reading " + description_);
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // somebody made it non-blocking
        wait_readable(fd_, stop_, description_);
        continue;
      }
      throw io_error("cannot read from", description_, errno);
    }
  }

 private:
  File owned_;
  int fd_;
  std::string description_;
  StopCheck stop_;
  bool may_wait_ = true;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(std::vector<std::byte> data, size_t max_chunk, std::string name)
      : data_(std::move(data)),
        max_chunk_(std::max<size_t>(max_chunk, 1)),
        name_(std::move(name)) {}

  std::string describe() const override { return name_; }

 protected:
  size_t read_raw(std::span<std::byte> buf) override {
    size_t n = std::min({buf.size(), data_.size() - pos_, max_chunk_});
    std::copy_n(data_.data() + pos_, n, buf.data());
    pos_ += n;
    return n;
  }

 private:
  std::vector<std::byte> data_;
  size_t pos_ = 0;
  size_t max_chunk_;
  std::string name_;
};

struct HostPort {
  std::string host;  // without brackets; empty = any address (listen only)
  std::string port;
};

HostPort parse_host_port(std::string_view spec, std::string_view rest) {
  HostPort hp;
  size_t colon;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      colon = std::string_view::npos;
    } else {
      hp.host = rest.substr(1, close - 1);
      colon = close + 1;
    }
  } else {
    colon = rest.rfind(':');
    if (colon != std::string_view::npos) hp.host = rest.substr(0, colon);
  }
  bool ok =
      colon != std::string_view::npos && colon + 1 < rest.size() && rest.size() - colon - 1 <= 5;
  if (ok) {
    hp.port = rest.substr(colon + 1);
    ok = std::all_of(hp.port.begin(), hp.port.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
         std::stoul(hp.port) <= 65535;
  }
  if (!ok) {
    throw Error(ErrorCode::kUsage, "malformed address '" + std::string(spec) +
                                       "'; expected tcp://HOST:PORT or tcp-listen://HOST:PORT");
  }
  return hp;
}

using AddrList = std::unique_ptr<addrinfo, void (*)(addrinfo*)>;

AddrList resolve(const HostPort& hp, bool passive, const std::string& spec) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  int r = ::getaddrinfo(hp.host.empty() ? nullptr : hp.host.c_str(), hp.port.c_str(), &hints, &res);
  if (r != 0) {
    if (r == EAI_SYSTEM) throw io_error("cannot resolve", spec, errno);
    throw Error(ErrorCode::kIo, "cannot resolve '" + spec + "': " + ::gai_strerror(r));
  }
  return AddrList(res, ::freeaddrinfo);
}

std::string numeric_address(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (::getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";
  return h + ":" + serv;
}

std::unique_ptr<ByteSource> connect_tcp(const std::string& spec, std::string_view rest, StopCheck stop) {
  HostPort hp = parse_host_port(spec, rest);
  AddrList addrs = resolve(hp, false, spec);
  int last_err = ECONNREFUSED;
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    File sock(fd, spec);
    int r;
    do {
      r = ::connect(fd, a->ai_addr, a->ai_addrlen);
    } while (r != 0 && errno == EINTR);
    if (r == 0) return std::make_unique<FdSource>(std::move(sock), -1, spec, std::move(stop));
    last_err = errno;
  }
  throw io_error("cannot connect to", spec, last_err);
}

}  // namespace

TcpListener::TcpListener(const std::string& host, uint16_t port) {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  HostPort hp{host, std::to_string(port)};
  std::string spec = "tcp-listen://" + h + ":" + hp.port;
  AddrList addrs = resolve(hp, true, spec);
  int last_err = EADDRNOTAVAIL;
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    File sock(fd, spec);  // closes the socket on every failure path
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 1) != 0) {
      last_err = errno;
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      throw io_error("cannot query the address of", spec, errno);
    }
    port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    name_ = "tcp-listen://" + h + ":" + std::to_string(port_);
    fd_ = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);  // our own descriptor; `sock` closes the original
    if (fd_ < 0) throw io_error("cannot keep the socket of", spec, errno);
    return;
  }
  throw io_error("cannot listen on", spec, last_err);
}

TcpListener::~TcpListener() {
  if (fd_ >= 0) ::close(fd_);
}

std::unique_ptr<ByteSource> TcpListener::accept_source(StopCheck stop) {
  if (fd_ < 0) throw Error(ErrorCode::kUsage, "accept on a closed listener " + name_);
  sockaddr_storage peer{};
  socklen_t len;
  int fd;
  do {
    if (stop) wait_readable(fd_, stop, name_);
    len = sizeof peer;
    fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
  } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (fd < 0) throw io_error("cannot accept a connection on", name_, errno);
  ::close(std::exchange(fd_, -1));
  std::string desc = "connection from " + numeric_address(reinterpret_cast<sockaddr*>(&peer), len) +
                     " on " + name_;
  return std::make_unique<FdSource>(File(fd, desc), -1, desc, std::move(stop));
}

namespace {
constexpr std::string_view kTcp = "tcp://";
constexpr std::string_view kListen = "tcp-listen://";
}  // namespace

std::optional<uint64_t> regular_file_size(const std::string& spec) {
  const std::string_view s = spec;
  if (s == "-" || s.starts_with(kTcp) || s.starts_with(kListen)) return std::nullopt;
  struct stat st;
  if (::stat(spec.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

std::unique_ptr<ByteSource> open_source(const std::string& spec, StopCheck stop) {
  std::string_view s = spec;
  if (s == "-") return std::make_unique<FdSource>(File(), STDIN_FILENO, "stdin", std::move(stop));
  if (s.starts_with(kTcp)) return connect_tcp(spec, s.substr(kTcp.size()), std::move(stop));
  if (s.starts_with(kListen)) {
    HostPort hp = parse_host_port(spec, s.substr(kListen.size()));
    TcpListener listener(hp.host, static_cast<uint16_t>(std::stoul(hp.port)));
    return listener.accept_source(std::move(stop));
  }
  int fd = ::open(spec.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw io_error("cannot open", spec, errno);
  File f(fd, spec);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw io_error("cannot stat", spec, errno);
  if (S_ISDIR(st.st_mode)) throw io_error("cannot read", spec, EISDIR);
  return std::make_unique<FdSource>(std::move(f), -1, spec, std::move(stop));
}

std::unique_ptr<ByteSource> memory_source(std::vector<std::byte> data, size_t max_chunk,
                                          std::string name) {
  return std::make_unique<MemorySource>(std::move(data), max_chunk, std::move(name));
}

}  // namespace vmsynth::io
