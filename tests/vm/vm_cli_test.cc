// `vmsynth vm ...` through the real binary where no guest is needed: the
// synthetic VMs of `gen-pair`, which have images but no machine description
// and so cannot be launched.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testutil/temp_dir.h"
#include "vm/subprocess.h"

namespace vmsynth::vm {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

// Runs vmsynth with `args`; with `path_prefix`, that directory comes first in its PATH.
ProcessResult vmsynth(std::vector<std::string> args, const std::string& path_prefix = "") {
  args.insert(args.begin(), VMSYNTH_BIN);
  if (!path_prefix.empty()) {
    const char* p = std::getenv("PATH");
    args.insert(args.begin(), {"env", "PATH=" + path_prefix + ":" + (p ? p : "/usr/bin:/bin")});
  }
  return run_process(args, milliseconds(120000));
}

TEST(VmCli, GenPairVmCannotBeLaunched) {
  testutil::TempDir t("vmsynth-cli");
  const std::string pair = t.path() + "/pair";
  ProcessResult g = vmsynth({"gen-pair", "--out", pair, "--memory-mib", "4", "--disk-mib", "4"});
  ASSERT_EQ(g.exit_code, 0) << g.out << g.err;
  ASSERT_TRUE(fs::exists(pair + "/launch/vm.json"));

  ProcessResult r = vmsynth({"vm", "resume", pair + "/launch"});
  EXPECT_EQ(r.exit_code, 7) << r.out << r.err;
  EXPECT_NE(r.err.find("VM directory '" + pair + "/launch' cannot be launched: its vm.json is not a machine "
                       "description (no 'schema_version'"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("gen-pair makes synthetic VMs that do not boot"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("corrupt"), std::string::npos) << r.err;

  r = vmsynth({"vm", "resume", pair + "/launch", "--json"});
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(nlohmann::json::parse(r.out)["error"]["code"], "unsupported") << r.out;

  r = vmsynth({"vm", "start", pair + "/base"});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_NE(r.err.find("cannot be started"), std::string::npos) << r.err;

  // Images without any vm.json (an overlay of VMs that had none): the same.
  fs::remove(pair + "/launch/vm.json");
  r = vmsynth({"vm", "resume", pair + "/launch"});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_NE(r.err.find("cannot be launched: it has no vm.json"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace vmsynth::vm
