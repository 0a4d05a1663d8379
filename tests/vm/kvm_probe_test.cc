// The --accel auto KVM probe against fake QEMUs (tests/vm/fake_qemu.h): it
// must choose KVM only when the kernel got through its init (a line printed
// at the root mount), not when the guest printed anything at all. The fake
// that prints the real-mode setup's EDD line and hangs is what KVM did on the
// development machine (a KVM that cannot run the guest).
//
// probe_kvm() does not look at /dev/kvm, so these run everywhere; the one
// test through create_vm() needs a usable /dev/kvm (create_vm checks it
// before probing) and qemu-img, and is skipped without them.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testutil/temp_dir.h"
#include "vm/fake_qemu.h"
#include "vm/subprocess.h"
#include "vm/vm_control.h"

namespace vmsynth::vm {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr const char* kEddLine = "Probing EDD (edd=off to disable)... ok\r\n";

// Puts `dir` first in PATH for the lifetime of the object.
class PathPrefix {
 public:
  explicit PathPrefix(const std::string& dir) {
    const char* p = std::getenv("PATH");
    old_ = p ? p : "/usr/bin:/bin";
    ::setenv("PATH", (dir + ":" + old_).c_str(), 1);
  }
  ~PathPrefix() { ::setenv("PATH", old_.c_str(), 1); }
  PathPrefix(const PathPrefix&) = delete;
  PathPrefix& operator=(const PathPrefix&) = delete;

 private:
  std::string old_;
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> v;
  for (std::string l; std::getline(f, l);) v.push_back(l);
  return v;
}

bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

class KvmProbe : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(bin_);
    fs::create_directories(vm_);
    std::ofstream(vm_ + "/disk.img") << "";
    std::ofstream(vm_ + "/kernel") << "not a kernel";
    spec_.memory_mib = 64;
    spec_.kernel = BootFile{"kernel", vm_ + "/kernel", "00", 12};
    spec_.initrd = BootFile{"initrd", vm_ + "/initrd", "00", 0};
    spec_.append = "console=ttyS0 quiet";
    run_.run_dir = vm_;
    run_.kernel_path = vm_ + "/kernel";
    run_.initrd_path = vm_ + "/initrd";
  }

  KvmProbeResult probe(milliseconds timeout) {
    PathPrefix path(bin_);
    return probe_kvm(spec_, run_, timeout);
  }

  testutil::TempDir t_{"vmsynth-probe"};
  std::string bin_ = t_.path() + "/bin";
  std::string vm_ = t_.path() + "/vm";
  MachineSpec spec_;
  RunLayout run_;
};

