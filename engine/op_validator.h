// Checks that an overlay's ops describe a well-formed launch VM before any of
// them is applied: every target inside the launch images and covered at most
// once; BASE_COPY sources inside the base; SELF_COPY sources produced by an op
// of a strictly earlier frame (so they are never forward, never themselves,
// and a parallel synthesizer may rely on frame order alone); each opaque file
// at most once.
//
// Memory: one bit per launch block, allocated only for the 16 MiB regions
// (4096 blocks, 512 bytes of bits) that some op targets, so a header that
// claims a huge launch image costs nothing until ops actually cover it, and
// then at most 512 bytes per op, far less
// than the 4 KiB of output each op writes. One validator per overlay, used by
// one thread at a time (the frame order it sees must be stream order).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>

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
  static constexpr uint64_t kLeafBlocks = 4096;  // blocks per leaf of the coverage bitmap
  using Leaf = std::array<uint64_t, kLeafBlocks / 64>;
  // Sparse bitmap of the launch blocks produced so far, one per image.
  struct Coverage {
    std::unordered_map<uint64_t, std::unique_ptr<Leaf>> leaves;
    uint64_t* word(uint64_t block, bool create);  // null if absent and !create
  };

  bool covered(format::BlockAddress a);

  std::array<uint64_t, kImageCount> base_blocks_{};
  std::array<uint64_t, kImageCount> launch_blocks_{};
  std::array<Coverage, kImageCount> covered_;
  std::array<bool, format::kFileIdCount> files_seen_{};
};

}  // namespace vmsynth
