// vmsynth_publish_helper NAME PORT [BASE_ID...]: a Publisher in a process of
// its own, for tests that need one on another avahi-daemon (libdbus reads
// $DBUS_SYSTEM_BUS_ADDRESS once per process). Prints "established <name>" once
// the service is on the network and each notice as "notice <text>", then runs
// until SIGTERM (withdrawing the service); exits 1 if not established within 15 s.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cloudlet/discovery.h"
#include "common/error.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s NAME PORT [BASE_ID...]\n", argv[0]);
    return 2;
  }
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);  // the publisher's thread inherits the mask
  try {
    vmsynth::cloudlet::Publisher::Options o;
    o.name = argv[1];
    o.port = static_cast<std::uint16_t>(std::atoi(argv[2]));
    o.base_ids.assign(argv + 3, argv + argc);
    o.notice = [](const std::string& text) {
      std::printf("notice %s\n", text.c_str());
      std::fflush(stdout);
    };
    vmsynth::cloudlet::Publisher p(std::move(o));
    if (!p.wait_established(std::chrono::seconds(15))) {
      std::printf("not established\n");
      return 1;
    }
    std::printf("established %s\n", p.name().c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&term, &sig);  // the Publisher withdraws the service on the way out
  } catch (const vmsynth::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
