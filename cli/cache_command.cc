// `vmsynth cache info|clear`: what the user's cache directory holds
// (engine/cache_dir.h), and removing it.
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "engine/cache_dir.h"

namespace vmsynth::cli {

namespace {

nlohmann::json usage_json(const CacheUsage& u) {
  return {{"dir", u.dir},
          {"exists", u.exists},
          {"base_id_entries", u.base_id_entries},
          {"base_id_bytes", u.base_id_bytes},
          {"guest_bytes", u.guest_bytes},
          {"unknown", u.unknown}};
}

void print_usage(const CacheUsage& u, const char* verb) {
  std::printf("%s %s: %llu base id entr%s (%s), test guest downloads %s\n", verb, u.dir.c_str(),
              static_cast<unsigned long long>(u.base_id_entries), u.base_id_entries == 1 ? "y" : "ies",
              human_bytes(u.base_id_bytes).c_str(), human_bytes(u.guest_bytes).c_str());
  for (const auto& n : u.unknown) std::printf("  not vmsynth's, left alone: %s\n", n.c_str());
}

}  // namespace

void add_cache_commands(CLI::App& app) {
  struct Args {
    std::string dir;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cache = app.add_subcommand(
      "cache",
      "Show or clear the cache directory: base VM ids (at most " + std::to_string(kMaxBaseIdEntries) +
          ", least recently used dropped first) and the test guest's downloads. Everything in it can be made "
          "again.");
  cache->require_subcommand(1);
  cache->footer("Location: $VMSYNTH_CACHE_DIR, else $XDG_CACHE_HOME/vmsynth, else ~/.cache/vmsynth.");
  for (const char* name : {"info", "clear"}) {
    const bool clear = std::string(name) == "clear";
    CLI::App* c = cache->add_subcommand(name, clear ? "Remove the base id entries and the test guest's downloads "
                                                      "(nothing else in the directory is touched)"
                                                    : "Show where the cache is and what it holds");
    c->add_option("--dir", args->dir, "Cache directory (default: see below)");
    c->add_flag("--json", args->json, "Print the result as JSON");
    c->callback([args, clear] {
      const std::string dir = args->dir.empty() ? default_cache_dir() : args->dir;
      const CacheUsage u = clear ? clear_cache(dir) : measure_cache(dir);
      if (args->json) {
        nlohmann::json j = {{"ok", true}, {clear ? "removed" : "cache", usage_json(u)}};
        std::printf("%s\n", j.dump(2).c_str());
      } else if (!u.exists) {
        std::printf("%s: no cache directory\n", dir.c_str());
      } else {
        print_usage(u, clear ? "cleared" : "cache");
      }
    });
  }
}

}  // namespace vmsynth::cli
