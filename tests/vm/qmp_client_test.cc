// QmpClient against a scripted fake QMP server on a unix socket.
#include "vm/qmp_client.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "common/error.h"

namespace vmsynth::vm {
namespace {

// A one-connection QMP server: sends the greeting, then for each line it
// receives calls `reply(line)` and writes back whatever that returns.
class FakeQmp {
 public:
  explicit FakeQmp(std::function<std::string(const std::string&)> reply) : reply_(std::move(reply)) {
    char tmpl[] = "/tmp/vmsynth-qmp-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/qmp.sock";
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path_.c_str());
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 1), 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeQmp() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  void serve() {
    int c = ::accept(listen_fd_, nullptr, nullptr);
    if (c < 0) return;
    std::string hello = R"({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}})" "\r\n";
    (void)!::write(c, hello.data(), hello.size());
    std::string buf;
    char tmp[4096];
    while (true) {
      ssize_t n = ::read(c, tmp, sizeof tmp);
      if (n <= 0) break;
      buf.append(tmp, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        std::string out = reply_(line);
        if (out == "CLOSE") {
          ::close(c);
          return;
        }
        (void)!::write(c, out.data(), out.size());
      }
    }
    ::close(c);
  }

  std::function<std::string(const std::string&)> reply_;
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

std::string id_of(const std::string& line) {
  auto j = nlohmann::json::parse(line);
  return j["id"].dump();
}

TEST(QmpClient, NegotiatesAndSkipsEvents) {
  FakeQmp server([](const std::string& line) -> std::string {
    auto j = nlohmann::json::parse(line);
    std::string id = id_of(line);
    if (j["execute"] == "query-status") {
      // An event arrives before the reply; it must not be taken for the reply.
      return R"({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}})" "\r\n"
             R"({"return": {"status": "paused", "running": false}, "id": )" + id + "}\r\n";
    }
    return R"({"return": {}, "id": )" + id + "}\r\n";
  });
  QmpClient q = QmpClient::connect(server.path(), std::chrono::milliseconds(2000));
  EXPECT_EQ(q.greeting()["version"]["qemu"]["major"], 7);
  auto r = q.execute("query-status");
  EXPECT_EQ(r["status"], "paused");
  ASSERT_EQ(q.events().size(), 1u);
  EXPECT_EQ(q.events()[0]["event"], "STOP");
}

TEST(QmpClient, ErrorReplyNamesTheCommand) {
  FakeQmp server([](const std::string& line) -> std::string {
    auto j = nlohmann::json::parse(line);
    if (j["execute"] == "migrate") {
      return R"({"error": {"class": "GenericError", "desc": "no way"}, "id": )" + id_of(line) + "}\n";
    }
    return R"({"return": {}, "id": )" + id_of(line) + "}\n";
  });
  QmpClient q = QmpClient::connect(server.path(), std::chrono::milliseconds(2000));
  try {
    q.execute("migrate", {{"uri", "exec:cat"}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("'migrate'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no way"), std::string::npos) << e.what();
  }
}

TEST(QmpClient, TimesOutAndReportsClose) {
  FakeQmp server([](const std::string& line) -> std::string {
    auto j = nlohmann::json::parse(line);
    if (j["execute"] == "qmp_capabilities") return R"({"return": {}, "id": )" + id_of(line) + "}\n";
    if (j["execute"] == "slow") return "";  // never answers
    return "CLOSE";
  });
  QmpClient q = QmpClient::connect(server.path(), std::chrono::milliseconds(2000));
  EXPECT_THROW(q.execute("slow", nullptr, std::chrono::milliseconds(100)), Error);
  try {
    q.execute("anything", nullptr, std::chrono::milliseconds(2000));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
  }
}

TEST(QmpClient, NoServerIsAUsageError) {
  try {
    QmpClient::connect("/tmp/vmsynth-no-such-dir/qmp.sock", std::chrono::milliseconds(50));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
  }
}

}  // namespace
}  // namespace vmsynth::vm
