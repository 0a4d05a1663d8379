#include "io/byte_source.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "common/error.h"
#include "io/file.h"
#include "tests/io/test_temp_dir.h"

namespace vmsynth::io {
namespace {

using testing::TestTempDir;

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = std::byte(rng() & 0xff);
  return v;
}

// Reads the whole source in `chunk`-byte reads.
std::vector<std::byte> drain(ByteSource& s, size_t chunk = 64 * 1024) {
  std::vector<std::byte> out;
  std::vector<std::byte> buf(chunk);
  for (;;) {
    size_t n = s.read_some(buf);
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(n));
  }
  return out;
}

void write_all_fd(int fd, std::span<const std::byte> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n <= 0) return;  // the test will notice the missing bytes
    done += static_cast<size_t>(n);
  }
}

TEST(ByteSourceTest, RegularFile) {
  TestTempDir tmp;
  std::vector<std::byte> data = random_bytes((1 << 20) + 17, 1);
  {
    File f = File::create(tmp / "in.vmo");
    f.write_all(data);
  }
  auto s = open_source(tmp / "in.vmo");
  EXPECT_EQ(s->describe(), tmp / "in.vmo");
  EXPECT_TRUE(drain(*s) == data);
  EXPECT_EQ(s->bytes_read(), data.size());
  std::byte b[4];
  EXPECT_EQ(s->read_some(b), 0u);  // stays at end
}

TEST(ByteSourceTest, MissingFileAndDirectoryAreIoErrors) {
  TestTempDir tmp;
  for (const std::string& spec : {tmp / "nope.vmo", tmp.path()}) {
    try {
      open_source(spec);
      FAIL() << spec << " opened";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kIo);
      EXPECT_NE(std::string(e.what()).find(spec), std::string::npos) << e.what();
    }
  }
}

TEST(ByteSourceTest, CleanEndVersusEndInTheMiddle) {
  std::vector<std::byte> data = random_bytes(10, 2);
  for (size_t max_chunk : {size_t{1}, size_t{3}, SIZE_MAX}) {
    SCOPED_TRACE(max_chunk);
    auto s = memory_source(data, max_chunk);
    std::vector<std::byte> rec(4);
    EXPECT_EQ(s->read_full(rec), 4u);  // full record
    EXPECT_TRUE(std::equal(rec.begin(), rec.end(), data.begin()));
    EXPECT_EQ(s->read_full(rec), 4u);
    EXPECT_EQ(s->read_full(rec), 2u);  // the stream ended inside a record
    EXPECT_TRUE(std::equal(rec.begin(), rec.begin() + 2, data.begin() + 8));
    EXPECT_EQ(s->read_full(rec), 0u);  // clean end before a record
    EXPECT_EQ(s->bytes_read(), 10u);
  }
  auto empty = memory_source({});
  std::vector<std::byte> rec(4);
  EXPECT_EQ(empty->read_full(rec), 0u);
  EXPECT_EQ(empty->describe(), "memory");
}

TEST(ByteSourceTest, ShortReadsAreRespected) {
  std::vector<std::byte> data = random_bytes(100, 3);
  auto s = memory_source(data, 7);
  std::vector<std::byte> buf(50);
  EXPECT_EQ(s->read_some(buf), 7u);
  EXPECT_EQ(s->read_some(std::span(buf).first(0)), 0u);  // empty buffer is not end of stream
  EXPECT_EQ(s->read_full(buf), 50u);
  EXPECT_EQ(s->bytes_read(), 57u);
}

// A writer that sends one piece at a time and waits until the reader has seen
// it: read_some must hand out data while the stream is still open. If it
// waited for the end instead, the writer's bounded wait would give up, close
// the pipe, and the comparison below would fail (no hang).
TEST(ByteSourceTest, FifoDeliversDataWhileStillArriving) {
  TestTempDir tmp;
  std::string fifo = tmp / "overlay.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  constexpr int kPieces = 8;
  std::vector<std::byte> data = random_bytes(kPieces * 3000, 4);

  std::mutex mu;
  std::condition_variable cv;
  uint64_t seen = 0;
  int pieces_acked = 0;
  std::thread writer([&] {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    for (int i = 0; i < kPieces; ++i) {
      write_all_fd(fd, std::span(data).subspan(i * 3000, 3000));
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, std::chrono::seconds(20),
                       [&] { return seen >= uint64_t(i + 1) * 3000; }))
        break;
      ++pieces_acked;
    }
    ::close(fd);
  });

  auto s = open_source(fifo);  // blocks until the writer opens
  std::vector<std::byte> got;
  std::vector<std::byte> buf(1 << 20);
  for (;;) {
    size_t n = s->read_some(buf);
    if (n == 0) break;
    got.insert(got.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(n));
    std::lock_guard lock(mu);
    seen = got.size();
    cv.notify_all();
  }
  writer.join();
  EXPECT_EQ(pieces_acked, kPieces);
  EXPECT_TRUE(got == data);
}

