// CloneTracker: lets the base clone of one output image and the writer of the
// overlay's blocks run at the same time.
//
// The parallel engine cannot afford to copy the whole base first (10 GiB take
// tens of seconds on ext4, which has no reflink) and only then write. Instead
// the clone copies the image region by region (io::CloneHooks) while the
// writer writes blocks anywhere:
//  - a block written in a region the clone has not reached yet is recorded,
//    and the clone later copies around it (so it is written once, not twice);
//  - a block in a region the clone is copying waits until that region is
//    done (at most one region, 16 MiB);
//  - a block in a region already copied is written at once.
// Writes and the clone never touch the same bytes at the same time, so the
// writer's asynchronous requests need no further ordering.
//
// Thread safety: before_write() on the writer thread, the hooks on the clone
// thread, fail()/cancel() on any; all under one mutex (one lock per write run
// and per region, which is cheap next to the I/O).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

#include "io/image_clone.h"

namespace vmsynth {

class CloneTracker {
 public:
  static constexpr uint64_t kRegionBytes = uint64_t{16} << 20;

  explicit CloneTracker(uint64_t image_size);

  // Writer: image bytes [offset, offset + len) are about to be written.
  // Rethrows the clone's failure, if it failed.
  void before_write(uint64_t offset, uint64_t len);

  // Hooks for io::clone_image on the clone thread (started is the caller's).
  io::CloneHooks hooks();

  // The clone failed (or will not run): wake any waiting writer and make it
  // rethrow `error`.
  void fail(std::exception_ptr error);
  // Stop the clone at its next region (the synthesis failed; the output is
  // discarded), and let writers through.
  void cancel();

  // Blocks the clone skipped because they were written first (for tests and stats).
  uint64_t blocks_skipped() const;

 private:
  enum class State : uint8_t { kPending, kCopying, kDone };
  bool claim(uint64_t begin, uint64_t end, std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  void done(uint64_t begin, uint64_t end);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t size_;
  std::vector<State> state_;       // per region
  std::vector<uint64_t> written_;  // one bit per 4 KiB block, for regions still pending
  uint64_t skipped_ = 0;
  bool cancelled_ = false;
  std::exception_ptr error_;
};

}  // namespace vmsynth
