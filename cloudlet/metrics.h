// The daemon's counters, rendered in the Prometheus text exposition format
// (version 0.0.4) at GET /metrics. Names:
//   vmsynthd_syntheses_total{result="ok|corrupt|wrong_base|..."}  counter
//   vmsynthd_received_bytes_total                                counter
//   vmsynthd_synthesis_seconds (first overlay byte -> synthesized) histogram
//   vmsynthd_sessions_in_flight                                  gauge
//   vmsynthd_running_vms                                         gauge
//   vmsynthd_requests_total{code="200|201|..."}                  counter
// Thread safety: every member may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace vmsynth::cloudlet {

class Metrics {
 public:
  void add_received(uint64_t bytes) { received_bytes_ += bytes; }
  void session_started() { ++sessions_in_flight_; }
  void session_ended() { --sessions_in_flight_; }
  int64_t sessions_in_flight() const { return sessions_in_flight_; }
  // One finished synthesis: its result ("ok" or an error code) and, for
  // "ok", its seconds from the first overlay byte to the synthesized VM.
  void synthesis_done(const std::string& result, double seconds);
  void request_done(int http_status);
  // `running_vms` is read when rendering (the registry knows it).
  std::string render(int64_t running_vms) const;

 private:
  static constexpr std::array<double, 12> kBuckets{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
  std::atomic<uint64_t> received_bytes_{0};
  std::atomic<int64_t> sessions_in_flight_{0};
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> results_;
  std::map<int, uint64_t> requests_;
  std::array<uint64_t, kBuckets.size()> bucket_counts_{};
  uint64_t seconds_count_ = 0;
  double seconds_sum_ = 0;
};

}  // namespace vmsynth::cloudlet
