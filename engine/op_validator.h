// Checks that an overlay's ops describe a well-formed launch VM before any of
// them is applied: every target inside the launch images and covered at most
// once; BASE_COPY sources inside the base; SELF_COPY sources produced by an op
// of a strictly earlier frame (so they are never forward, never themselves,
// and a parallel synthesizer may rely on frame order alone); each opaque file
// at most once.
//
// Memory: one bit per launch block. One validator per overlay, used by one
// thread at a time (the frame order it sees must be stream order).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "codec/overlay_format.h"

namespace vmsynth {

class OpValidator {
 public:
  explicit OpValidator(const format::FileHeader& h);

  // Throws kCorrupt naming the op on the first problem; on success records
  // the frame's targets as produced.
  void check_blocks_frame(std::span<const format::BlockOp> ops);
  void check_file(format::FileId id);

 private:
  bool covered(format::BlockAddress a) const;

  std::array<uint64_t, format::kImageCount> base_blocks_{};
  std::array<uint64_t, format::kImageCount> launch_blocks_{};
  std::array<std::vector<uint64_t>, format::kImageCount> covered_;  // bitmaps
  std::array<bool, format::kFileIdCount> files_seen_{};
};

}  // namespace vmsynth