// A stop requested from another thread ends a wait for a sender that has
// stalled (its end of the FIFO open, nothing written), for reads and accepts;
// a wake-up that is not confirmed by requested() does not.
TEST(ByteSourceTest, StopRequestEndsAWaitForAStalledSender) {
  TestTempDir tmp;
  const std::string fifo = tmp / "in.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(wake, 0);
  std::atomic<bool> requested{false};
  StopCheck stop{wake, -1, [&] { return requested.load(); }};
  std::thread sender([&] {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    const char first[] = "abc";
    (void)!::write(fd, first, 3);
    // A wake-up without a stop request is ignored...
    const uint64_t one = 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)!::write(wake, &one, sizeof one);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    uint64_t n;
    (void)!::read(wake, &n, sizeof n);
    // ... a confirmed one ends the wait; the FIFO stays open, nothing more is written.
    requested = true;
    (void)!::write(wake, &one, sizeof one);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ::close(fd);
  });
  auto src = open_source(fifo, stop);
  std::vector<std::byte> buf(16);
  EXPECT_EQ(src->read_some(buf), 3u);
  try {
    src->read_some(buf);
    ADD_FAILURE() << "the read outlived the stop request";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted);
    EXPECT_NE(std::string(e.what()).find(fifo), std::string::npos) << e.what();
  }
  sender.join();
  // Waiting for a connection ends the same way (the stop is still requested).
  try {
    open_source("tcp-listen://127.0.0.1:0", stop);
    ADD_FAILURE() << "accept outlived the stop request";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted);
  }
  ::close(wake);
}

TEST(ByteSourceTest, StdinIsReadAndNotClosed) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  int saved = ::dup(STDIN_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(::dup2(p[0], STDIN_FILENO), STDIN_FILENO);
  ::close(p[0]);
  std::vector<std::byte> data = random_bytes(5000, 5);
  write_all_fd(p[1], data);
  ::close(p[1]);
  std::vector<std::byte> got;
  {
    auto s = open_source("-");
    EXPECT_EQ(s->describe(), "stdin");
    got = drain(*s, 1000);
  }
  bool stdin_still_open = ::fcntl(STDIN_FILENO, F_GETFD) >= 0;
  ::dup2(saved, STDIN_FILENO);
  ::close(saved);
  EXPECT_TRUE(got == data);
  EXPECT_TRUE(stdin_still_open);
}

// Sends `data` to 127.0.0.1:port, retrying the connect a bounded number of
// times while the listener is being set up.
void send_to_loopback(uint16_t port, const std::vector<std::byte>& data) {
  for (int attempt = 0; attempt < 500; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      write_all_fd(fd, data);
      ::close(fd);
      return;
    }
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

TEST(ByteSourceTest, TcpListenerAcceptsOneLoopbackConnection) {
  TcpListener listener("127.0.0.1", 0);
  ASSERT_NE(listener.port(), 0);
  std::vector<std::byte> data = random_bytes(3 << 20, 6);
  std::thread client([&] { send_to_loopback(listener.port(), data); });
  auto s = listener.accept_source();
  std::vector<std::byte> got = drain(*s);
  client.join();
  EXPECT_TRUE(got == data);
  EXPECT_NE(s->describe().find("connection from 127.0.0.1:"), std::string::npos) << s->describe();
}

TEST(ByteSourceTest, TcpListenSpecBindsAndAccepts) {
  uint16_t port;
  {
    TcpListener probe("127.0.0.1", 0);  // find a free port, then release it
    port = probe.port();
  }
  std::vector<std::byte> data = random_bytes(100000, 7);
  std::thread client([&] { send_to_loopback(port, data); });
  auto s = open_source("tcp-listen://127.0.0.1:" + std::to_string(port));
  std::vector<std::byte> got = drain(*s);
  client.join();
  EXPECT_TRUE(got == data);
}

TEST(ByteSourceTest, TcpConnectSpecReadsFromServer) {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(lfd, 1), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  uint16_t port = ntohs(a.sin_port);

  std::vector<std::byte> data = random_bytes(1 << 20, 8);
  std::thread server([&] {
    int c = ::accept(lfd, nullptr, nullptr);
    if (c < 0) return;
    write_all_fd(c, data);
    ::close(c);
  });
  std::string spec = "tcp://127.0.0.1:" + std::to_string(port);
  auto s = open_source(spec);
  EXPECT_EQ(s->describe(), spec);
  std::vector<std::byte> got = drain(*s);
  server.join();
  ::close(lfd);
  EXPECT_TRUE(got == data);
}

TEST(ByteSourceTest, RefusedConnectionIsIoError) {
  uint16_t port;
  {
    TcpListener probe("127.0.0.1", 0);
    port = probe.port();
  }
  try {
    open_source("tcp://127.0.0.1:" + std::to_string(port));
    FAIL() << "connected to a closed port";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
}

TEST(ByteSourceTest, MalformedTcpSpecsAreUsageErrors) {
  for (const char* spec : {"tcp://localhost", "tcp://localhost:", "tcp://h:99999", "tcp://h:12a",
                           "tcp://[::1", "tcp://[::1]9000", "tcp-listen://nohost"}) {
    try {
      open_source(spec);
      FAIL() << spec << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUsage) << spec << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace vmsynth::io
