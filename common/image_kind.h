// The two block images of a VM, memory and disk: the one vocabulary for them
// in every layer. The numbering is on-disk: an overlay's block addresses and
// header size arrays use it (memory = 0, disk = 1; docs/overlay-format.md), so
// it never changes.
//
// Constants only: no ownership, safe from any thread.
#pragma once

#include <array>
#include <cstdint>

namespace vmsynth {

enum class ImageKind : uint8_t { kMemory = 0, kDisk = 1 };
inline constexpr unsigned kImageCount = 2;
inline constexpr std::array<ImageKind, kImageCount> kImageKinds = {ImageKind::kMemory, ImageKind::kDisk};

// The image's number, as in block addresses and the header's size arrays.
constexpr unsigned image_index(ImageKind k) { return static_cast<unsigned>(k); }

}  // namespace vmsynth
