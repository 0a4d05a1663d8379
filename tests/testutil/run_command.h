// run_command: runs a shell command line, returns its exit status and its
// stdout and stderr together. For tests that check files with outside tools
// (qemu-img, cmp). Quote paths in the command yourself.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace vmsynth::testutil {

struct CommandResult {
  int exit_code = -1;  // -1: could not run or killed by a signal
  std::string output;
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

inline bool have_program(const std::string& name) {
  return run_command("command -v '" + name + "'").exit_code == 0;
}

}  // namespace vmsynth::testutil
