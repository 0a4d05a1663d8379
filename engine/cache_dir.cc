#include "engine/cache_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "io/staged_dir.h"

namespace vmsynth {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kBaseIdPrefix = "base-id-";
constexpr std::string_view kGuestDir = "guest";

bool is_base_id_entry(const std::string& name) { return name.rfind(kBaseIdPrefix, 0) == 0; }

uint64_t tree_bytes(const fs::path& p) {
  std::error_code ec;
  uint64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (it->is_regular_file(e2) && !it->is_symlink(e2)) total += it->file_size(e2);
  }
  return total;
}

}  // namespace

std::string default_cache_dir() {
  if (const char* d = std::getenv("VMSYNTH_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/vmsynth";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/vmsynth";
  return "/tmp/vmsynth-cache";
}

CacheUsage measure_cache(const std::string& dir) {
  CacheUsage u;
  u.dir = dir;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return u;
  u.exists = true;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename();
    std::error_code e2;
    if (is_base_id_entry(name) && it->is_regular_file(e2)) {
      ++u.base_id_entries;
      u.base_id_bytes += it->file_size(e2);
    } else if (name == kGuestDir && it->is_directory(e2) && !it->is_symlink(e2)) {
      u.guest_bytes += tree_bytes(it->path());
    } else {
      u.unknown.push_back(name);
    }
  }
  std::sort(u.unknown.begin(), u.unknown.end());
  return u;
}

CacheUsage clear_cache(const std::string& dir) {
  CacheUsage u = measure_cache(dir);
  if (!u.exists) return u;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename();
    if (is_base_id_entry(name) || name == kGuestDir) io::StagedDirectory::remove_tree(it->path());
  }
  return u;
}

void prune_base_id_cache(const std::string& dir, unsigned keep) {
  struct Entry {
    fs::file_time_type used;
    fs::path path;
  };
  std::vector<Entry> entries;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (!is_base_id_entry(it->path().filename()) || !it->is_regular_file(e2)) continue;
    auto t = it->last_write_time(e2);
    if (!e2) entries.push_back({t, it->path()});
  }
  if (entries.size() <= keep) return;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.used > b.used; });
  for (size_t i = keep; i < entries.size(); ++i) fs::remove(entries[i].path, ec);
}

}  // namespace vmsynth
