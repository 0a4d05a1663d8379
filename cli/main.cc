// vmsynth command-line entry point: dispatches to the subcommands and maps
// vmsynth::Error to a message and an exit status.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "common/error.h"
#include "vmsynth/version.h"

namespace {

bool wants_json(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) return true;
  }
  return false;
}

// The exit status of a bug: nothing a user did, and not one of the codes
// common/error.h gives meaning to (EX_SOFTWARE from sysexits.h).
constexpr int kInternalError = 70;

// An exception that escapes a thread, or a noexcept function, ends in
// std::terminate; say so plainly instead of abort()'s core dump and 134, and
// remove what the command staged (no destructor will).
[[noreturn]] void on_terminate() {
  // Several worker threads may fail at once: the first one speaks and exits.
  static std::atomic<bool> once{false};
  if (once.exchange(true)) {
    for (;;) ::pause();
  }
  const char* what = "unknown exception";
  std::string text;
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      text = x.what();
      what = text.c_str();
    } catch (...) {
    }
  } else {
    what = "std::terminate without an exception";
  }
  std::fprintf(stderr, "vmsynth: internal error: %s\n", what);
  vmsynth::cli::remove_own_staging();
  std::_Exit(kInternalError);
}

int report(const vmsynth::Error& e, bool json) {
  if (json) {
    nlohmann::json j = {{"ok", false},
                        {"error", {{"code", std::string(vmsynth::error_code_name(e.code()))},
                                   {"message", e.message()},
                                   {"context", e.context()}}}};
    std::printf("%s\n", j.dump(2).c_str());
  }
  if (e.code() == vmsynth::ErrorCode::kInterrupted) {
    if (int sig = vmsynth::cli::interrupting_signal(); sig != 0) {
      const char* abbrev = sigabbrev_np(sig);
      std::fprintf(stderr, "vmsynth: interrupted by SIG%s: %s\n", abbrev ? abbrev : "NAL", e.message().c_str());
      return static_cast<int>(e.code());
    }
  }
  std::fprintf(stderr, "vmsynth: error: %s\n", e.what());
  return static_cast<int>(e.code());
}

}  // namespace

int main(int argc, char** argv) {
  std::set_terminate(on_terminate);
  CLI::App app{
      "vmsynth: dynamic VM synthesis for cloudlets.\n"
      "Creates small VM overlays (launch VM minus base VM) and synthesizes launch VMs from them.",
      "vmsynth"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vmsynth " VMSYNTH_VERSION_STRING);
  vmsynth::cli::add_gen_pair_command(app);
  vmsynth::cli::add_overlay_commands(app);
  vmsynth::cli::add_synthesize_command(app);
  vmsynth::cli::add_vm_commands(app);
  vmsynth::cli::add_cache_commands(app);
  vmsynth::cli::add_discover_command(app);
  vmsynth::cli::add_push_command(app);

  const bool json = wants_json(argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every real usage error exits with kUsage.
    return app.exit(e) == 0 ? 0 : static_cast<int>(vmsynth::ErrorCode::kUsage);
  } catch (const vmsynth::cli::CommandFailed& f) {
    return f.status;
  } catch (const vmsynth::Error& e) {
    return report(e, json);
  } catch (const std::bad_alloc&) {
    return report(vmsynth::Error(vmsynth::ErrorCode::kIo, "out of memory"), json);
  } catch (const std::exception& e) {
    // Anything else is a bug in vmsynth; say so rather than pretend it is the user's fault.
    std::fprintf(stderr, "vmsynth: internal error: %s\n", e.what());
    return kInternalError;
  } catch (...) {
    std::fprintf(stderr, "vmsynth: internal error: an exception that is not a std::exception\n");
    return kInternalError;
  }
  return 0;
}
