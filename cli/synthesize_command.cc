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
#include "cli/progress.h"
#include "common/enum_names.h"
#include "common/error.h"
#include "engine/cancel.h"
#include "engine/synthesis.h"
#include "engine/threads.h"
#include "io/byte_source.h"
#include "vm/vm_control.h"

namespace vmsynth::cli {

namespace {

// Passes reads through and notes when the first overlay byte arrived, the
// start of the user's wait that `--launch` reports.
class FirstByteClock : public io::ByteSource {
 public:
  using Clock = std::chrono::steady_clock;
  explicit FirstByteClock(std::unique_ptr<io::ByteSource> inner) : inner_(std::move(inner)) {}
  std::string describe() const override { return inner_->describe(); }
  std::optional<Clock::time_point> first_byte() const { return first_; }

 protected:
  size_t read_raw(std::span<std::byte> buf) override {
    size_t n = inner_->read_some(buf);
    if (n > 0 && !first_) first_ = Clock::now();
    return n;
  }

 private:
  std::unique_ptr<io::ByteSource> inner_;
  std::optional<Clock::time_point> first_;
};
}  // namespace

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
    SynthesizeOptions o;
    o.base_dir = args->base;
    o.out_dir = args->out;
    o.engine = args->engine == "serial" ? EngineKind::kSerial : EngineKind::kParallel;
    o.threads = args->threads;
    o.force = args->force;
    o.clone = io::parse_clone_method(args->clone);
    o.disk_format = parse_disk_format(args->disk_format);
    o.write_backend = args->no_uring ? WriteBackend::kPwrite : parse_write_backend(args->write_backend);
    o.queue_depth = args->queue_depth;
    o.memory_budget = args->memory_budget_mib << 20;
    o.key = args->key.load();
    o.source_size = io::regular_file_size(args->overlay).value_or(0);
    if (args->overlay != "-" && args->overlay.find("://") == std::string::npos) o.overlay_path = args->overlay;
    note_output(args->out);
    install_interrupt_handlers();  // before opening: a tcp-listen:// source waits for its sender here
    o.cancel = &interrupt_token();
    FirstByteClock src(io::open_source(args->overlay, interrupt_token().stop_check()));
    TerminalProgress progress("synthesizing", args->quiet);
    o.progress = progress.callback();
    SynthesizeStats s = synthesize(src, o);
    progress.finish();
    std::optional<vm::ResumeResult> launched;
    std::optional<Error> not_launched;  // the synthesis stands; only the launch was impossible
    double first_byte_to_running_ms = 0;
    if (args->launch) {
      vm::ResumeOptions ro;
      ro.boot_file_dirs = {args->base};
      try {
        launched = vm::resume_vm(args->out, ro);
        first_byte_to_running_ms =
            std::chrono::duration<double, std::milli>(FirstByteClock::Clock::now() - *src.first_byte()).count();
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kUnsupported) throw;
        not_launched = e;
        std::fprintf(stderr, "vmsynth: notice: synthesized %s but did not launch it: %s\n", args->out.c_str(),
                     e.what());
      }
    }
    if (!s.write_fallback.empty()) {
      std::fprintf(stderr, "vmsynth: notice: io_uring unavailable (%s); writing with pwrite\n",
                   s.write_fallback.c_str());
    }
    if (args->json) {
      nlohmann::json ops;
      for (unsigned k = 0; k < format::kOpKindCount; ++k) {
        ops[std::string(format::op_kind_name(static_cast<format::OpKind>(k)))] = s.kind_count[k];
      }
      nlohmann::json j = {{"ok", true},
                          {"out", args->out},
                          {"engine", s.engine},
                          {"threads", s.threads},
                          {"write_backend", s.write_backend},
                          {"write_backend_reason", s.write_fallback},
                          {"clone_method", s.clone_method},
                          {"disk_format", s.disk_format},
                          {"base_id", s.base_id.hex()},
                          {"overlay_bytes", s.overlay_bytes},
                          {"frames", s.frames},
                          {"blocks_written", s.blocks_written},
                          {"launch_memory_bytes", s.launch_size[0]},
                          {"launch_disk_bytes", s.launch_size[1]},
                          {"ops", ops},
                          {"seconds",
                           {{"base_id", s.seconds_base_id},
                            {"clone", s.seconds_clone},
                            {"apply", s.seconds_apply},
                            {"sync", s.seconds_sync},
                            {"total", s.seconds_total}}}};
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
      std::printf(
          "synthesized %s from %s of overlay in %.3f s (%s engine, %u thread%s, writes: %s, clone: %s, disk: %s)\n",
          args->out.c_str(), human_bytes(s.overlay_bytes).c_str(), s.seconds_total, s.engine.c_str(), s.threads,
          s.threads == 1 ? "" : "s",
          s.write_backend.c_str(), s.clone_method.c_str(), s.disk_format.c_str());
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
