// End to end under TCG with the real `vmsynth` binary and the tiny Debian test
// guest (tests/guest/build-guest.sh): create + start + capture a base, resume
// it on a work clone until the guest's "app" has started, capture that as the
// launch VM, make an overlay, synthesize, resume the synthesized VM and check
// from its serial console that it continues from the launch state.
//
// Takes about a minute (TCG boot ~4 s, the app starts at counter 12 = ~6 s).
// Skipped when qemu-system-x86_64 is not installed. Select with
// --gtest_filter='VmEndToEnd*' or `ctest -L vm`. The guest downloads are
// cached under ${VMSYNTH_CACHE:-$HOME/.cache/vmsynth}/guest.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "vm/machine_spec.h"
#include "vm/subprocess.h"

namespace vmsynth::vm {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kAppAt = 12;  // guest counter value at which the "app" starts

ProcessResult vmsynth(std::vector<std::string> args, milliseconds timeout = milliseconds(120000)) {
  args.insert(args.begin(), VMSYNTH_BIN);
  return run_process(args, timeout);
}

// Runs vmsynth with --json and returns the parsed object; fails the test on error.
nlohmann::json vmsynth_json(std::vector<std::string> args) {
  args.push_back("--json");
  ProcessResult r = vmsynth(args);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  return j.is_discarded() ? nlohmann::json::object() : j;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Serial console lines (the guest ends them with \r\n).
std::vector<std::string> serial_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(read_text(path));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// The n of every line that is exactly "COUNTER n". Parsed by hand: std::regex
// drags in libstdc++'s regex compiler, whose inlined _State move constructor
// GCC 12 flags with -Wmaybe-uninitialized under -fsanitize=address (GCC bug
// 105616, a false positive in the library), 14 warnings in the ASan build.
std::vector<int> counters(const std::string& serial) {
  std::vector<int> v;
  constexpr std::string_view kPrefix = "COUNTER ";
  for (const auto& l : serial_lines(serial)) {
    std::string_view s = l;
    if (!s.starts_with(kPrefix)) continue;
    s.remove_prefix(kPrefix.size());
    int n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec == std::errc() && end == s.data() + s.size() && !s.empty() && s.front() != '-') v.push_back(n);
  }
  return v;
}

bool contains_line(const std::string& serial, const std::string& needle) {
  for (const auto& l : serial_lines(serial)) {
    if (l.find(needle) != std::string::npos) return true;
  }
  return false;
}

// Waits until serial.log has a line containing `needle`.
bool wait_for_line(const std::string& serial, const std::string& needle, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (contains_line(serial, needle)) return true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  return false;
}

// Stops every VM the test may have started, even when an assertion fails.
class VmReaper {
 public:
  void watch(const std::string& dir) { dirs_.push_back(dir); }
  ~VmReaper() {
    for (const auto& d : dirs_) {
      if (!fs::exists(d + "/qemu.pid")) continue;
      try {
        vmsynth({"vm", "stop", d}, milliseconds(20000));
      } catch (...) {
      }
      std::ifstream pf(d + "/qemu.pid");  // still there: kill by pid
      pid_t pid = 0;
      if (pf >> pid && pid > 0) ::kill(pid, SIGKILL);
    }
  }

