#include "cloudlet/metrics.h"

#include <cstdio>
#include <sstream>

namespace vmsynth::cloudlet {

void Metrics::synthesis_done(const std::string& result, double seconds) {
  std::lock_guard lock(mu_);
  ++results_[result];
  if (result != "ok") return;
  ++seconds_count_;
  seconds_sum_ += seconds;
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++bucket_counts_[i];  // buckets are cumulative
  }
}

void Metrics::request_done(int http_status) {
  std::lock_guard lock(mu_);
  ++requests_[http_status];
}

std::string Metrics::render(int64_t running_vms) const {
  std::ostringstream o;
  auto number = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return std::string(buf);
  };
  std::lock_guard lock(mu_);
  o << "# HELP vmsynthd_syntheses_total Syntheses finished, by result (ok or the error code).\n"
    << "# TYPE vmsynthd_syntheses_total counter\n";
  if (results_.empty()) o << "vmsynthd_syntheses_total{result=\"ok\"} 0\n";
  for (const auto& [result, n] : results_) o << "vmsynthd_syntheses_total{result=\"" << result << "\"} " << n << "\n";
  o << "# HELP vmsynthd_received_bytes_total Overlay bytes received.\n"
    << "# TYPE vmsynthd_received_bytes_total counter\n"
    << "vmsynthd_received_bytes_total " << received_bytes_.load() << "\n";
  o << "# HELP vmsynthd_synthesis_seconds Seconds from an overlay's first byte to its synthesized VM.\n"
    << "# TYPE vmsynthd_synthesis_seconds histogram\n";
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    o << "vmsynthd_synthesis_seconds_bucket{le=\"" << number(kBuckets[i]) << "\"} " << bucket_counts_[i] << "\n";
  }
  o << "vmsynthd_synthesis_seconds_bucket{le=\"+Inf\"} " << seconds_count_ << "\n"
    << "vmsynthd_synthesis_seconds_sum " << number(seconds_sum_) << "\n"
    << "vmsynthd_synthesis_seconds_count " << seconds_count_ << "\n";
  o << "# HELP vmsynthd_sessions_in_flight Overlay uploads being received and synthesized now.\n"
    << "# TYPE vmsynthd_sessions_in_flight gauge\n"
    << "vmsynthd_sessions_in_flight " << sessions_in_flight_.load() << "\n";
  o << "# HELP vmsynthd_running_vms VMs this daemon launched that are running.\n"
    << "# TYPE vmsynthd_running_vms gauge\n"
    << "vmsynthd_running_vms " << running_vms << "\n";
  o << "# HELP vmsynthd_requests_total HTTP requests answered, by status code.\n"
    << "# TYPE vmsynthd_requests_total counter\n";
  for (const auto& [code, n] : requests_) o << "vmsynthd_requests_total{code=\"" << code << "\"} " << n << "\n";
  return o.str();
}

}  // namespace vmsynth::cloudlet
