#include "engine/clone_tracker.h"

#include <algorithm>

namespace vmsynth {

namespace {
constexpr uint64_t kBlock = 4096;
}

CloneTracker::CloneTracker(uint64_t image_size)
    : size_(image_size),
      state_((image_size + kRegionBytes - 1) / kRegionBytes, State::kPending),
      written_(((image_size + kBlock - 1) / kBlock + 63) / 64, 0) {}

void CloneTracker::before_write(uint64_t offset, uint64_t len) {
  if (len == 0) return;
  const uint64_t end = std::min(offset + len, size_);
  std::unique_lock lock(mu_);
  for (uint64_t at = offset; at < end;) {
    const uint64_t r = at / kRegionBytes;
    const uint64_t region_end = std::min(end, (r + 1) * kRegionBytes);
    cv_.wait(lock, [&] { return state_[r] != State::kCopying || error_ || cancelled_; });
    if (error_) std::rethrow_exception(error_);
    if (state_[r] == State::kPending) {
      for (uint64_t b = at / kBlock; b * kBlock < region_end; ++b) written_[b / 64] |= uint64_t{1} << (b % 64);
    }
    at = region_end;
  }
}

bool CloneTracker::claim(uint64_t begin, uint64_t end, std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  std::lock_guard lock(mu_);
  if (cancelled_ || error_) return false;
  for (uint64_t r = begin / kRegionBytes; r * kRegionBytes < end; ++r) state_[r] = State::kCopying;
  // Maximal runs of blocks no writer has claimed.
  uint64_t run = begin;
  for (uint64_t b = begin / kBlock; b * kBlock < end; ++b) {
    if ((written_[b / 64] >> (b % 64) & 1) == 0) continue;
    ++skipped_;
    if (b * kBlock > run) ranges.emplace_back(run, b * kBlock);
    run = std::min(end, (b + 1) * kBlock);
  }
  if (run < end) ranges.emplace_back(run, end);
  return true;
}

void CloneTracker::done(uint64_t begin, uint64_t end) {
  {
    std::lock_guard lock(mu_);
    for (uint64_t r = begin / kRegionBytes; r * kRegionBytes < end; ++r) state_[r] = State::kDone;
  }
  cv_.notify_all();
}

io::CloneHooks CloneTracker::hooks() {
  io::CloneHooks h;
  h.region_bytes = kRegionBytes;
  h.claim = [this](uint64_t b, uint64_t e, std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
    return claim(b, e, ranges);
  };
  h.done = [this](uint64_t b, uint64_t e) { done(b, e); };
  return h;
}

void CloneTracker::fail(std::exception_ptr error) {
  {
    std::lock_guard lock(mu_);
    if (!error_) error_ = std::move(error);
  }
  cv_.notify_all();
}

void CloneTracker::cancel() {
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
  }
  cv_.notify_all();
}

uint64_t CloneTracker::blocks_skipped() const {
  std::lock_guard lock(mu_);
  return skipped_;
}

}  // namespace vmsynth
