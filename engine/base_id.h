// The base VM id: a content hash that names the base an overlay applies to.
//
// id = XXH3-128 over a domain string, the memory and disk image sizes, and the
// XXH3-128 of every 16 MiB chunk of memory.img then disk.img (the last chunk
// of each image may be shorter). Chunks are hashed in parallel; the id does
// not depend on the thread count. Computing it reads the whole base, so the
// result is cached under the cache directory (engine/cache_dir.h: at most
// kMaxBaseIdEntries entries, least recently used removed first) keyed by each
// image's device, inode, size, mtime and ctime (ctime cannot be set back by a user, so any
// write to an image invalidates the entry). The base directory itself is never
// written.
//
// Thread safety: free functions; concurrent calls are safe (the cache is
// written with an atomic rename).
#pragma once

#include <string>

#include "codec/block_hash.h"
#include "engine/cache_dir.h"
#include "engine/vm_dir.h"

namespace vmsynth {

inline constexpr uint64_t kBaseIdChunkSize = 16u << 20;  // bytes hashed per chunk

struct BaseIdOptions {
  bool use_cache = true;
  // Cache directory; empty = $VMSYNTH_CACHE_DIR, else $XDG_CACHE_HOME/vmsynth, else ~/.cache/vmsynth.
  std::string cache_dir;
};

Hash128 compute_base_id(const VmDir& base, const BaseIdOptions& opts = {});

}  // namespace vmsynth
