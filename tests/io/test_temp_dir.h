// The io tests' name for the shared temporary-directory helper.
#pragma once

#include "testutil/temp_dir.h"

namespace vmsynth::io::testing {
using TestTempDir = vmsynth::testutil::TempDir;
}  // namespace vmsynth::io::testing
