#include "cli/progress.h"

#include <unistd.h>

#include <cstdio>

namespace vmsynth::cli {

TerminalProgress::TerminalProgress(std::string label)
    : label_(std::move(label)), enabled_(::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()) {}

TerminalProgress::~TerminalProgress() { finish(); }

void TerminalProgress::stage(std::string label) {
  std::lock_guard lock(mu_);
  label_ = std::move(label);
}

ProgressFn TerminalProgress::callback() {
  if (!enabled_) return {};
  return [this](uint64_t done, uint64_t total) { update(done, total); };
}

void TerminalProgress::update(uint64_t done, uint64_t total) {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  double secs = std::chrono::duration<double>(now - start_).count();
  if (total > 0) {
    std::fprintf(stderr, "\r\033[K%s: %5.1f%% (%.0f s)", label_.c_str(), 100.0 * double(done) / double(total), secs);
  } else {
    std::fprintf(stderr, "\r\033[K%s: %s (%.0f s)", label_.c_str(), human_bytes(done).c_str(), secs);
  }
  std::fflush(stderr);
  drawn_ = true;
}

void TerminalProgress::finish() {
  std::lock_guard lock(mu_);
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
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