 private:
  std::vector<std::string> dirs_;
};

// A temporary directory, removed at the end (short path: unix sockets are limited to 107 bytes).
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/vmsynth-e2e-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    if (std::getenv("VMSYNTH_KEEP_TEST_DIR") == nullptr) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(VmEndToEnd, CaptureResumeOverlaySynthesizeResume) {
  if (!find_program("qemu-system-x86_64") || !find_program("qemu-img")) {
    GTEST_SKIP() << "qemu-system-x86_64 / qemu-img not installed (apt-get install -y qemu-system-x86 "
                    "qemu-utils)";
  }
  TempDir t;
  VmReaper reaper;

  // 1. The guest, and its disk as qcow2 so that `vm create` must convert it.
  const std::string guest = t / "guest";
  ProcessResult g = run_process({"sh", std::string(VMSYNTH_SOURCE_DIR) + "/tests/guest/build-guest.sh", guest},
                                milliseconds(600000));
  ASSERT_EQ(g.exit_code, 0) << "building the test guest failed:\n" << g.out << g.err;
  ASSERT_EQ(run_process({"qemu-img", "convert", "-O", "qcow2", guest + "/disk.img", t / "disk.qcow2"},
                        milliseconds(60000))
                .exit_code,
            0);
  const std::string append = read_text(guest + "/append.txt");
  std::string cmdline = append.substr(0, append.find('\n')) + " vmsynth.app_at=" + std::to_string(kAppAt);

  // 2. create + start, wait for the counter, capture the base.
  const std::string vmd = t / "vm", base = t / "base";
  auto created = vmsynth_json({"vm", "create", "--out", vmd, "--disk", t / "disk.qcow2", "--memory-mib", "128",
                               "--kernel", guest + "/vmlinuz", "--initrd", guest + "/initrd.img", "--append",
                               cmdline, "--accel", "tcg"});
  EXPECT_EQ(created.value("disk_converted", false), true);
  EXPECT_EQ(created.value("accelerator", ""), "tcg");
  reaper.watch(vmd);
  vmsynth_json({"vm", "start", vmd});
  EXPECT_EQ(vmsynth({"vm", "start", vmd}).exit_code, 8) << "starting twice must say 'already running'";
  ASSERT_TRUE(wait_for_line(vmd + "/serial.log", "COUNTER 3", seconds(180))) << read_text(vmd + "/serial.log");
  auto cap = vmsynth_json({"vm", "capture", vmd, "--out", base});
  EXPECT_GT(cap.value("capture_ms", 0.0), 0.0);
  EXPECT_EQ(cap.value("vm_state", ""), "paused");
  vmsynth_json({"vm", "stop", vmd});
  EXPECT_NE(vmsynth({"vm", "stop", vmd}).exit_code, 0) << "stopping a stopped VM must fail";
  const int base_counter = counters(vmd + "/serial.log").back();
  ASSERT_LT(base_counter, kAppAt) << "the base must be captured before the app starts";
  ASSERT_TRUE(contains_line(vmd + "/serial.log", "VMSYNTH-GUEST BOOT"));
  for (const char* f : {"disk.img", "memory.img", "devstate.bin", "vm.json"}) {
    EXPECT_TRUE(fs::exists(base + "/" + f)) << f;
  }
  const std::string base_mem_hash = sha256_file(base + "/memory.img");
  const std::string base_disk_hash = sha256_file(base + "/disk.img");

  // 3. Resume the base on a work clone; it goes on counting and starts the app.
  const std::string work = t / "w", launch = t / "launch";
  reaper.watch(work);
  auto res = vmsynth_json({"vm", "resume", base, "--work", work});
  EXPECT_GT(res.value("resume_ms", 0.0), 0.0);
  ASSERT_TRUE(wait_for_line(work + "/serial.log", "app=running marker=present", seconds(120)))
      << read_text(work + "/serial.log");
  {
    auto c = counters(work + "/serial.log");
    ASSERT_FALSE(c.empty());
    EXPECT_EQ(c.front(), base_counter + 1) << "the resumed base must continue its counter";
    EXPECT_FALSE(contains_line(work + "/serial.log", "VMSYNTH-GUEST BOOT")) << "resumed, not booted";
    EXPECT_TRUE(contains_line(work + "/serial.log", "APP STARTED"));
  }
  vmsynth_json({"vm", "capture", work, "--out", launch});
  vmsynth_json({"vm", "stop", work});
  const int launch_counter = counters(work + "/serial.log").back();
  EXPECT_GE(launch_counter, kAppAt);
  EXPECT_EQ(sha256_file(base + "/memory.img"), base_mem_hash) << "--work must leave the base pristine";
  EXPECT_EQ(sha256_file(base + "/disk.img"), base_disk_hash) << "--work must leave the base pristine";

  // 4. Overlay and synthesis (the lead's commands).
  const std::string vmo = t / "app.vmo", synth = t / "synth";
  ProcessResult oc = vmsynth({"overlay", "create", "--base", base, "--launch", launch, "-o", vmo});
  ASSERT_EQ(oc.exit_code, 0) << oc.out << oc.err;
  ProcessResult sy = vmsynth({"synthesize", "--base", base, "--overlay", vmo, "--out", synth});
  ASSERT_EQ(sy.exit_code, 0) << sy.out << sy.err;
  EXPECT_EQ(sha256_file(synth + "/memory.img"), sha256_file(launch + "/memory.img"));
  EXPECT_EQ(sha256_file(synth + "/disk.img"), sha256_file(launch + "/disk.img"));

  // 5. Resume the synthesized VM: it continues from the launch state.
  const std::string run = t / "s";
  reaper.watch(run);
  vmsynth_json({"vm", "resume", synth, "--work", run, "--boot-files", base});
  ASSERT_TRUE(wait_for_line(run + "/serial.log", "STATUS", seconds(60))) << read_text(run + "/serial.log");
  {
    auto c = counters(run + "/serial.log");
    ASSERT_FALSE(c.empty());
    EXPECT_EQ(c.front(), launch_counter + 1) << "the synthesized VM must continue the launch VM's counter";
    EXPECT_FALSE(contains_line(run + "/serial.log", "VMSYNTH-GUEST BOOT")) << "no boot messages again";
    EXPECT_FALSE(contains_line(run + "/serial.log", "APP STARTED")) << "the app was started before capture";
    EXPECT_TRUE(contains_line(run + "/serial.log", "app=running marker=present"))
        << "the second process and the file written on disk must be there";
  }
  vmsynth_json({"vm", "stop", run});

  // 5b. `synthesize --launch`: synthesis and resume in one command, the VM
  //     running in the output directory itself.
  const std::string synth_run = t / "sl";
  reaper.watch(synth_run);
  auto sl = vmsynth_json({"synthesize", "--base", base, "--overlay", vmo, "--out", synth_run, "--launch"});
  ASSERT_TRUE(sl.contains("launch")) << sl.dump();
  std::cout << "synthesize --launch: first overlay byte to running guest "
            << sl["launch"].value("first_byte_to_running_ms", 0.0) << " ms (resume "
            << sl["launch"].value("resume_ms", 0.0) << " ms, " << sl["launch"].value("accelerator", "") << ")\n";
  EXPECT_GT(sl["launch"].value("first_byte_to_running_ms", 0.0), sl["launch"].value("resume_ms", 0.0));
  ASSERT_TRUE(wait_for_line(synth_run + "/serial.log", "STATUS", seconds(60))) << read_text(synth_run + "/serial.log");
  {
    auto c = counters(synth_run + "/serial.log");
    ASSERT_FALSE(c.empty());
    EXPECT_EQ(c.front(), launch_counter + 1) << "synthesize --launch must continue the launch VM's counter";
    EXPECT_FALSE(contains_line(synth_run + "/serial.log", "VMSYNTH-GUEST BOOT")) << "no boot messages again";
  }
  vmsynth_json({"vm", "stop", synth_run});

  // 5c. The same with a qcow2 launch disk: only the changed blocks, backed by
  //     the base's disk.img, which QEMU opens read-only and must not change.
  //     The VM runs from disk.qcow2 in place and can itself be captured.
  const std::string synth_q = t / "sq";
  reaper.watch(synth_q);
  auto sq = vmsynth_json({"synthesize", "--base", base, "--overlay", vmo, "--out", synth_q, "--launch",
                          "--disk-format", "qcow2"});
  EXPECT_EQ(sq.value("disk_format", ""), "qcow2");
  EXPECT_FALSE(fs::exists(synth_q + "/disk.img"));
  EXPECT_LT(fs::file_size(synth_q + "/disk.qcow2"), fs::file_size(base + "/disk.img"));
  ASSERT_TRUE(wait_for_line(synth_q + "/serial.log", "STATUS", seconds(60))) << read_text(synth_q + "/serial.log");
  {
    auto c = counters(synth_q + "/serial.log");
    ASSERT_FALSE(c.empty());
    EXPECT_EQ(c.front(), launch_counter + 1) << "a qcow2 launch disk must continue the launch VM's counter";
    EXPECT_FALSE(contains_line(synth_q + "/serial.log", "VMSYNTH-GUEST BOOT")) << "no boot messages again";
    EXPECT_TRUE(contains_line(synth_q + "/serial.log", "app=running marker=present"))
        << "the file written on the launch disk must be read through disk.qcow2";
  }
  vmsynth_json({"vm", "capture", synth_q, "--out", t / "recaptured"});
  vmsynth_json({"vm", "stop", synth_q});
  EXPECT_TRUE(fs::exists(t / "recaptured" + "/disk.img")) << "capture flattens the qcow2 disk to raw";
  EXPECT_EQ(sha256_file(base + "/disk.img"), base_disk_hash) << "the backing base disk must stay unchanged";

  // 6. Cluster case: two copy-on-write clones of the launch VM at once; such
  //    clones cannot be captured (exit code 7 = unsupported).
  for (const char* name : {"c1", "c2"}) {
    reaper.watch(t / name);
    vmsynth_json({"vm", "resume", launch, "--work", t / name, "--shared-memory"});
  }
  for (const char* name : {"c1", "c2"}) {
    EXPECT_TRUE(wait_for_line(t / name + "/serial.log", "COUNTER " + std::to_string(launch_counter + 2),
                              seconds(60)))
        << name;
  }
  EXPECT_EQ(vmsynth({"vm", "capture", t / "c1", "--out", t / "nope"}).exit_code, 7);
  for (const char* name : {"c1", "c2"}) vmsynth_json({"vm", "stop", t / name});
  EXPECT_EQ(sha256_file(launch + "/memory.img"), sha256_file(synth + "/memory.img"))
      << "share=off clones must not write the VM's memory.img";
}

TEST(VmCli, ClearErrors) {
  TempDir t;
  // Not a VM directory: usage error (2) naming vm.json.
  for (const char* cmd : {"start", "stop"}) {
    ProcessResult r = vmsynth({"vm", cmd, t.path()});
    EXPECT_EQ(r.exit_code, 2) << cmd << ": " << r.err;
    EXPECT_FALSE(r.err.empty());
  }
  ProcessResult r = vmsynth({"vm", "resume", t.path(), "--json"});
  EXPECT_EQ(r.exit_code, 2);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["error"]["code"], "usage");
  // status too: "not running" would hide a wrong path (vm_cli_test.cc has more).
  ProcessResult s = vmsynth({"vm", "status", t.path(), "--json"});
  EXPECT_EQ(s.exit_code, 2) << s.out;
  EXPECT_NE(s.out.find("not a VM directory"), std::string::npos) << s.out;
}

}  // namespace
}  // namespace vmsynth::vm
