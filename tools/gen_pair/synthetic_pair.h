// Synthetic base/launch VM pairs for testing and benchmarking.
//
// generate_pair() writes two VM directories (see engine/vm_dir.h), out/base and
// out/launch, whose images have the shape of a real pair (docs/gen-pair.md,
// /work/shared/docs/background.md "What a real base/launch pair looks like"):
// a base with zero, text/code-like and random memory pages and a sparse disk
// with a filesystem-like used region; a launch that differs from it by moved
// pages, zeroed pages, page-cache copies of new disk blocks, small in-place
// edits, fresh compressible and incompressible data, duplicated files and a
// grown disk. Everything is a pure function of the PairSpec: the same spec
// gives byte-identical files. Block content is derived from a key per block,
// so blocks are produced independently and in parallel; runs of zero blocks
// are left as holes (the files are sparse).
//
// All knobs describing launch changes are counts of 4 KiB blocks, so tests can
// build exact shapes (e.g. everything zero except N fresh blocks);
// PairSpec::profile() turns the background's proportions into counts for a
// given size. Counts larger than what the images can hold are clamped, and
// PairStats reports what was actually done.
//
// Ownership: generate_pair() owns nothing after it returns; it creates
// out_dir/base and out_dir/launch (out_dir itself must exist or be creatable)
// and overwrites files of the same names inside them.
//
// Thread safety: generate_pair() may be called concurrently for different
// output directories. It runs its own parallel loops (oneTBB) and calls the
// ProgressFn from worker threads, never two calls at once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/cancel.h"
#include "engine/progress.h"

namespace vmsynth {

// Every block-level phenomenon works on 4 KiB blocks (the engine's block size).
inline constexpr uint64_t kSyntheticBlockSize = 4096;

struct PairSpec {
  // --- Sizes ------------------------------------------------------------
  // Size of memory.img in both VMs, bytes. Any value >= 1; a size that is not
  // a multiple of 4 KiB ends in a partial page.
  uint64_t memory_bytes = 64ull << 20;
  // Size of the base disk.img, bytes. Multiple of 512, >= 512.
  uint64_t disk_bytes = 256ull << 20;
  // Seed of every random choice and of all content. Any value.
  uint64_t seed = 1;
  // Written into vm.json; informational only.
  std::string profile_name = "custom";

  // --- Base memory composition (fractions of pages, sum <= 1) ------------
  // Pages that are zero (never-touched free memory). Default 0.45, range [0,1].
  double base_memory_zero_fraction = 0.45;
  // Pages of random bytes (keys, hashes, compressed data). Default 0.08, [0,1].
  double base_memory_random_fraction = 0.08;
  // Pages that are copies of used base-disk blocks (page cache). Default 0.12,
  // [0,1]; limited by the number of used base-disk blocks.
  double base_memory_page_cache_fraction = 0.12;
  // The rest are text/code-like compressible pages.

  // --- Base disk composition -------------------------------------------
  // Fraction of the disk used by files and metadata, denser at the start
  // like a filesystem; the rest is holes. Default 0.30, range [0,1].
  double base_disk_used_fraction = 0.30;
  // Fraction of used blocks that belong to incompressible files (archives,
  // media). Default 0.25, range [0,1].
  double base_disk_random_fraction = 0.25;
  // Mean file length in 4 KiB blocks (geometric distribution). Default 16, >= 1.
  uint32_t mean_file_blocks = 16;

  // --- Launch memory changes (counts of pages, all distinct pages) -------
  // Pages replaced by a copy of a non-zero base memory page from another
  // offset (resume reshuffles, or a fresh boot with ASLR). Default 0.
  uint64_t memory_moved_pages = 0;
  // Pages replaced by a copy of a used base-disk block (files of the base
  // read at launch land in the page cache).
  uint64_t memory_base_disk_copies = 0;
  // Non-zero base pages that become zero (freed and cleared).
  uint64_t memory_zeroed_pages = 0;
  // Pages holding a copy of a launch-disk block that differs from the base
  // disk (page cache of installed files). Limited by the number of such blocks.
  uint64_t memory_page_cache_copies = 0;
  // Non-zero base pages changed in place by a few bytes (counters, pointers).
  uint64_t memory_edited_pages = 0;
  // Pages of fresh text/code-like data (roughly 3-4x compressible by zstd).
  uint64_t memory_fresh_compressible_pages = 0;
  // Pages of fresh random data.
  uint64_t memory_fresh_random_pages = 0;
  // Pages that duplicate another fresh launch page (a buffer copied).
  uint64_t memory_duplicate_pages = 0;
  // Fraction of new-content pages (page cache, fresh, duplicates, base-disk
  // copies) placed on pages that were zero in the base (free memory), the
  // rest on reused non-zero pages. Default 0.8, range [0,1].
  double memory_new_on_free_fraction = 0.8;

