// Placeholder until the parallel engine lands (issue 3): refuses clearly.
#include "common/error.h"
#include "engine/synthesis.h"

namespace vmsynth {
SynthesizeStats synthesize_parallel(io::ByteSource&, const SynthesizeOptions&) {
  throw Error(ErrorCode::kUnsupported, "the parallel engine is not available in this build; use --engine serial");
}
}  // namespace vmsynth
