// Overlay creation: the difference between a launch VM and its base VM.
//
// For every 4 KiB block of the launch images that differs from the base block
// at the same address, picks one op, in this order of preference: ZERO;
// BASE_COPY (the content exists somewhere in the base memory or disk, found
// through a BlockIndex and confirmed byte for byte); SELF_COPY (an earlier
// block of this overlay has the content: memory before disk, so page-cache
// copies travel once); DELTA (compressed against the base block at the same
// address, when a trial compression says that is smaller than a literal);
// LITERAL. Frames are laid out so that a synthesizer can start early: opaque
// files, then ZERO/BASE_COPY frames (no payload, no dependencies), then
// DELTA/LITERAL frames, then SELF_COPY frames (whose sources are all in
// earlier frames). Frames are compressed in parallel and written in order, so
// the output bytes do not depend on the thread count.
//
// With a key (CreateOptions::key), every frame is sealed with AES-256-GCM
// under a key derived for this overlay alone (codec/crypto.h); the headers stay
// readable. The output is written to a temporary sibling and renamed into
// place only once complete. The base and launch directories are only read.
#pragma once

#include <array>
#include <string>

#include "codec/block_hash.h"
#include "codec/crypto.h"
#include "codec/overlay_format.h"
#include "engine/cancel.h"
#include "engine/progress.h"

namespace vmsynth {

inline constexpr int kDefaultLevel = 9;  // zstd level used by default
inline constexpr int kMaxLevel = 22;     // what `--level max` selects

struct CreateOptions {
  std::string base_dir;
  std::string launch_dir;
  std::string output;  // overlay file path
  int level = kDefaultLevel;  // zstd level, 1..22
  unsigned threads = 0;       // worker threads; 0 = one per core
  bool force = false;         // replace an existing output file
  // Refuse a memory.img that is not whole 4096-byte pages (kUsage): guest RAM
  // is page-aligned, so such a file is not a VM's memory. The format itself
  // handles images of any size; tests of those tail blocks turn this off.
  bool require_page_aligned_memory = true;
  const CancelToken* cancel = nullptr;  // engine/cancel.h; null: not cancellable
  std::string cache_dir;      // base-id cache; empty = default_cache_dir()
  ProgressFn progress;        // phases: hashing/indexing base, comparing images, encoding frames, syncing
  codec::KeySpec key;         // none: not encrypted; a raw key or a passphrase: encrypted
  codec::ScryptParams scrypt; // passphrase only: scrypt cost (default N=2^15, r=8, p=1)
};

struct CreateStats {
  Hash128 base_id;
  std::array<uint64_t, kImageCount> launch_size{};
  std::array<uint64_t, format::kOpKindCount> kind_count{};
  uint64_t frames = 0;
  uint64_t overlay_bytes = 0;
  uint64_t payload_raw_bytes = 0;  // DELTA + LITERAL blocks before compression
  uint64_t file_bytes = 0;         // opaque files before compression
  double seconds_base_id = 0;
  double seconds_index = 0;
  double seconds_classify = 0;
  double seconds_encode = 0;
  double seconds_total = 0;
};

// Writes the overlay under a temporary name beside opts.output and renames it
// into place when complete (io::StagedFile). Polls opts.cancel between
// chunks and frames: a cancel stops it with kInterrupted and removes the
// temporary file. Refuses (kUsage) an output that is, contains or lies inside
// the base or launch VM, and thread counts above kMaxThreads.
CreateStats create_overlay(const CreateOptions& opts);

}  // namespace vmsynth
