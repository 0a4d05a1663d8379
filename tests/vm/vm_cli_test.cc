// `vmsynth vm ...` through the real binary where no guest is needed: paths
// that do not exist or are not VM directories, and the synthetic VMs of
// `gen-pair`, which have images but no machine description and so cannot
// be launched.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testutil/temp_dir.h"
#include "vm/machine_spec.h"
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

// A powered-off VM directory as `vm create` leaves it, without running qemu-img.
void write_powered_off_vm(const std::string& dir) {
  fs::create_directories(dir);
  std::ofstream(dir + "/disk.img") << "";
  std::ofstream(dir + "/memory.img") << "";
  MachineSpec spec;
  spec.memory_mib = 64;
  spec.accel_reason = "requested (--accel tcg)";
  RunLayout run;
  run.run_dir = dir;
  write_vm_json(dir, to_json(spec, run));
}

TEST(VmCli, MissingDirectoryIsAnErrorNamingIt) {
  testutil::TempDir t("vmsynth-cli");
  const std::string missing = t.path() + "/no-such-vm";
  const std::vector<std::vector<std::string>> commands = {
      {"vm", "status", missing},
      {"vm", "stop", missing},
      {"vm", "start", missing},
      {"vm", "resume", missing},
      {"vm", "capture", missing, "--out", t.path() + "/out"},
  };
  for (const auto& c : commands) {
    ProcessResult r = vmsynth(c);
    EXPECT_EQ(r.exit_code, 2) << c[1] << ": " << r.out << r.err;
    EXPECT_NE(r.err.find("no VM directory at '" + missing + "'"), std::string::npos) << c[1] << ": " << r.err;
    EXPECT_EQ(r.out.find("not running"), std::string::npos) << c[1] << ": " << r.out;
  }
  EXPECT_FALSE(fs::exists(missing)) << "no command may create the directory it was asked about";
  ProcessResult j = vmsynth({"vm", "status", missing, "--json"});
  EXPECT_EQ(j.exit_code, 2);
  auto e = nlohmann::json::parse(j.out, nullptr, false);
  ASSERT_FALSE(e.is_discarded()) << j.out;
  EXPECT_EQ(e["ok"], false);
  EXPECT_EQ(e["error"]["code"], "usage");
}

TEST(VmCli, StatusNeedsAVmDirectory) {
  testutil::TempDir t("vmsynth-cli");
  ProcessResult r = vmsynth({"vm", "status", t.path()});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("'" + t.path() + "' is not a VM directory (no vm.json)"), std::string::npos) << r.err;
  write_powered_off_vm(t.path() + "/vm");
  r = vmsynth({"vm", "status", t.path() + "/vm"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("not running"), std::string::npos) << r.out;
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