TEST_F(KvmProbe, SetupLinesThenSilenceMeanNoProgressAndTcg) {
  fake::write_probe_qemu(bin_, kEddLine);
  KvmProbeResult r = probe(milliseconds(1000));
  EXPECT_FALSE(r.kvm_ok);
  EXPECT_NE(r.reason.find("no progress"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("Probing EDD (edd=off to disable)... ok"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("--accel kvm"), std::string::npos) << r.reason;
  EXPECT_FALSE(fs::exists(vm_ + "/.kvm-probe")) << "the probe directory must be removed";

  // The probe boots the VM's kernel under KVM, without its initrd, so that the
  // kernel's init ends at the (impossible) root mount, and QEMU exits on the panic.
  auto args = read_lines(bin_ + "/args");
  ASSERT_FALSE(args.empty());
  EXPECT_TRUE(has(args, "-no-reboot"));
  EXPECT_TRUE(has(args, "kvm"));
  EXPECT_TRUE(has(args, vm_ + "/kernel"));
  EXPECT_FALSE(has(args, "-initrd"));
  EXPECT_FALSE(has(args, "-daemonize"));
  const auto append = std::find(args.begin(), args.end(), "-append");
  ASSERT_NE(append, args.end());
  ASSERT_NE(append + 1, args.end());
  EXPECT_EQ(append[1].rfind("console=ttyS0 quiet ", 0), 0u) << append[1];
  EXPECT_NE(append[1].find("root=/dev/vmsynth-kvm-probe"), std::string::npos) << append[1];
  EXPECT_NE(append[1].find("panic=-1"), std::string::npos) << append[1];
  EXPECT_NE(append[1].find("ignore_loglevel"), std::string::npos) << append[1];
}

TEST_F(KvmProbe, KernelReachingTheRootMountMeansKvm) {
  // What a working KVM prints at the end of the probe boot (then QEMU exits:
  // panic=-1 + -no-reboot); the fake hangs instead, so only the line counts.
  fake::write_probe_qemu(bin_, std::string(kEddLine) +
                                   "[    0.400000] VFS: Cannot open root device \"vmsynth-kvm-probe\" or "
                                   "unknown-block(0,0): error -6\r\n"
                                   "[    0.400100] Kernel panic - not syncing: VFS: Unable to mount root fs on "
                                   "unknown-block(0,0)\r\n");
  KvmProbeResult r = probe(milliseconds(60000));
  EXPECT_TRUE(r.kvm_ok) << r.reason;
  EXPECT_NE(r.reason.find("VFS: Unable to mount root fs"), std::string::npos) << r.reason;
}

TEST_F(KvmProbe, RootwaitAndBuiltInInitramfsAlsoCount) {
  fake::write_probe_qemu(bin_, "[    0.4] Waiting for root device /dev/vmsynth-kvm-probe...\r\n");
  EXPECT_TRUE(probe(milliseconds(60000)).kvm_ok);
  fake::write_probe_qemu(bin_, "[    0.4] Run /init as init process\r\n");
  EXPECT_TRUE(probe(milliseconds(60000)).kvm_ok);
}

TEST_F(KvmProbe, PanicAfterTheMountLineButQemuExitedStillCounts) {
  // A real working KVM: the guest panics, resets, and -no-reboot ends QEMU
  // with status 0; the line is in the log by the time QEMU is gone.
  fake::write_probe_qemu(bin_, "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n",
                         0);
  EXPECT_TRUE(probe(milliseconds(60000)).kvm_ok);
}

TEST_F(KvmProbe, QemuExitingEarlyMeansTcg) {
  fake::write_probe_qemu(bin_, "", 1);
  KvmProbeResult r = probe(milliseconds(60000));
  EXPECT_FALSE(r.kvm_ok);
  EXPECT_NE(r.reason.find("QEMU exited (exit status 1: fake qemu: exiting)"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("wrote nothing"), std::string::npos) << r.reason;

  // Output, then an exit before the mount line: still no progress.
  fake::write_probe_qemu(bin_, kEddLine, 0);
  r = probe(milliseconds(60000));
  EXPECT_FALSE(r.kvm_ok);
  EXPECT_NE(r.reason.find("no progress past 'Probing EDD"), std::string::npos) << r.reason;
}

TEST_F(KvmProbe, CreateWithAccelAutoRecordsTheProbeVerdict) {
  if (::access("/dev/kvm", R_OK | W_OK) != 0) {
    GTEST_SKIP() << "/dev/kvm is not usable here, so create_vm chooses TCG before probing";
  }
  if (!find_program("qemu-img")) GTEST_SKIP() << "qemu-img not installed (apt-get install -y qemu-utils)";
  fake::write_probe_qemu(bin_, kEddLine);
  ASSERT_EQ(run_process({"qemu-img", "create", "-q", "-f", "raw", t_.path() + "/src.img", "1M"}, milliseconds(30000))
                .exit_code,
            0);
  CreateOptions o;
  o.out_dir = t_.path() + "/created";
  o.disk_image = t_.path() + "/src.img";
  o.memory_mib = 64;
  o.kernel = vm_ + "/kernel";
  o.kvm_probe_timeout = milliseconds(1000);
  CreateResult r;
  {
    PathPrefix path(bin_);
    r = create_vm(o);
  }
  EXPECT_EQ(r.accel, Accel::kTcg);
  EXPECT_NE(r.accel_reason.find("no progress"), std::string::npos) << r.accel_reason;
  std::ifstream f(o.out_dir + "/vm.json");
  auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j["machine"]["accelerator"], "tcg");
  EXPECT_EQ(j["machine"]["accelerator_reason"], r.accel_reason);

  fake::write_probe_qemu(bin_, "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n");
  o.force = true;
  o.kvm_probe_timeout = milliseconds(60000);
  {
    PathPrefix path(bin_);
    r = create_vm(o);
  }
  EXPECT_EQ(r.accel, Accel::kKvm) << r.accel_reason;
}

}  // namespace
}  // namespace vmsynth::vm
