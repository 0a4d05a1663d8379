// MdnsSandbox: a private D-Bus system bus and a real avahi-daemon for one test.
//
// dbus-daemon runs with its own configuration (tests' temp dir, a unix socket
// there, a policy that lets avahi own org.freedesktop.Avahi); the test process
// and every child it starts reach it through $DBUS_SYSTEM_BUS_ADDRESS, which
// the sandbox sets. avahi-daemon runs in its own network and mount namespaces
// (`unshare --net --mount`): only `lo` exists there, brought up with
// multicast, so nothing is sent to or heard from the host's networks; /run is a
// private tmpfs, so its pid file and socket (/run/avahi-daemon/) never meet a
// system avahi-daemon's and vanish with the namespace. Configuration: IPv4
// only (IPv6 multicast on a lone lo does not loop back), no wide-area, host
// name "vmsynth-test".
//
// libdbus reads $DBUS_SYSTEM_BUS_ADDRESS once per process, so the bus socket
// has one path for the whole test process (process_bus_dir()); each sandbox's
// dbus-daemon listens there in turn.
//
// Needs root (namespaces, mounts). Every wait is bounded; the destructor stops
// both daemons (SIGTERM, then SIGKILL after 5 s) and reaps them.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "testutil/temp_dir.h"

namespace vmsynth::testutil {

// A child process whose stdout and stderr go to a log file; killed and reaped on destruction.
class Daemon {
 public:
  Daemon() = default;
  Daemon(const std::vector<std::string>& argv, const std::string& log) : log_(log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      // Dies with the test process, however that ends.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Daemon() { stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  bool running() {
    if (pid_ <= 0) return false;
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }

  // SIGTERM, up to 5 s for it to exit, then SIGKILL; reaps it.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100 && running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  std::string log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  // Waits up to `timeout` for `text` in the log; false if it does not appear or the process dies.
  bool wait_for_log(const std::string& text, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (log().find(text) != std::string::npos) return true;
      if (!running()) return log().find(text) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// The directory of this process's bus socket, removed at exit.
inline const TempDir& process_bus_dir() {
  static const TempDir dir("vmsynth-mdns-bus");
  return dir;
}

class MdnsSandbox {
 public:
  MdnsSandbox() : dir_("vmsynth-mdns") {
    bus_socket_ = process_bus_dir().sub("bus");
    bus_address_ = "unix:path=" + bus_socket_;
    std::ofstream(dir_.sub("bus.conf"))
        << R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>)"
        << bus_address_ << R"(</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="org.freedesktop.Avahi"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
)";
    std::ofstream(dir_.sub("avahi-daemon.conf")) << R"([server]
host-name=vmsynth-test
domain-name=local
use-ipv4=yes
use-ipv6=no
allow-interfaces=lo
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
)";
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address_.c_str(), 1);
  }

  // Whether this process may create the namespaces avahi-daemon runs in.
  static bool can_run() { return ::geteuid() == 0; }

  // Starts the private bus; false (with the log in why()) if it is not up within 10 s.
  bool start_bus() {
    std::filesystem::remove(bus_socket_);
    bus_ = std::make_unique<Daemon>(
        std::vector<std::string>{"dbus-daemon", "--config-file=" + dir_.sub("bus.conf"), "--nofork", "--nopidfile"},
        dir_.sub("dbus.log"));
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < end && bus_->running()) {
      if (std::filesystem::exists(bus_socket_)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    why_ = "dbus-daemon did not start: " + bus_->log();
    return false;
  }

  // Starts avahi-daemon in its namespaces; true once it has announced itself (within 15 s).
  bool start_avahi() {
    const std::string setup =
        "set -e; mount -t tmpfs -o mode=0755 vmsynth-test-run /run; mkdir /run/avahi-daemon; "
        "ip link set lo up; ip link set lo multicast on; "
        "exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f '" +
        dir_.sub("avahi-daemon.conf") + "'";
    avahi_ = std::make_unique<Daemon>(
        std::vector<std::string>{"unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", setup},
        dir_.sub("avahi.log"));
    if (avahi_->wait_for_log("Server startup complete", std::chrono::seconds(15))) return true;
    why_ = "avahi-daemon did not start: " + avahi_->log();
    return false;
  }

  bool start() { return start_bus() && start_avahi(); }

  void stop_avahi() {
    if (avahi_) avahi_->stop();
  }

  const std::string& why() const { return why_; }
  const std::string& bus_address() const { return bus_address_; }
  const TempDir& dir() const { return dir_; }
  std::string avahi_log() const { return avahi_ ? avahi_->log() : ""; }

  ~MdnsSandbox() {
    avahi_.reset();
    bus_.reset();
    std::error_code ec;
    std::filesystem::remove(bus_socket_, ec);
  }

 private:
  TempDir dir_;
  std::string bus_socket_;
  std::string bus_address_;
  std::unique_ptr<Daemon> bus_;
  std::unique_ptr<Daemon> avahi_;
  std::string why_;
};

}  // namespace vmsynth::testutil
