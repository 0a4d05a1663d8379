// `vmsynth synthesize`: base VM + overlay -> launch VM directory.

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/key_options.h"
#include "cli/library.h"
#include "cli/progress.h"
#include "cli/worker_pool.h"
#include "common/enum_names.h"
#include "common/error.h"
#include "engine/synthesis.h"
#include "engine/threads.h"
#include "vm/vm_control.h"

namespace vmsynth::cli {


void add_synthesize_command(CLI::App& app) {
  struct Args {
    std::string base, overlay, out, engine = "parallel", clone = "auto", disk_format = "raw",
                write_backend = "io_uring";
    unsigned threads = 0, queue_depth = 64;
    uint64_t memory_budget_mib = 256;
    bool force = false, json = false, no_uring = false, launch = false, quiet = false;
    KeyOptions key;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("synthesize", "Apply an overlay to a base VM, producing the launch VM.");
  c->add_option("--base", args->base, "Base VM directory; only read")->required();
  c->add_option("--overlay", args->overlay,
                "Overlay: a file, - for standard input, tcp://HOST:PORT to connect, or tcp-listen://HOST:PORT to "
                "accept one connection")
      ->required();
  c->add_option("--out", args->out, "Launch VM directory to create (built under a temporary name, then renamed)")
      ->required();
  c->add_option("--engine", args->engine, "parallel (oneTBB flow graph, io_uring writes; default) or serial (one thread, the reference)")
      ->check(CLI::IsMember({"serial", "parallel"}));
  c->add_option("--threads", args->threads,
                "Parallel engine worker threads, 0-" + std::to_string(kMaxThreads) +
                    "; 0 = one per core (default). The serial engine runs on one thread and refuses more")
      ->check(CLI::Range(0u, kMaxThreads));
  c->add_option("--clone", args->clone,
                "How output images start from the base: auto (default), reflink, copy-range, read-write")
      ->check(CLI::IsMember(enum_name_list<io::CloneMethod>()));
  c->add_option("--disk-format", args->disk_format,
                "Launch disk: raw (default; disk.img, a full copy of the base disk plus the changed blocks) or "
                "qcow2 (disk.qcow2: only the changed blocks, backed by the base's disk.img, which is not copied; "
                "the base disk must then stay in place and unchanged while the launch VM exists)")
      ->check(CLI::IsMember(enum_name_list<DiskFormat>()));
  CLI::Option* backend = c->add_option("--write-backend", args->write_backend,
                "Parallel engine writes: io_uring (default; falls back to pwrite with a notice where the kernel "
                "refuses it) or pwrite (also: environment VMSYNTH_NO_IO_URING=1)")
      ->check(CLI::IsMember(enum_name_list<WriteBackend>()));
  c->add_flag("--no-io-uring", args->no_uring, "Same as --write-backend pwrite")->excludes(backend);
  c->add_option("--queue-depth", args->queue_depth, "io_uring queue depth, 1-4096 (default 64)")
      ->check(CLI::Range(1u, 4096u));
  c->add_option("--memory-budget-mib", args->memory_budget_mib,
                "Parallel engine: MiB of overlay frames held in memory at once, 16-1048576 (default 256)")
      ->check(CLI::Range(uint64_t{16}, uint64_t{1} << 20));
  args->key.add_to(*c, "of an encrypted overlay (then only an encrypted overlay is accepted)");
  c->add_flag("--force", args->force,
              "Replace an existing --out directory (never an input: an --out that is, contains or lies inside the "
              "base VM or the overlay file is refused)");
  c->add_flag("--json", args->json, "Print the result as JSON");
  add_quiet_flag(*c, args->quiet);
  c->add_flag("--launch", args->launch,
              "Resume the synthesized VM right away in --out (QEMU in the background; kernel and initrd are "
              "looked up in --base) and report the time from the first overlay byte to a running guest. A VM "
              "that cannot be launched (no machine description, e.g. from gen-pair) is still synthesized: a "
              "notice says why it was not launched and the exit status is the synthesis's (0)");
  c->callback([args] {
    if (args->engine == "serial" && args->threads > 1) {
      throw Error(ErrorCode::kUsage, "--threads " + std::to_string(args->threads) +
                                         ": the serial engine runs on one thread; use --engine parallel for more");
    }
    LibraryParams params;
    params.set("engine", args->engine, "--engine")
        .set("threads", std::to_string(args->threads), "--threads")
        .set("clone", args->clone, "--clone")
        .set("disk_format", args->disk_format, "--disk-format")
        .set("write_backend", args->no_uring ? "pwrite" : args->write_backend, "--write-backend")
        .set("queue_depth", std::to_string(args->queue_depth), "--queue-depth")
        .set("memory_budget", std::to_string(args->memory_budget_mib << 20), "--memory-budget-mib")
        .key(args->key)
        .set("force", args->force ? "1" : "0", "--force");
    note_output(args->out);
    // Before the library opens the source: a tcp-listen:// source waits for its sender there.
    params.cancel_on_interrupt();
    std::optional<WorkerPool> pool;
    if (args->engine == "parallel") pool.emplace(args->threads, 2);  // the engine: workers + reader + writer
    TerminalProgress progress("synthesizing", args->quiet);
    params.progress(progress);
    char* result = nullptr;
    const int rc =
        vmsynth_synthesize(args->base.c_str(), args->overlay.c_str(), args->out.c_str(), params.get(), &result);
    const auto synthesized = std::chrono::steady_clock::now();
    progress.finish();
    nlohmann::json j = take_result(rc, result);
    std::optional<vm::ResumeResult> launched;
    std::optional<Error> not_launched;  // the synthesis stands; only the launch was impossible
    double first_byte_to_running_ms = 0;
    if (args->launch) {
      vm::ResumeOptions ro;
      ro.boot_file_dirs = {args->base};
      try {
        launched = vm::resume_vm(args->out, ro);
        first_byte_to_running_ms =
            1000.0 * j["seconds"]["since_first_byte"].get<double>() +
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - synthesized).count();
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kUnsupported) throw;
        not_launched = e;
        std::fprintf(stderr, "vmsynth: notice: synthesized %s but did not launch it: %s\n", args->out.c_str(),
                     e.what());
      }
    }
    const std::string fallback = j.value("write_backend_reason", "");
    if (!fallback.empty()) {
      std::fprintf(stderr, "vmsynth: notice: io_uring unavailable (%s); writing with pwrite\n", fallback.c_str());
    }
    if (args->json) {
      if (launched) {
        j["launch"] = {{"run_dir", launched->run_dir},
                       {"pid", launched->pid},
                       {"accelerator", std::string(vm::accel_name(launched->accel))},
                       {"resume_ms", launched->resume_ms},
                       {"first_byte_to_running_ms", first_byte_to_running_ms}};
      } else if (not_launched) {
        j["launch"] = {{"ok", false},
                       {"error",
                        {{"code", std::string(error_code_name(not_launched->code()))},
                         {"message", not_launched->message()}}}};
      }
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      const unsigned threads = j["threads"].get<unsigned>();
      std::printf(
          "synthesized %s from %s of overlay in %.3f s (%s engine, %u thread%s, writes: %s, clone: %s, disk: %s)\n",
          args->out.c_str(), human_bytes(j["overlay_bytes"].get<uint64_t>()).c_str(),
          j["seconds"]["total"].get<double>(), j["engine"].get<std::string>().c_str(), threads,
          threads == 1 ? "" : "s", j["write_backend"].get<std::string>().c_str(),
          j["clone_method"].get<std::string>().c_str(), j["disk_format"].get<std::string>().c_str());
      if (launched) {
        std::printf("launch VM running in %s (pid %d, %s): %.0f ms from the first overlay byte, resume %.0f ms\n",
                    launched->run_dir.c_str(), static_cast<int>(launched->pid),
                    std::string(vm::accel_name(launched->accel)).c_str(), first_byte_to_running_ms,
                    launched->resume_ms);
      }
    }
  });
}

}  // namespace vmsynth::cli
