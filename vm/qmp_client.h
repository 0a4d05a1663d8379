// A small synchronous QMP (QEMU Machine Protocol) client over a unix socket.
//
// QmpClient::connect() waits for the socket to accept (QEMU may still be
// starting), reads the greeting and negotiates capabilities
// (`qmp_capabilities`). execute() sends one command with optional JSON
// arguments and returns its "return" value; asynchronous events that arrive
// in between (STOP, RESUME, MIGRATION, ...) are kept in events() and never
// mistaken for replies. Every wait has a deadline. Failures throw
// vmsynth::Error naming the command and the socket: kIo for a QEMU-side error
// reply, a closed connection or a timeout; kUsage when there is no VM at the
// socket (nothing listening).
//
// Ownership: a QmpClient owns its socket (closed on destruction); move-only.
// Thread safety: one thread at a time per client. QEMU serves several QMP
// clients only if configured so; vmsynth opens one connection per command.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/file.h"

namespace vmsynth::vm {

class QmpClient {
 public:
  using Json = nlohmann::json;
  using Ms = std::chrono::milliseconds;

  // Connects to the QMP socket at `path`, retrying while it does not exist or
  // refuses connections, until `timeout` (default 10 s).
  static QmpClient connect(const std::string& path, Ms timeout = Ms(10000));

  QmpClient() = default;
  QmpClient(QmpClient&&) noexcept = default;
  QmpClient& operator=(QmpClient&&) noexcept = default;
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs `command` with `args` (an object, or null for none) and returns the
  // reply's "return" member. Throws kIo "QEMU refused '<command>': <desc>" on
  // an error reply.
  Json execute(std::string_view command, const Json& args = nullptr, Ms timeout = Ms(10000));
  // Like execute(), passing `fd` along with the command (SCM_RIGHTS), for
  // `getfd`: QEMU keeps a duplicate under the name given in args, e.g. for
  // `migrate` to "fd:NAME" without a shell (a -sandbox spawn=deny QEMU
  // cannot run `exec:`). The caller keeps its own `fd`.
  Json execute_with_fd(std::string_view command, const Json& args, int fd, Ms timeout = Ms(10000));

  // Sends `quit` and tolerates the connection closing before the reply.
  void quit(Ms timeout = Ms(5000));

  // The greeting's "QMP" object (version, capabilities).
  const Json& greeting() const { return greeting_; }
  // Asynchronous events received so far, oldest first.
  const std::vector<Json>& events() const { return events_; }
  const std::string& path() const { return path_; }

 private:
  Json read_message(std::chrono::steady_clock::time_point deadline, std::string_view waiting_for);
  void send(const Json& msg, std::string_view command, int fd = -1);
  Json exchange(std::string_view command, const Json& args, int fd, Ms timeout);

  io::File sock_;
  std::string path_;
  std::string buffer_;  // bytes received but not yet parsed
  Json greeting_;
  std::vector<Json> events_;
  uint64_t next_id_ = 1;
};

}  // namespace vmsynth::vm
