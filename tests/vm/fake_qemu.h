// Fake qemu-system-x86_64 executables for tests that must control what "QEMU"
// does: vmsynth finds QEMU through PATH (find_program, posix_spawnp), so a
// directory holding one of these scripts, put first in PATH, replaces it.
//
// write_probe_qemu(): a /bin/sh script for the foreground KVM probe. It
// records its arguments (one a line) in DIR/args, appends the given text to
// the serial log named by `-chardev file,id=ser0,path=...`, then either hangs
// (exec sleep, so killing the pid ends it) or exits with a status.
//
// write_daemon_qemu(): a /usr/bin/python3 script for `vm start`: it
// daemonizes as QEMU does with -daemonize -pidfile (pidfile written and
// locked and the QMP socket listening before the parent exits), writes its
// daemon pid to DIR/daemon.pid, appends the given text (possibly none) to the
// serial log, and serves QMP (any command gets an empty or a "running"
// reply; `quit` ends it) until it is killed or 300 s have passed.
//
// Both answer --version. Header-only; the caller owns DIR.
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

// A Python string literal of `s` (ASCII).
inline std::string py_literal(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\\' || c == '\'') {
      q += '\\';
      q += c;
    } else if (c == '\n') {
      q += "\\n";
    } else if (c == '\r') {
      q += "\\r";
    } else {
      q += c;
    }
  }
  return q + "'";
}

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

inline void write_daemon_qemu(const std::string& dir, const std::string& serial_text) {
  std::string py = R"PY(#!/usr/bin/python3
# fake qemu-system-x86_64 (vmsynth tests): a daemonized VM serving QMP
import fcntl, json, os, signal, socket, sys
argv = sys.argv[1:]
if argv[:1] == ['--version']:
    print('QEMU emulator version 7.2.0 (vmsynth test fake)')
    sys.exit(0)
def value(flag, prefix=''):
    for i in range(len(argv) - 1):
        if argv[i] == flag and argv[i + 1].startswith(prefix):
            return argv[i + 1]
    return None
def chardev_path(prefix):
    v = value('-chardev', prefix) or ''
    for part in v.split(','):
        if part.startswith('path='):
            return part[5:]
    return None
serial = chardev_path('file,id=ser0')
qmp = chardev_path('socket,id=qmp')
pidfile = value('-pidfile')
if '-daemonize' not in argv or not (serial and qmp and pidfile):
    sys.exit('fake qemu: expected -daemonize, -pidfile and the ser0/qmp chardevs')
r, w = os.pipe()
if os.fork() > 0:
    os.close(w)
    sys.exit(0 if os.read(r, 1) == b'1' else 1)
os.close(r)
os.setsid()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(qmp)
srv.listen(1)
pf = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(pf, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(pf, 0)
os.write(pf, b'%d\n' % os.getpid())
with open(DIR + '/daemon.pid', 'w') as f:
    f.write('%d\n' % os.getpid())
devnull = os.open('/dev/null', os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)
log = open(serial, 'a')  # QEMU opens the chardev file at start, output or not
os.write(w, b'1')
os.close(w)
if SERIAL_TEXT:
    log.write(SERIAL_TEXT)
    log.flush()
signal.alarm(300)
while True:
    c, _ = srv.accept()
    c.sendall(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n')
    buf = b''
    while True:
        d = c.recv(4096)
        if not d:
            break
        buf += d
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            ret = {'status': 'running', 'running': True} if cmd.get('execute') == 'query-status' else {}
            c.sendall(json.dumps({'return': ret, 'id': cmd.get('id')}).encode() + b'\r\n')
            if cmd.get('execute') == 'quit':
                os.unlink(qmp)
                sys.exit(0)
    c.close()
)PY";
  const std::string header = "#!/usr/bin/python3\n";
  py.insert(header.size(), "DIR = " + py_literal(dir) + "\nSERIAL_TEXT = " + py_literal(serial_text) + "\n");
  write_executable(dir + "/qemu-system-x86_64", py);
}

}  // namespace vmsynth::vm::fake
