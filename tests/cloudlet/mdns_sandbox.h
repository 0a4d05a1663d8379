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
// MdnsLink is the two-host variant: two buses and two avahi-daemons in two
// namespaces joined by a veth pair, for collisions on the network.
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
  pid_t pid() const { return pid_; }
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

// A dbus-daemon configuration listening on `address` that lets avahi own its name.
inline void write_bus_conf(const std::string& path, const std::string& address) {
  std::ofstream(path) << R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>)" << address
                      << R"(</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="org.freedesktop.Avahi"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
)";
}

inline void write_avahi_conf(const std::string& path, const std::string& host_name, const std::string& interface) {
  std::ofstream(path) << "[server]\nhost-name=" << host_name << "\ndomain-name=local\nuse-ipv4=yes\nuse-ipv6=no\n"
                      << "allow-interfaces=" << interface << "\nenable-dbus=yes\n"
                      << "ratelimit-interval-usec=1000000\nratelimit-burst=1000\n"
                      << "[wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n";
}

// Starts dbus-daemon listening on unix socket `socket`; nullptr (and `why`) if not up within 10 s.
inline std::unique_ptr<Daemon> start_bus(const TempDir& dir, const std::string& tag, const std::string& socket,
                                         std::string& why) {
  std::filesystem::remove(socket);
  write_bus_conf(dir.sub(tag + ".conf"), "unix:path=" + socket);
  auto bus = std::make_unique<Daemon>(
      std::vector<std::string>{"dbus-daemon", "--config-file=" + dir.sub(tag + ".conf"), "--nofork", "--nopidfile"},
      dir.sub(tag + ".log"));
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < end && bus->running()) {
    if (std::filesystem::exists(socket)) return bus;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  why = "dbus-daemon did not start: " + bus->log();
  return nullptr;
}

// Forks avahi-daemon (config `conf`, bus `bus_address`) inside a new network
// and mount namespace, after `setup` (shell commands run there first, as root
// of that namespace). Does not wait for it.
inline std::unique_ptr<Daemon> spawn_avahi(const std::string& conf, const std::string& bus_address,
                                           const std::string& setup, const std::string& log) {
  const std::string script =
      "set -e; mount -t tmpfs -o mode=0755 vmsynth-test-run /run; mkdir /run/avahi-daemon; "
      "ip link set lo up; ip link set lo multicast on; " +
      setup + "exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f '" + conf + "'";
  return std::make_unique<Daemon>(
      std::vector<std::string>{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + bus_address, "unshare", "--net", "--mount",
                               "--propagation", "private", "sh", "-c", script},
      log);
}

constexpr std::chrono::seconds kAvahiStartTimeout{15};

// One avahi-daemon on lo, on the process's bus.
class MdnsSandbox {
 public:
  MdnsSandbox() : dir_("vmsynth-mdns") {
    bus_socket_ = process_bus_dir().sub("bus");
    bus_address_ = "unix:path=" + bus_socket_;
    write_avahi_conf(dir_.sub("avahi-daemon.conf"), "vmsynth-test", "lo");
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address_.c_str(), 1);
  }

  // Whether this process may create the namespaces avahi-daemon runs in.
  static bool can_run() { return ::geteuid() == 0; }

  // Starts the private bus; false (with the log in why()) if it is not up within 10 s.
  bool start_bus() {
    bus_ = testutil::start_bus(dir_, "dbus", bus_socket_, why_);
    return bus_ != nullptr;
  }

  // Starts avahi-daemon in its namespaces; true once it has announced itself (within 15 s).
  bool start_avahi() {
    avahi_ = spawn_avahi(dir_.sub("avahi-daemon.conf"), bus_address_, "", dir_.sub("avahi.log"));
    if (avahi_->wait_for_log("Server startup complete", kAvahiStartTimeout)) return true;
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

// Two hosts on one link: avahi-daemon "vmsynth-a" (10.77.0.1, interface va,
// on the process's bus) and "vmsynth-b" (10.77.0.2, interface vb, on a bus of
// its own, bus_b_address()), each in its own network namespace, joined by a
// veth pair created straight into those namespaces (never in this one).
class MdnsLink {
 public:
  MdnsLink() : dir_("vmsynth-mdns-link") {
    bus_a_socket_ = process_bus_dir().sub("bus");
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", ("unix:path=" + bus_a_socket_).c_str(), 1);
  }

  bool start() {
    bus_a_ = start_bus(dir_, "dbus-a", bus_a_socket_, why_);
    if (!bus_a_) return false;
    bus_b_ = start_bus(dir_, "dbus-b", dir_.sub("bus-b"), why_);
    if (!bus_b_) return false;
    // Each side waits (up to 10 s) for its end of the link, gives it its address, then runs avahi.
    auto side = [&](const std::string& tag, const std::string& iface, const std::string& addr, const std::string& bus) {
      write_avahi_conf(dir_.sub(tag + ".conf"), "vmsynth-" + tag, iface);
      const std::string setup = "i=0; until ip link show " + iface +
                                " >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 200 ]; sleep 0.05; done; "
                                "ip addr add " +
                                addr + "/24 dev " + iface + "; ip link set " + iface + " up; ";
      return spawn_avahi(dir_.sub(tag + ".conf"), bus, setup, dir_.sub("avahi-" + tag + ".log"));
    };
    avahi_a_ = side("a", "va", "10.77.0.1", "unix:path=" + bus_a_socket_);
    avahi_b_ = side("b", "vb", "10.77.0.2", bus_b_address());
    const pid_t a = avahi_a_->pid(), b = avahi_b_->pid();
    if (!in_own_netns(a) || !in_own_netns(b)) {
      why_ = "avahi's network namespaces did not appear: " + avahi_a_->log() + avahi_b_->log();
      return false;
    }
    const std::string link =
        "ip link add va netns " + std::to_string(a) + " type veth peer name vb netns " + std::to_string(b) + " 2>&1";
    if (std::system(link.c_str()) != 0) {
      why_ = "cannot create the veth pair: " + link;
      return false;
    }
    for (auto* d : {avahi_a_.get(), avahi_b_.get()}) {
      if (!d->wait_for_log("Server startup complete", kAvahiStartTimeout)) {
        why_ = "avahi-daemon did not start: " + d->log();
        return false;
      }
    }
    return true;
  }

  std::string bus_b_address() const { return "unix:path=" + dir_.sub("bus-b"); }
  const std::string& why() const { return why_; }
  const TempDir& dir() const { return dir_; }
  std::string logs() const { return (avahi_a_ ? avahi_a_->log() : "") + "----\n" + (avahi_b_ ? avahi_b_->log() : ""); }

  ~MdnsLink() {
    avahi_a_.reset();
    avahi_b_.reset();
    bus_a_.reset();
    bus_b_.reset();
    std::error_code ec;
    std::filesystem::remove(bus_a_socket_, ec);
  }

 private:
  // Waits (up to 10 s) until `pid` is in a network namespace other than ours,
  // so that a link created "netns pid" can never land in this one.
  static bool in_own_netns(pid_t pid) {
    const auto ns = [](const std::string& p) {
      std::error_code ec;
      return std::filesystem::read_symlink(p, ec).string();
    };
    const std::string mine = ns("/proc/self/ns/net");
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < end) {
      const std::string theirs = ns("/proc/" + std::to_string(pid) + "/ns/net");
      if (!theirs.empty() && theirs != mine) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  TempDir dir_;
  std::string bus_a_socket_;
  std::unique_ptr<Daemon> bus_a_, bus_b_, avahi_a_, avahi_b_;
  std::string why_;
};

}  // namespace vmsynth::testutil
