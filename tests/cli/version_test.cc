// `vmsynth --version` prints the version CMake's project() declares: the build
// passes PROJECT_VERSION to this test as VMSYNTH_PROJECT_VERSION, so a version
// written by hand anywhere in the command line would show here as a mismatch.
#include <gtest/gtest.h>

#include <string>

#include "testutil/temp_dir.h"
#include "testutil/vm_files.h"

namespace vmsynth {
namespace {

TEST(Version, VersionFlagPrintsTheCMakeProjectVersion) {
  testutil::TempDir dir("vmsynth-version");
  auto r = vmfiles::run_vmsynth({"--version"}, dir.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, std::string("vmsynth ") + VMSYNTH_PROJECT_VERSION + "\n");
}

}  // namespace
}  // namespace vmsynth
