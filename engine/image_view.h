// Read-only mapped view of a VM directory's two block images.
//
// Blocks are addressed as in the overlay format (image 0 = memory, 1 = disk;
// 4096-byte blocks). The tail of an image that is not a multiple of 4096 bytes
// reads as if padded with zeros, and blocks past the end read as zeros, which
// is how the format defines the base beyond its size. The images are opened
// read-only and never written.
//
// Thread safety: immutable after construction; read from any thread.
#pragma once

#include <array>
#include <span>

#include "codec/overlay_format.h"
#include "engine/vm_dir.h"
#include "io/file.h"

namespace vmsynth {

class ImageView {
 public:
  explicit ImageView(const VmDir& dir);

  uint64_t size(unsigned image) const { return maps_[image].size(); }
  uint64_t blocks(unsigned image) const { return format::blocks_in(size(image)); }

  // The block's bytes: a view into the mapping when the whole block is inside
  // the image, else `scratch` filled with the in-range bytes and zeros.
  std::span<const std::byte> block(unsigned image, uint64_t index,
                                   std::span<std::byte, format::kBlockSize> scratch) const;

 private:
  std::array<io::File, kImageCount> files_;
  std::array<io::Mapping, kImageCount> maps_;
};

}  // namespace vmsynth
