// A one-line progress display on stderr for long commands.
//
// Shows nothing unless stderr is a terminal, progress was not turned off
// (--quiet / --no-progress) and the work has run for more than a second.
// The line names the command and its current phase, and for counted phases
// the share done, bytes, the rate over the phase and an ETA:
//   synthesizing: applying  45.2%  1.1 GiB / 2.5 GiB  312.4 MiB/s  ETA 0:04  [0:03]
// A ticker thread redraws it four times a second even when the engine reports
// nothing (a long fsync), so the clock never freezes. The line is cleared when
// finished (or destroyed), so --json output and pipelines stay clean. The
// callback may be called from several threads, one at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "engine/progress.h"

namespace vmsynth::cli {

class TerminalProgress {
 public:
  // quiet: never draw (the command's --quiet / --no-progress).
  TerminalProgress(std::string label, bool quiet);
  ~TerminalProgress();
  TerminalProgress(const TerminalProgress&) = delete;
  TerminalProgress& operator=(const TerminalProgress&) = delete;

  // Empty when nothing will be drawn, so the engine skips the calls.
  ProgressFn callback();
  // Stops the ticker and clears the line.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  void update(const Progress& p);
  void tick(std::stop_token stop);
  void draw_locked(Clock::time_point now);

  std::mutex mu_;
  std::condition_variable_any cv_;
  const std::string label_;
  const bool enabled_;
  bool drawn_ = false;
  std::string phase_;
  uint64_t done_ = 0, total_ = 0;
  Clock::time_point start_, phase_start_, last_draw_;
  std::jthread ticker_;  // last member: stopped and joined first
};

// Adds -q/--quiet/--no-progress to a command.
void add_quiet_flag(CLI::App& cmd, bool& quiet);

// Formats a byte count as "123.4 MiB".
std::string human_bytes(uint64_t bytes);

}  // namespace vmsynth::cli
