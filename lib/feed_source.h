// FeedSource: the byte source of a synthesis whose overlay is pushed in by the
// caller (vmsynth_synth_feed) rather than read from a file or socket.
//
// A bounded ring between one producer (the caller's thread, push()) and one
// consumer (the engine's reader, read_some()): push copies bytes in and blocks
// while the ring is full, so memory stays at `capacity` however far the
// caller is ahead; the engine's reads block while it is empty. close() marks
// the end of the overlay; abort() abandons the job; stop_consuming() tells a blocked producer that the
// engine has ended (its pushes then return false at once).
//
// Cancellation: both waits end when the job's CancelToken is requested; the
// read then throws kInterrupted, push returns false. A token may be requested
// from a signal handler, which cannot notify a condition variable, so the
// waits also wake every kCancelPoll to look at it.
//
// Thread safety: one producer thread and one consumer thread at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

#include "engine/cancel.h"
#include "io/byte_source.h"

namespace vmsynth::lib {

class FeedSource : public io::ByteSource {
 public:
  static constexpr size_t kDefaultCapacity = 8u << 20;
  static constexpr std::chrono::milliseconds kCancelPoll{20};

  FeedSource(const CancelToken& cancel, size_t capacity = kDefaultCapacity);

  // Copies data in, waiting for room as needed. false: nothing more will be
  // read (the engine ended or the job was cancelled); the rest was dropped.
  bool push(const std::byte* data, size_t len);
  // End of the overlay: reads return 0 once the ring is empty.
  void close();
  // Called by the consumer when it will read no more: wakes the producer.
  void stop_consuming();
  // The job is being abandoned (its handle freed unfinished): every later
  // read, and one waiting now, throws kInterrupted, so the engine fails and
  // removes its staging even if the whole overlay had arrived.
  void abort();

  std::string describe() const override { return "the fed overlay"; }

 protected:
  size_t read_raw(std::span<std::byte> buf) override;

 private:
  const CancelToken& cancel_;
  std::vector<std::byte> ring_;
  size_t head_ = 0;  // next byte to read
  size_t size_ = 0;  // bytes held
  bool closed_ = false;
  bool consumer_gone_ = false;
  bool aborted_ = false;
  std::mutex mu_;
  std::condition_variable readable_, writable_;
};

// Passes reads through and notes when the first overlay byte arrived: the
// start of the wait a launch is measured from (the result's
// seconds.since_first_byte). Thread safety: as the wrapped source.
class FirstByteClock : public io::ByteSource {
 public:
  using Clock = std::chrono::steady_clock;
  explicit FirstByteClock(io::ByteSource& inner) : inner_(inner) {}
  std::string describe() const override { return inner_.describe(); }
  // Seconds from the first byte to now; 0 if none arrived.
  double seconds_since_first_byte() const;

 protected:
  size_t read_raw(std::span<std::byte> buf) override;

 private:
  io::ByteSource& inner_;
  Clock::time_point first_{};
  bool seen_ = false;
};

}  // namespace vmsynth::lib