  // --- Launch disk changes (counts of 4 KiB blocks) ----------------------
  // Used base blocks changed in place by a few bytes (inodes, bitmaps,
  // directory blocks).
  uint64_t disk_edited_blocks = 0;
  // Blocks of fresh compressible files, written into free space (base holes).
  uint64_t disk_fresh_compressible_blocks = 0;
  // Blocks of fresh incompressible files, written into free space.
  uint64_t disk_fresh_random_blocks = 0;
  // Blocks that copy runs of fresh launch blocks elsewhere (a file copied).
  uint64_t disk_duplicate_blocks = 0;
  // Bytes appended to the launch disk (a grown disk). Multiple of 512. Default 0.
  uint64_t disk_growth_bytes = 0;
  // Fraction of the grown region holding fresh files (compressible and
  // random in the ratio of the two fresh counts above, 3:1 when both are 0);
  // the rest is holes. Default 0.5, range [0,1].
  double disk_growth_data_fraction = 0.5;

  // --- Edits ------------------------------------------------------------
  // Upper bound on the bytes changed by one in-place edit (1-4 sites of
  // 1-16 bytes each, total capped here). Default 48, range [1, 4096].
  uint32_t edit_max_bytes = 48;

  // --- devstate.bin -----------------------------------------------------
  // Size of devstate.bin in both VMs, bytes. Default 365556 (what QEMU 7.2
  // wrote for every VM in background.md).
  uint64_t devstate_bytes = 365556;
  // Bytes that differ between base and launch devstate.bin. Default 168.
  uint32_t devstate_changed_bytes = 168;

  // Presets: "typical" (an app install; the default) or "decode-heavy" (the
  // launch is dominated by fresh compressible data no dedup can remove).
  // Throws vmsynth::Error(kUsage) naming the valid profiles for any other name.
  static PairSpec profile(std::string_view name, uint64_t memory_bytes, uint64_t disk_bytes, uint64_t seed);
  // The names profile() accepts, the default first.
  static const std::vector<std::string_view>& profile_names();

  uint64_t launch_disk_bytes() const { return disk_bytes + disk_growth_bytes; }
};

// What generate_pair() did. Block counts are 4 KiB blocks; a partial last
// block counts as one.
struct PairStats {
  uint64_t memory_pages = 0;  // pages per memory image
  uint64_t base_disk_blocks = 0;
  uint64_t launch_disk_blocks = 0;

  uint64_t base_memory_zero_pages = 0;
  uint64_t base_memory_page_cache_pages = 0;  // base pages copying base-disk blocks
  uint64_t base_disk_used_blocks = 0;         // non-hole blocks of the base disk

  uint64_t memory_moved_pages = 0;
  uint64_t memory_base_disk_copies = 0;
  uint64_t memory_zeroed_pages = 0;
  uint64_t memory_page_cache_copies = 0;
  uint64_t memory_edited_pages = 0;
  uint64_t memory_fresh_compressible_pages = 0;
  uint64_t memory_fresh_random_pages = 0;
  uint64_t memory_duplicate_pages = 0;
  uint64_t memory_pages_differing = 0;  // launch page != base page at the same offset

  uint64_t disk_edited_blocks = 0;
  uint64_t disk_fresh_compressible_blocks = 0;  // incl. those in the grown region
  uint64_t disk_fresh_random_blocks = 0;        // incl. those in the grown region
  uint64_t disk_duplicate_blocks = 0;
  uint64_t disk_grown_data_blocks = 0;  // fresh blocks placed in the grown region
  uint64_t disk_blocks_differing = 0;   // incl. data blocks in the grown region

  uint64_t bytes_written = 0;  // data bytes written to the four images (holes excluded)
};

// Writes out_dir/base and out_dir/launch (memory.img, disk.img, devstate.bin,
// vm.json in each). REQUIRES: spec.memory_bytes >= 1; spec.disk_bytes and
// spec.disk_growth_bytes multiples of 512, disk_bytes >= 512. Throws
// vmsynth::Error(kUsage) for an invalid spec, kIo for I/O failures.
// `progress` (engine/progress.h) gets the phases "planning" and "writing
// images" (bytes of image data written so far, and the total). Polls
// `cancel` (engine/cancel.h) between chunks: a cancel stops it with kInterrupted (the
// caller's staging directory then holds a partial pair).
PairStats generate_pair(const PairSpec& spec, const std::string& out_dir, ProgressFn progress = {},
                        const CancelToken* cancel = nullptr);

}  // namespace vmsynth
