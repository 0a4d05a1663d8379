// Fake qemu-system-x86_64 executables for tests that must control what "QEMU"
// does: vmsynth finds QEMU through PATH (find_program, posix_spawnp), so a
// directory holding one of these scripts, put first in PATH, replaces it.
//
// write_probe_qemu(): a /bin/sh script for the foreground KVM probe. It
// records its arguments (one a line) in DIR/args, appends the given text to
// the serial log named by `-chardev file,id=ser0,path=...`, then either hangs
// (exec sleep, so killing the pid ends it) or exits with a status. It
// answers --version. Header-only; the caller owns DIR.
#pragma once

#include <sys/stat.h>

#include <fstream>
#include <string>

namespace vmsynth::vm::fake {

inline void write_executable(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::trunc);
    f << text;
  }
  ::chmod(path.c_str(), 0755);
}

// Single-quotes `s` for sh: any bytes but a single quote, which the tests never use.
inline std::string quoted(const std::string& s) { return "'" + s + "'"; }

// then_exit < 0: hang after printing; otherwise exit with that status.
inline void write_probe_qemu(const std::string& dir, const std::string& serial_text, int then_exit = -1) {
  std::string sh = "#!/bin/sh\n"
                   "# fake qemu-system-x86_64 (vmsynth tests): KVM probe\n"
                   "case \"$1\" in --version) echo 'QEMU emulator version 7.2.0 (vmsynth test fake)'; exit 0;; esac\n"
                   "printf '%s\\n' \"$@\" > " + quoted(dir + "/args") + "\n"
                   "serial=\n"
                   "for a in \"$@\"; do\n"
                   "  case \"$a\" in file,id=ser0,path=*) serial=${a#file,id=ser0,path=}; serial=${serial%%,*};; esac\n"
                   "done\n"
                   "[ -n \"$serial\" ] || { echo 'fake qemu: no ser0 chardev' >&2; exit 1; }\n"
                   "printf %s " + quoted(serial_text) + " >> \"$serial\"\n";
  sh += then_exit < 0 ? "exec sleep 300\n" : "echo 'fake qemu: exiting' >&2; exit " + std::to_string(then_exit) + "\n";
  write_executable(dir + "/qemu-system-x86_64", sh);
}

}  // namespace vmsynth::vm::fake
