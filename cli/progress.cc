#include "cli/progress.h"

#include <unistd.h>

#include <cstdio>

namespace vmsynth::cli {

namespace {

constexpr auto kShowAfter = std::chrono::seconds(1);       // short work shows nothing
constexpr auto kRedrawEvery = std::chrono::milliseconds(250);

std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

}  // namespace

TerminalProgress::TerminalProgress(std::string label, bool quiet)
    : label_(std::move(label)),
      enabled_(!quiet && ::isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      phase_start_(start_) {
  if (enabled_) ticker_ = std::jthread([this](std::stop_token stop) { tick(stop); });
}

TerminalProgress::~TerminalProgress() { finish(); }

ProgressFn TerminalProgress::callback() {
  if (!enabled_) return {};
  return [this](const Progress& p) { update(p); };
}

void TerminalProgress::update(const Progress& p) {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  if (p.phase != phase_) {
    phase_ = std::string(p.phase);
    phase_start_ = now;
    last_draw_ = {};  // a new phase is shown at once
  }
  done_ = p.done;
  total_ = p.total;
  if (now - last_draw_ >= kRedrawEvery) draw_locked(now);
}

void TerminalProgress::tick(std::stop_token stop) {
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, stop, kRedrawEvery, [] { return false; })) {
    if (stop.stop_requested()) return;
    draw_locked(Clock::now());
  }
}

void TerminalProgress::draw_locked(Clock::time_point now) {
  if (now - start_ < kShowAfter) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double in_phase = std::chrono::duration<double>(now - phase_start_).count();
  std::string line = label_ + ": " + (phase_.empty() ? "working" : phase_);
  char buf[96];
  if (done_ > 0 || total_ > 0) {
    if (total_ > 0) {
      std::snprintf(buf, sizeof buf, "  %5.1f%%", 100.0 * double(done_) / double(total_));
      line += buf;
      line += "  " + human_bytes(done_) + " / " + human_bytes(total_);
    } else {
      line += "  " + human_bytes(done_);
    }
    const double rate = in_phase > 0.5 ? double(done_) / in_phase : 0;
    if (rate > 0) {
      line += "  " + human_bytes(static_cast<uint64_t>(rate)) + "/s";
      if (total_ > done_) line += "  ETA " + clock_text(double(total_ - done_) / rate);
    }
  }
  line += "  [" + clock_text(elapsed) + "]";
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void TerminalProgress::finish() {
  if (ticker_.joinable()) {
    ticker_.request_stop();
    ticker_.join();
  }
  std::lock_guard lock(mu_);
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

void add_quiet_flag(CLI::App& cmd, bool& quiet) {
  cmd.add_flag("-q,--quiet,--no-progress", quiet,
               "Draw no progress line on stderr (it is drawn only on a terminal anyway); results and errors are "
               "still printed");
}

std::string human_bytes(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace vmsynth::cli
