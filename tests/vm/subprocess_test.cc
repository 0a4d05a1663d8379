// Subprocess / run_process: exit codes, captured output, timeouts, quoting.
#include "vm/subprocess.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace vmsynth::vm {
namespace {

using std::chrono::milliseconds;

TEST(Subprocess, CapturesOutputAndExitCode) {
  auto r = run_process({"sh", "-c", "echo out; echo err >&2; exit 3"}, milliseconds(5000));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_NE(r.describe().find("err"), std::string::npos);
  EXPECT_THROW(run_checked({"false"}, milliseconds(5000), "false"), Error);
}

TEST(Subprocess, MissingProgramIsUnsupported) {
  try {
    run_process({"vmsynth-no-such-program"}, milliseconds(1000));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
}

TEST(Subprocess, TimeoutKillsTheChild) {
  EXPECT_THROW(run_process({"sleep", "10"}, milliseconds(100)), Error);
}

TEST(Subprocess, ShellQuoteSurvivesTheShell) {
  const std::string nasty = "a b'c\"$(touch /tmp/x)`;\\";
  auto r = run_process({"sh", "-c", "printf %s " + shell_quote(nasty)}, milliseconds(5000));
  EXPECT_EQ(r.out, nasty);
}

}  // namespace
}  // namespace vmsynth::vm
