// Elapsed wall time for the per-stage timings engines report.
// A value type; read from the thread that owns it.
#pragma once

#include <chrono>

namespace vmsynth {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  // Seconds since construction or the last restart().
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  void restart() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace vmsynth
