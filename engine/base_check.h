// The check every synthesis (and `overlay verify --base`) makes before it
// writes or reconstructs anything: is this the base VM the overlay was made
// against? Sizes first (cheap), then the content id (engine/base_id.h,
// cached). Stateless; any thread.
#pragma once

#include "codec/block_hash.h"
#include "codec/overlay_format.h"
#include "engine/base_id.h"
#include "engine/vm_dir.h"

namespace vmsynth {

// Throws kWrongBase unless the base at `base` is the one the overlay names
// (sizes, then content id); kUsage if an image is missing. Returns the id.
Hash128 check_base(const VmDir& base, const format::FileHeader& h, const BaseIdOptions& id_opts);

}  // namespace vmsynth
