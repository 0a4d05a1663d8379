#include "vm/qmp_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "common/error.h"

namespace vmsynth::vm {

namespace {

using Clock = std::chrono::steady_clock;

Error qmp_error(std::string_view what, const std::string& path) {
  Error e(ErrorCode::kIo, std::string(what));
  e.with("QMP socket " + path);
  return e;
}

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

QmpClient QmpClient::connect(const std::string& path, Ms timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    throw Error(ErrorCode::kUsage, "QMP socket path is longer than " +
                                       std::to_string(sizeof addr.sun_path - 1) +
                                       " bytes (a unix-socket limit): '" + path +
                                       "'; use a shorter VM directory path");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  const auto deadline = Clock::now() + timeout;
  QmpClient c;
  c.path_ = path;
  while (true) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw io_error("cannot create a socket for", path, errno);
    io::File sock(fd, path);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
      c.sock_ = std::move(sock);
      break;
    }
    int err = errno;
    if ((err != ENOENT && err != ECONNREFUSED && err != EAGAIN && err != EINTR) ||
        Clock::now() >= deadline) {
      Error e(ErrorCode::kUsage, std::string("no VM is listening on its QMP socket (") +
                                     std::strerror(err) + "): is the VM running?");
      e.with("QMP socket " + path);
      throw e;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  Json hello = c.read_message(deadline, "the QMP greeting");
  if (!hello.contains("QMP")) throw qmp_error("unexpected QMP greeting: " + hello.dump(), path);
  c.greeting_ = hello["QMP"];
  c.execute("qmp_capabilities", nullptr,
            std::chrono::duration_cast<Ms>(deadline - Clock::now()) + Ms(1000));
  return c;
}

void QmpClient::send(const Json& msg, std::string_view command, int fd) {
  if (!sock_.valid()) throw qmp_error("QMP connection is closed", path_);
  std::string line = msg.dump() + "\n";
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n;
    if (fd >= 0 && off == 0) {
      // The descriptor rides on the command's first bytes.
      iovec iov{line.data(), line.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
      n = ::sendmsg(sock_.fd(), &mh, MSG_NOSIGNAL);
    } else {
      n = ::send(sock_.fd(), line.data() + off, line.size() - off, MSG_NOSIGNAL);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      Error e = io_error("cannot send QMP command '" + std::string(command) + "'", "", errno);
      e.with("QMP socket " + path_);
      throw e;
    }
    off += static_cast<size_t>(n);
  }
}

QmpClient::Json QmpClient::read_message(Clock::time_point deadline, std::string_view waiting_for) {
  while (true) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (line.empty()) continue;
      Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) {
        throw qmp_error("QEMU sent a malformed QMP message while waiting for " +
                            std::string(waiting_for) + ": " + line.substr(0, 200),
                        path_);
      }
      return j;
    }
    pollfd pfd{sock_.fd(), POLLIN, 0};
    int rc = ::poll(&pfd, 1, remaining_ms(deadline));
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw io_error("poll on QMP socket", path_, errno);
    }
    if (rc == 0) {
      throw qmp_error("timed out waiting for " + std::string(waiting_for) + " from QEMU", path_);
    }
    char buf[16384];
    ssize_t n = ::recv(sock_.fd(), buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      Error e = io_error("QMP read failed while waiting for " + std::string(waiting_for), "", errno);
      e.with("QMP socket " + path_);
      throw e;
    }
    if (n == 0) {
      sock_.close();
      throw qmp_error("QEMU closed the QMP connection while we waited for " +
                          std::string(waiting_for) + " (did QEMU exit?)",
                      path_);
    }
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

QmpClient::Json QmpClient::execute(std::string_view command, const Json& args, Ms timeout) {
  return exchange(command, args, -1, timeout);
}

QmpClient::Json QmpClient::execute_with_fd(std::string_view command, const Json& args, int fd, Ms timeout) {
  if (fd < 0) throw Error(ErrorCode::kUsage, "internal: execute_with_fd without a descriptor");
  return exchange(command, args, fd, timeout);
}

QmpClient::Json QmpClient::exchange(std::string_view command, const Json& args, int fd, Ms timeout) {
  const auto deadline = Clock::now() + timeout;
  const uint64_t id = next_id_++;
  Json msg = {{"execute", command}, {"id", id}};
  if (!args.is_null()) msg["arguments"] = args;
  send(msg, command, fd);
  const std::string waiting = "the reply to '" + std::string(command) + "'";
  while (true) {
    Json j = read_message(deadline, waiting);
    if (j.contains("event")) {
      events_.push_back(std::move(j));
      continue;
    }
    if (!j.contains("id") || j["id"] != id) continue;  // a stale reply to an abandoned command
    if (j.contains("error")) {
      const Json& e = j["error"];
      std::string desc = e.value("desc", std::string("unknown error"));
      std::string cls = e.value("class", std::string("Error"));
      throw qmp_error("QEMU refused '" + std::string(command) + "': " + desc + " (" + cls + ")",
                      path_);
    }
    return j.contains("return") ? j["return"] : Json::object();
  }
}

void QmpClient::quit(Ms timeout) {
  try {
    execute("quit", nullptr, timeout);
  } catch (const Error&) {
    // QEMU may close the socket before (or instead of) replying; the caller
    // checks that the process is gone.
  }
  sock_.close();
}

}  // namespace vmsynth::vm
