#include "engine/image_view.h"

#include <sys/mman.h>

#include <cstring>

namespace vmsynth {

ImageView::ImageView(const VmDir& dir) {
  for (unsigned i = 0; i < kImageCount; ++i) {
    files_[i] = io::File::open_read(dir.image(static_cast<ImageKind>(i)));
    maps_[i] = io::Mapping(files_[i]);
  }
}

std::span<const std::byte> ImageView::block(unsigned image, uint64_t index,
                                            std::span<std::byte, format::kBlockSize> scratch) const {
  auto bytes = maps_[image].bytes();
  uint64_t off = index * format::kBlockSize;
  if (off + format::kBlockSize <= bytes.size()) return bytes.subspan(off, format::kBlockSize);
  std::memset(scratch.data(), 0, scratch.size());
  if (off < bytes.size()) std::memcpy(scratch.data(), bytes.data() + off, bytes.size() - off);
  return scratch;
}

}  // namespace vmsynth
