#include "lib/feed_source.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace vmsynth::lib {

FeedSource::FeedSource(const CancelToken& cancel, size_t capacity) : cancel_(cancel), ring_(capacity) {}

bool FeedSource::push(const std::byte* data, size_t len) {
  std::unique_lock lock(mu_);
  while (len > 0) {
    while (size_ == ring_.size() && !consumer_gone_ && !aborted_ && !cancel_.requested()) {
      writable_.wait_for(lock, kCancelPoll);
    }
    if (consumer_gone_ || aborted_ || cancel_.requested()) return false;
    // Copy into the free space, which may wrap around the end of the ring.
    const size_t tail = (head_ + size_) % ring_.size();
    const size_t room = std::min(ring_.size() - size_, ring_.size() - tail);
    const size_t n = std::min(room, len);
    std::memcpy(ring_.data() + tail, data, n);
    size_ += n;
    data += n;
    len -= n;
    readable_.notify_one();
  }
  return true;
}

void FeedSource::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  readable_.notify_one();
}

void FeedSource::abort() {
  std::lock_guard lock(mu_);
  aborted_ = true;
  readable_.notify_one();
  writable_.notify_one();
}

void FeedSource::stop_consuming() {
  std::lock_guard lock(mu_);
  consumer_gone_ = true;
  writable_.notify_one();
}

size_t FeedSource::read_raw(std::span<std::byte> buf) {
  std::unique_lock lock(mu_);
  while (size_ == 0 && !closed_ && !aborted_ && !cancel_.requested()) readable_.wait_for(lock, kCancelPoll);
  if (aborted_) {
    throw Error(ErrorCode::kInterrupted,
                "the synthesis was abandoned before it finished; nothing was left at the output");
  }
  throw_if_cancelled(&cancel_);
  if (size_ == 0) return 0;  // closed and drained: the end of the overlay
  const size_t n = std::min({buf.size(), size_, ring_.size() - head_});
  std::memcpy(buf.data(), ring_.data() + head_, n);
  head_ = (head_ + n) % ring_.size();
  size_ -= n;
  writable_.notify_one();
  return n;
}

size_t FirstByteClock::read_raw(std::span<std::byte> buf) {
  const size_t n = inner_.read_some(buf);
  if (n > 0 && !seen_) {
    first_ = Clock::now();
    seen_ = true;
  }
  return n;
}

double FirstByteClock::seconds_since_first_byte() const {
  return seen_ ? std::chrono::duration<double>(Clock::now() - first_).count() : 0.0;
}

}  // namespace vmsynth::lib
