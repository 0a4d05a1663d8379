// `vmsynth vm ...` through the real binary where no real guest is needed:
// `vm start` against a fake daemonizing QEMU (tests/vm/fake_qemu.h) that
// writes nothing, or something, to the serial console; paths that do not
// exist or are not VM directories; and the synthetic VMs of `gen-pair`,
// which have images but no machine description and so cannot be launched.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testutil/temp_dir.h"
#include "vm/fake_qemu.h"
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

// True while `pid` exists and is not a zombie.
bool alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string id, comm, state;
  return !(stat >> id >> comm >> state) || state != "Z";
}

pid_t read_pid(const std::string& path) {
  std::ifstream f(path);
  pid_t pid = -1;
  f >> pid;
  return pid;
}

class VmStart : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "the fake QEMU needs /usr/bin/python3";
    fs::create_directories(bin_);
    write_powered_off_vm(vm_);
  }
  void TearDown() override {
    // Whatever happened, no fake QEMU outlives the test.
    pid_t pid = read_pid(bin_ + "/daemon.pid");
    if (alive(pid)) ::kill(pid, SIGKILL);
  }

  testutil::TempDir t_{"vmsynth-start"};
  std::string bin_ = t_.path() + "/bin";
  std::string vm_ = t_.path() + "/vm";
};

TEST_F(VmStart, GuestThatWritesNothingFailsAndQemuIsStopped) {
  fake::write_daemon_qemu(bin_, "");
  ProcessResult r = vmsynth({"vm", "start", vm_, "--boot-timeout", "1"}, bin_);
  EXPECT_EQ(r.exit_code, 6) << r.out << r.err;
  EXPECT_NE(r.err.find("the VM in '" + vm_ + "' wrote nothing to its serial console '" + vm_ +
                       "/serial.log' within 1 s"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--boot-timeout 0"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--accel tcg"), std::string::npos) << r.err;

  // QEMU was started (the fake daemon recorded itself) and is stopped again.
  const pid_t pid = read_pid(bin_ + "/daemon.pid");
  ASSERT_GT(pid, 0) << "the fake QEMU never ran";
  EXPECT_FALSE(alive(pid)) << "QEMU must be stopped when the guest did not boot";
  EXPECT_FALSE(fs::exists(vm_ + "/qemu.pid"));
  EXPECT_FALSE(fs::exists(vm_ + "/qmp.sock"));
  ProcessResult s = vmsynth({"vm", "status", vm_, "--json"});
  EXPECT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(nlohmann::json::parse(s.out).value("running", true), false) << s.out;
}

TEST_F(VmStart, FirstSerialOutputEndsTheWait) {
  // Old output from an earlier run is in serial.log already: only new bytes count.
  std::ofstream(vm_ + "/serial.log") << "COUNTER 7\r\n";
  fake::write_daemon_qemu(bin_, "VMSYNTH-GUEST BOOT\r\n");
  ProcessResult r = vmsynth({"vm", "start", vm_, "--json"}, bin_);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.contains("first_output_ms")) << r.out;
  EXPECT_EQ(j.value("pid", -1), read_pid(bin_ + "/daemon.pid"));
  ProcessResult s = vmsynth({"vm", "status", vm_, "--json"});
  EXPECT_EQ(nlohmann::json::parse(s.out).value("running", false), true) << s.out;
  EXPECT_EQ(vmsynth({"vm", "stop", vm_}).exit_code, 0);
}

TEST_F(VmStart, BootTimeoutZeroDoesNotWaitForOutput) {
  fake::write_daemon_qemu(bin_, "");
  ProcessResult r = vmsynth({"vm", "start", vm_, "--boot-timeout", "0", "--json"}, bin_);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_FALSE(nlohmann::json::parse(r.out).contains("first_output_ms")) << r.out;
  EXPECT_TRUE(alive(read_pid(bin_ + "/daemon.pid")));
  EXPECT_EQ(vmsynth({"vm", "stop", vm_}).exit_code, 0);
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
