// clone_image: make an output image that starts as a copy of a base image,
// as cheaply as the filesystem allows.
//
// Synthesis writes only the blocks an overlay changes, so the launch VM's
// disk.img / memory.img start as a copy of the base's. Methods, cheapest first:
//   kReflink   - FICLONE: the new file shares the base's extents (btrfs, XFS,
//                bcachefs); no data is copied.
//   kCopyRange - copy_file_range over the source's data extents only (found
//                with SEEK_DATA/SEEK_HOLE); holes stay holes; the kernel moves
//                the bytes without a round trip through user space.
//   kReadWrite - read/write in 1 MiB chunks over the data extents, skipping
//                chunks that are all zero, so holes stay holes (and zero runs
//                become holes).
//   kAuto      - kReflink, else kCopyRange, else kReadWrite. A method that the
//                filesystem does not support (EOPNOTSUPP, EXDEV, EINVAL, ENOSYS,
//                ENOTTY) is skipped; any other error is thrown.
// The output is created (or truncated) with mode 0644 and ends exactly
// dst_size bytes long: a shorter size copies only the prefix, a longer one
// extends the file with a hole. The source is opened read-only and never
// changed; a missing or empty source reads as zero bytes. Nothing is fsynced
// (StagedDirectory::commit does that for whole output directories).
//
// Ownership: the functions open and close their own files.
// Thread safety: the functions are reentrant; cloning into one dst from two
// threads at once is the caller's mistake.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/enum_names.h"

namespace vmsynth::io {

enum class CloneMethod { kAuto, kReflink, kCopyRange, kReadWrite };

struct CloneResult {
  // The method that produced the file. With a missing or empty source no data
  // moves and this is the requested method (kAuto stays kAuto).
  CloneMethod method = CloneMethod::kAuto;
  // Bytes of file data written by copy_file_range or write(). Zero chunks
  // skipped by kReadWrite and holes are not counted.
  uint64_t bytes_copied = 0;
  // Bytes of the source now shared with the output by kReflink (the logical
  // size of the shared prefix).
  uint64_t bytes_shared = 0;
  // For kAuto: why cheaper methods were skipped, e.g.
  // "FICLONE: Operation not supported"; empty otherwise.
  std::string fallback_reason;
};

// Lets a clone run beside writers of the destination (the parallel synthesis
// engine writes the overlay's blocks while the base is still being copied).
// After `dst` exists at its final size and a reflink was tried, started() is
// called; from then on writers may write the destination. A reflink clone is
// then complete. Otherwise the source is copied region by region, in order:
// claim(begin, end, ranges) fills `ranges` with the parts of [begin, end) to
// copy (those no writer has written or will write while the region is being
// copied) and returns false to stop the clone early (it then returns what it
// did); done(begin, end) follows the region's copy. Both run on the cloning
// thread. Regions cover [0, min(source size, dst_size)) in steps of
// region_bytes; the rest of dst is a hole and never claimed.
struct CloneHooks {
  uint64_t region_bytes = uint64_t{16} << 20;
  std::function<void()> started;
  std::function<bool(uint64_t begin, uint64_t end, std::vector<std::pair<uint64_t, uint64_t>>& ranges)> claim;
  std::function<void(uint64_t begin, uint64_t end)> done;
};

// Creates `dst` (truncating an existing file) from `src`, `dst_size` bytes long.
// REQUIRES: src is a regular file or missing; dst is not the same file as src.
// Throws kIo (naming path and offset) for OS failures, kUnsupported when an
// explicitly requested method is not supported here or src is not a regular
// file, kUsage when dst is src.
// `hooks` (optional, borrowed for the call) coordinate with concurrent writers.
CloneResult clone_image(const std::string& src, const std::string& dst, uint64_t dst_size,
                        CloneMethod method = CloneMethod::kAuto, const CloneHooks* hooks = nullptr);

inline constexpr EnumName<CloneMethod> kCloneMethodNames[] = {{CloneMethod::kAuto, "auto"},
                                                              {CloneMethod::kReflink, "reflink"},
                                                              {CloneMethod::kCopyRange, "copy-range"},
                                                              {CloneMethod::kReadWrite, "read-write"}};
constexpr std::span<const EnumName<CloneMethod>> enum_names(CloneMethod) { return kCloneMethodNames; }

// "auto", "reflink", "copy-range", "read-write".
std::string_view clone_method_name(CloneMethod method);

// Inverse of clone_method_name; throws kUsage naming the valid choices.
CloneMethod parse_clone_method(std::string_view name);

}  // namespace vmsynth::io
