// The user's vmsynth cache directory: what is in it, bounds, and clearing it.
//
// Location: $VMSYNTH_CACHE_DIR, else $XDG_CACHE_HOME/vmsynth, else
// ~/.cache/vmsynth, else /tmp/vmsynth-cache. Everything in it can be made
// again; nothing in it is needed for correctness:
//   base-id-<hex>   one base VM id each (engine/base_id.h), < 300 bytes. At
//                   most kMaxBaseIdEntries are kept: writing one more removes
//                   the least recently used (a hit refreshes an entry's mtime).
//   guest/          the test guest's kernel and busybox downloads
//                   (tests/guest/build-guest.sh), tens of MiB; only tests and
//                   benchmarks make it.
// clear_cache() removes exactly these names and leaves anything else alone,
// so a cache directory pointed at the wrong place loses nothing of the user's.
//
// Thread safety: free functions; concurrent use by several processes is safe
// (entries are written by rename, a removal that races another is ignored).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vmsynth {

inline constexpr unsigned kMaxBaseIdEntries = 256;

std::string default_cache_dir();

struct CacheUsage {
  std::string dir;
  bool exists = false;
  uint64_t base_id_entries = 0;
  uint64_t base_id_bytes = 0;
  uint64_t guest_bytes = 0;            // guest/ and everything below it
  std::vector<std::string> unknown;    // other names, which clear_cache leaves alone
};

CacheUsage measure_cache(const std::string& dir);

// Removes the base-id entries and guest/ (see above). Returns what was there.
// Throws kIo naming an entry that could not be removed.
CacheUsage clear_cache(const std::string& dir);

// Keeps the `keep` most recently used base-id entries of `dir` and removes the
// rest. Best effort (errors ignored).
void prune_base_id_cache(const std::string& dir, unsigned keep = kMaxBaseIdEntries);

}  // namespace vmsynth
