// `vmsynth gen-pair`: writes a deterministic synthetic base/launch VM pair
// (tools/gen_pair/synthetic_pair.h, docs/gen-pair.md) for tests and benchmarks.
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/progress.h"
#include "common/error.h"
#include "tools/gen_pair/synthetic_pair.h"
#include "io/staged_dir.h"

namespace vmsynth::cli {

namespace {

struct GenPairOptions {
  std::string out;
  uint64_t memory_mib = 0;
  uint64_t disk_mib = 0;
  uint64_t seed = 1;
  std::string profile = "typical";
  bool force = false;
  bool json = false;
  bool quiet = false;
};

nlohmann::json stats_json(const PairStats& s) {
  return {
      {"memory_pages", s.memory_pages},
      {"base_disk_blocks", s.base_disk_blocks},
      {"launch_disk_blocks", s.launch_disk_blocks},
      {"base_memory_zero_pages", s.base_memory_zero_pages},
      {"base_memory_page_cache_pages", s.base_memory_page_cache_pages},
      {"base_disk_used_blocks", s.base_disk_used_blocks},
      {"memory_moved_pages", s.memory_moved_pages},
      {"memory_base_disk_copies", s.memory_base_disk_copies},
      {"memory_zeroed_pages", s.memory_zeroed_pages},
      {"memory_page_cache_copies", s.memory_page_cache_copies},
      {"memory_edited_pages", s.memory_edited_pages},
      {"memory_fresh_compressible_pages", s.memory_fresh_compressible_pages},
      {"memory_fresh_random_pages", s.memory_fresh_random_pages},
      {"memory_duplicate_pages", s.memory_duplicate_pages},
      {"memory_pages_differing", s.memory_pages_differing},
      {"disk_edited_blocks", s.disk_edited_blocks},
      {"disk_fresh_compressible_blocks", s.disk_fresh_compressible_blocks},
      {"disk_fresh_random_blocks", s.disk_fresh_random_blocks},
      {"disk_duplicate_blocks", s.disk_duplicate_blocks},
      {"disk_grown_data_blocks", s.disk_grown_data_blocks},
      {"disk_blocks_differing", s.disk_blocks_differing},
      {"bytes_written", s.bytes_written},
  };
}

double percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
}

void run_gen_pair(const GenPairOptions& o) {
  constexpr uint64_t kMiB = 1ull << 20;
  if (o.memory_mib == 0 || o.disk_mib == 0) {
    throw Error(ErrorCode::kUsage, "--memory-mib and --disk-mib must be at least 1");
  }
  constexpr uint64_t kMaxMib = 1ull << 24;  // 16 TiB: far beyond any test, and no overflow
  if (o.memory_mib > kMaxMib || o.disk_mib > kMaxMib) {
    throw Error(ErrorCode::kUsage, "--memory-mib and --disk-mib must be at most " + std::to_string(kMaxMib));
  }
  // profile() validates the name and lists the valid ones.
  const PairSpec spec = PairSpec::profile(o.profile, o.memory_mib * kMiB, o.disk_mib * kMiB, o.seed);

  const auto start = std::chrono::steady_clock::now();
  note_output(o.out);
  install_interrupt_handlers();
  io::StagedDirectory staged(o.out, o.force);
  PairStats stats;
  {
    TerminalProgress line("generating pair", o.quiet);
    stats = generate_pair(spec, staged.path(), line.callback(), &interrupt_token());
    line.finish();
  }
  staged.commit();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (o.json) {
    const nlohmann::json j = {
        {"ok", true},
        {"out", o.out},
        {"profile", spec.profile_name},
        {"seed", spec.seed},
        {"memory_bytes", spec.memory_bytes},
        {"base_disk_bytes", spec.disk_bytes},
        {"launch_disk_bytes", spec.launch_disk_bytes()},
        {"stats", stats_json(stats)},
        {"elapsed_seconds", seconds},
    };
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("wrote %s/base and %s/launch (profile %s, seed %llu) in %.2f s\n", o.out.c_str(), o.out.c_str(),
              spec.profile_name.c_str(), static_cast<unsigned long long>(spec.seed), seconds);
  std::printf(
      "  memory: %llu MiB, %llu of %llu pages differ (%.1f%%), %llu page-cache copies of new disk blocks\n",
      static_cast<unsigned long long>(o.memory_mib), static_cast<unsigned long long>(stats.memory_pages_differing),
      static_cast<unsigned long long>(stats.memory_pages), percent(stats.memory_pages_differing, stats.memory_pages),
      static_cast<unsigned long long>(stats.memory_page_cache_copies));
  std::printf("  disk:   %llu MiB -> %.1f MiB, %llu of %llu blocks differ (%.1f%%), %llu duplicates\n",
              static_cast<unsigned long long>(o.disk_mib), static_cast<double>(spec.launch_disk_bytes()) / kMiB,
              static_cast<unsigned long long>(stats.disk_blocks_differing),
              static_cast<unsigned long long>(stats.base_disk_blocks),
              percent(stats.disk_blocks_differing, stats.base_disk_blocks),
              static_cast<unsigned long long>(stats.disk_duplicate_blocks));
  std::printf("  data written: %.1f MiB (zero regions are holes)\n", static_cast<double>(stats.bytes_written) / kMiB);
}

}  // namespace

void add_gen_pair_command(CLI::App& app) {
  auto opts = std::make_shared<GenPairOptions>();
  CLI::App* cmd = app.add_subcommand(
      "gen-pair",
      "Write a deterministic synthetic base/launch VM pair (DIR/base, DIR/launch) for tests and benchmarks.");
  cmd->add_option("--out", opts->out, "Output directory (created; holds base/ and launch/)")->required();
  cmd->add_option("--memory-mib", opts->memory_mib, "Memory size of both VMs, MiB")->required();
  cmd->add_option("--disk-mib", opts->disk_mib, "Base disk size, MiB (the launch disk is a little larger)")->required();
  cmd->add_option("--seed", opts->seed, "Seed of all content; same seed, same bytes")->capture_default_str();
  std::string valid;
  for (auto n : PairSpec::profile_names()) valid += (valid.empty() ? "" : "|") + std::string(n);
  cmd->add_option("--profile", opts->profile, "Shape of the launch: " + valid + " (see docs/gen-pair.md)")
      ->capture_default_str();
  cmd->add_flag("--force", opts->force, "Replace DIR if it exists");
  cmd->add_flag("--json", opts->json, "Print sizes, statistics and elapsed time as JSON");
  add_quiet_flag(*cmd, opts->quiet);
  cmd->callback([opts] { run_gen_pair(*opts); });
}

}  // namespace vmsynth::cli
