#include "engine/base_check.h"

#include <string>

#include "common/error.h"
#include "io/file.h"

namespace vmsynth {

Hash128 check_base(const VmDir& base, const format::FileHeader& h, const BaseIdOptions& id_opts) {
  for (unsigned i = 0; i < kImageCount; ++i) {
    std::string p = base.image(static_cast<ImageKind>(i));
    if (!io::path_exists(p)) {
      throw Error(ErrorCode::kUsage, "base VM directory '" + base.path + "' has no " +
                                         std::string(image_file_name(static_cast<ImageKind>(i))));
    }
    uint64_t size = io::File::open_read(p).size();
    if (size != h.base_size[i]) {
      throw Error(ErrorCode::kWrongBase, "this overlay was made for another base VM: its base " +
                                             std::string(image_file_name(static_cast<ImageKind>(i))) + " has " +
                                             std::to_string(h.base_size[i]) + " bytes, '" + p + "' has " +
                                             std::to_string(size) + "; use the base VM the overlay was created from");
    }
  }
  Hash128 id = compute_base_id(base, id_opts);
  if (id != h.base_id) {
    throw Error(ErrorCode::kWrongBase, "this overlay was made for another base VM (overlay names base " +
                                           h.base_id.hex() + ", '" + base.path + "' is " + id.hex() +
                                           "); use the base VM the overlay was created from");
  }
  return id;
}

}  // namespace vmsynth
