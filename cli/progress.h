// A one-line progress display on stderr for long commands.
//
// Shows nothing unless stderr is a terminal and the work has run for more than
// a second, redraws at most ten times a second, and clears its line when
// finished (or destroyed), so --json output and pipelines stay clean. The
// callback may be called from several threads, one at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "engine/progress.h"

namespace vmsynth::cli {

class TerminalProgress {
 public:
  explicit TerminalProgress(std::string label);
  ~TerminalProgress();

  // Changes the label of what is being done (e.g. "hashing", "writing").
  void stage(std::string label);
  ProgressFn callback();
  void finish();

 private:
  void update(uint64_t done, uint64_t total);

  std::mutex mu_;
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// Formats a byte count as "123.4 MiB".
std::string human_bytes(uint64_t bytes);

}  // namespace vmsynth::cli
