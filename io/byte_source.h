// ByteSource: a stream of bytes read front to back, never seeking, so that an
// overlay can come from a file, a pipe, stdin or a TCP connection alike and be
// processed while it is still arriving.
//
// open_source(spec) understands:
//   "-"                   standard input (borrowed: not closed)
//   "tcp://HOST:PORT"     connects to HOST:PORT and reads the connection
//   "tcp-listen://HOST:PORT"  binds HOST:PORT, accepts one connection, stops
//                         listening and reads that connection; prints nothing
//   anything else         a path: regular file, FIFO, character device
// HOST may be a name, an IPv4 address or a bracketed IPv6 address ("[::1]").
// memory_source() serves a byte vector (tests, small inputs); TcpListener
// splits tcp-listen into bind and accept so a caller can learn the port.
//
// There is no internal buffer: each read_some() is one read(2), so callers
// should read big chunks (64 KiB and up). Reads block until data arrives;
// there is no timeout.
//
// Ownership: a source owns its fd (except stdin) and closes it on destruction.
// Thread safety: none; one reader at a time. Distinct sources are independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vmsynth::io {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Reads at least one and up to buf.size() bytes, blocking until some are
  // available. Returns 0 only at end of stream (or for an empty buf). Throws
  // kIo naming the source and the stream offset.
  size_t read_some(std::span<std::byte> buf);

  // Reads until buf is full or the stream ends; returns the bytes read. So
  // 0 means a clean end before the first byte, 0 < n < buf.size() an end in the
  // middle, buf.size() a full read (the stream may or may not end right after).
  size_t read_full(std::span<std::byte> buf);

  // What is being read, for messages: the path, "stdin", "tcp://host:port",
  // "connection from 10.0.0.2:4711 on tcp-listen://0.0.0.0:9000", ...
  virtual std::string describe() const = 0;

  // Bytes returned so far by read_some/read_full (the current stream offset).
  uint64_t bytes_read() const { return bytes_read_; }

 protected:
  ByteSource() = default;
  // One read of up to buf.size() bytes (buf is never empty); 0 = end of stream.
  virtual size_t read_raw(std::span<std::byte> buf) = 0;

 private:
  uint64_t bytes_read_ = 0;
};

// How a wait for input (a pipe, a socket, a connection to accept) can be
// ended from outside: the wait polls wake_fd (and group_wake_fd) beside the
// input, and when either is readable (or the wait is interrupted by a signal) and requested()
// says so, the read throws Error(kInterrupted) naming the source. A stop thus
// ends a wait for a sender that has stalled, not only the work between reads,
// from any thread. Empty (the default): waits end only with input.
struct StopCheck {
  int wake_fd = -1;                 // readable once a stop is requested; -1: none
  int group_wake_fd = -1;           // a second one (a job's group's); -1: none
  std::function<bool()> requested;  // true once a stop is requested
  explicit operator bool() const { return static_cast<bool>(requested); }
};

// Opens a source as described above. Throws kIo (naming the spec) when it
// cannot be opened, connected or bound; kUsage for a malformed tcp spec.
// `stop`: see StopCheck (files never wait, so they never ask it).
std::unique_ptr<ByteSource> open_source(const std::string& spec, StopCheck stop = {});

// The size of the regular file a source spec names (as open_source reads
// it), or nothing for stdin, a TCP spec, a pipe or a path that cannot be
// stat'ed. For progress totals, and to know that the overlay is a file.
std::optional<uint64_t> regular_file_size(const std::string& spec);

// A source serving `data`, at most `max_chunk` bytes per read_some (to
// exercise callers' handling of short reads). max_chunk: bytes, default
// unlimited, range 1..SIZE_MAX.
std::unique_ptr<ByteSource> memory_source(std::vector<std::byte> data, size_t max_chunk = SIZE_MAX,
                                          std::string name = "memory");

// A listening TCP socket that accepts one connection.
// Ownership: owns the listening socket; closed by accept_source() or the
// destructor. Thread safety: none.
class TcpListener {
 public:
  // Binds and listens. port 0 picks a free port (see port()).
  TcpListener(const std::string& host, uint16_t port);
  ~TcpListener();
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;

  // The bound port (useful after binding port 0).
  uint16_t port() const { return port_; }

  // Blocks until one peer connects, closes the listening socket and returns a
  // source reading that connection. REQUIRES: called at most once.
  std::unique_ptr<ByteSource> accept_source(StopCheck stop = {});

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::string name_;  // "tcp-listen://host:port"
};

}  // namespace vmsynth::io
