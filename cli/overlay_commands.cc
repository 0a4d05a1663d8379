// `vmsynth overlay create`, `vmsynth overlay info` and `vmsynth overlay verify`.
#include <unistd.h>

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
#include "common/error.h"
#include "engine/cancel.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/overlay_verify.h"
#include "engine/threads.h"
#include "io/byte_source.h"

namespace vmsynth::cli {

namespace {

std::string kind_name(unsigned k) { return std::string(format::op_kind_name(static_cast<format::OpKind>(k))); }

// One line per op kind from a result's "ops" object ({kind: {count, bytes}}).
void print_kinds(const nlohmann::json& ops) {
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    const std::string name = kind_name(k);
    const auto& c = ops[name];
    std::printf("  %-10s %10llu blocks  %12s\n", name.c_str(), static_cast<unsigned long long>(c["count"].get<uint64_t>()),
                human_bytes(c["bytes"].get<uint64_t>()).c_str());
  }
}

void add_create(CLI::App& overlay) {
  struct Args {
    std::string base, launch, out, level = std::to_string(kDefaultLevel);
    unsigned threads = 0;
    bool force = false, json = false, encrypt = false, quiet = false;
    KeyOptions key;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c = overlay.add_subcommand("create", "Create an overlay: the launch VM's difference from the base VM.");
  c->add_option("--base", args->base, "Base VM directory (disk.img, memory.img); only read")->required();
  c->add_option("--launch", args->launch, "Launch VM directory (disk.img, memory.img, optional devstate.bin, vm.json)")
      ->required();
  c->add_option("-o,--output", args->out, "Overlay file to write (written under a temporary name, then renamed)")
      ->required();
  c->add_option("--level", args->level,
                "zstd level 1-22, or 'max' for the smallest overlay (slowest); default " +
                    std::to_string(kDefaultLevel));
  c->add_option("--threads", args->threads,
                "Worker threads, 0-" + std::to_string(kMaxThreads) + "; 0 = one per core (default)")
      ->check(CLI::Range(0u, kMaxThreads));
  c->add_flag("--encrypt", args->encrypt,
              "Seal every frame with AES-256-GCM (needs --key-file or --passphrase-file, which imply it)");
  args->key.add_to(*c, "to encrypt with");
  c->add_flag("--force", args->force,
              "Replace an existing output file (never one of the inputs: an output that is, contains or lies "
              "inside the base or launch VM is refused)");
  c->add_flag("--json", args->json, "Print the result as JSON");
  add_quiet_flag(*c, args->quiet);
  c->callback([args] {
    if (args->encrypt && !args->key.given()) {
      throw Error(ErrorCode::kUsage, "--encrypt needs --key-file FILE or --passphrase-file FILE");
    }
    LibraryParams params;
    params.set("level", args->level, "--level")
        .set("threads", std::to_string(args->threads), "--threads")
        .key(args->key)
        .set("force", args->force ? "1" : "0", "--force");
    note_output(args->out);
    params.cancel_on_interrupt();
    std::optional<WorkerPool> pool;
    if (args->threads > 0) pool.emplace(args->threads, 0);
    TerminalProgress progress("creating overlay", args->quiet);
    params.progress(progress);
    char* result = nullptr;
    const int rc = vmsynth_overlay_create(args->base.c_str(), args->launch.c_str(), args->out.c_str(), params.get(),
                                          &result);
    progress.finish();
    const nlohmann::json j = take_result(rc, result);
    if (args->json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      const uint64_t bytes = j["overlay_bytes"].get<uint64_t>();
      const uint64_t launch = j["launch_memory_bytes"].get<uint64_t>() + j["launch_disk_bytes"].get<uint64_t>();
      std::printf("overlay %s%s: %s (%.2f%% of the launch VM's %s), %llu frames, %.2f s\n", args->out.c_str(),
                  j["encrypted"].get<bool>() ? " (encrypted)" : "", human_bytes(bytes).c_str(),
                  launch ? 100.0 * double(bytes) / double(launch) : 0.0, human_bytes(launch).c_str(),
                  static_cast<unsigned long long>(j["frames"].get<uint64_t>()), j["seconds"]["total"].get<double>());
      print_kinds(j["ops"]);
    }
  });
}

void add_info(CLI::App& overlay) {
  struct Args {
    std::string file;
    bool json = false;
    KeyOptions key;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c = overlay.add_subcommand(
      "info", "Describe an overlay (base id, sizes, ops) from its headers and op tables; payloads and block hashes "
              "are not checked (that is 'overlay verify').");
  c->add_option("file", args->file, "Overlay file, or - for standard input")->required();
  args->key.add_to(*c, "of an encrypted overlay (optional: without it only the clear headers are shown, unverified)");
  c->footer(
      "Checked: the file header, every frame header, op table and file record (checksums, limits, order) and the "
      "end frame. With the key of an encrypted overlay, those are also authenticated; without it, only the clear "
      "file and frame headers are checked, and nothing is authenticated. Not checked: payloads "
      "(checksums, GCM tags, decompression), block and file hashes and the op rules; 'vmsynth overlay verify' "
      "checks them. In --json, \"authenticated\" means the headers, op tables and trailer were authenticated with "
      "the key (false for an unencrypted overlay, which has checksums only); \"payloads_authenticated\" and "
      "\"payloads_checked\" are always false.\n");
  c->add_flag("--json", args->json, "Print the result as JSON");
  c->callback([args] {
    LibraryParams params;
    params.key(args->key);
    char* result = nullptr;
    const int rc = vmsynth_overlay_info(args->file.c_str(), params.get(), &result);
    const nlohmann::json j = take_result(rc, result);
    if (args->json) {
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    auto bytes = [&j](const char* key) { return human_bytes(j[key].get<uint64_t>()); };
    std::printf("overlay format %s, %s, %llu frames\n", j["version"].get<std::string>().c_str(),
                bytes("overlay_bytes").c_str(), static_cast<unsigned long long>(j["frames"].get<uint64_t>()));
    std::printf("base id   %s (memory %s, disk %s)\n", j["base_id"].get<std::string>().c_str(),
                bytes("base_memory_bytes").c_str(), bytes("base_disk_bytes").c_str());
    std::printf("launch    memory %s, disk %s\n", bytes("launch_memory_bytes").c_str(),
                bytes("launch_disk_bytes").c_str());
    if (j["encrypted"].get<bool>()) {
      std::string k = j["key_derivation"].get<std::string>();
      if (j.contains("scrypt")) {
        const auto& c = j["scrypt"];
        k += " (N=2^" + std::to_string(c["log2_n"].get<unsigned>()) + ", r=" + std::to_string(c["r"].get<unsigned>()) +
             ", p=" + std::to_string(c["p"].get<unsigned>()) + ")";
      }
      std::printf("encrypted AES-256-GCM, key from %s; %s\n", k.c_str(),
                  j["authenticated"].get<bool>()
                      ? "headers and op tables authenticated with the given key (payloads not)"
                      : "NOT authenticated (no key given): the headers shown are unverified");
    }
    std::printf("ops:\n");
    print_kinds(j["ops"]);
    std::printf("payload   %s -> %s stored; op tables %s\n", bytes("payload_raw_bytes").c_str(),
                bytes("payload_stored_bytes").c_str(), bytes("table_stored_bytes").c_str());
    for (const auto& f : j["files"]) {
      std::printf("file      %s: %s -> %s stored%s\n", f["name"].get<std::string>().c_str(),
                  human_bytes(f["bytes"].get<uint64_t>()).c_str(), human_bytes(f["stored_bytes"].get<uint64_t>()).c_str(),
                  f["base_delta"].get<bool>() ? " (delta against the base's copy)" : "");
    }
    std::printf("checked:     %s\n", j["checked"].get<std::string>().c_str());
    std::printf("not checked: %s; run 'vmsynth overlay verify' to check them\n",
                j["not_checked"].get<std::string>().c_str());
  });
}

void add_verify(CLI::App& overlay) {
  struct Args {
    std::string file, base;
    bool json = false, quiet = false;
    KeyOptions key;
  };
  auto args = std::make_shared<Args>();
  CLI::App* c = overlay.add_subcommand(
      "verify", "Check a whole overlay without synthesizing it (like zstd -t): every checksum, GCM tag, op table, "
                "op rule and block hash. Writes no VM.");
  c->add_option("file", args->file, "Overlay file, or - for standard input")->required();
  c->add_option("--base", args->base,
                "Base VM directory (only read): checks that it is the overlay's base, then also the blocks "
                "that need it (DELTA, BASE_COPY, ...)");
  args->key.add_to(*c, "of an encrypted overlay (required to verify one)");
  c->add_flag("--json", args->json, "Print the result as JSON");
  add_quiet_flag(*c, args->quiet);
  c->footer(
      "Without --base, blocks whose content comes from the base VM cannot be reconstructed: DELTA blocks and the "
      "other payload blocks of their frames (one zstd frame compressed against base blocks), BASE_COPY blocks, "
      "files encoded against the base's copy, and SELF_COPY blocks copying those. Their stored payloads' "
      "checksums and GCM tags are still verified; the blocks are reported as not checked (blocks_not_checked, "
      "not_checked_reason) and the exit status is 0 if everything else is intact. With --base, the base's id is "
      "checked first, as synthesize does (its base id may be cached the same way), and every block is checked.\n"
      "Exit status: 0 intact, 3 corrupt (the message names the frame, its byte offset and the block), 4 wrong "
      "base, 5 wrong or missing key, 2 usage, 6 I/O, 7 unsupported version or feature.\n");
  c->callback([args] {
    VerifyOptions o;
    o.key = args->key.load();
    o.base_dir = args->base;
    o.source_size = io::regular_file_size(args->file).value_or(0);
    install_interrupt_handlers();
    o.cancel = &interrupt_token();
    auto src = io::open_source(args->file, interrupt_token().stop_check());
    TerminalProgress progress("verifying overlay", args->quiet);
    o.progress = progress.callback();
    VerifyStats s = verify_overlay(*src, o);
    progress.finish();
    const bool encrypted = s.header.encrypted();
    if (args->json) {
      nlohmann::json not_checked;
      for (unsigned k = 0; k < format::kOpKindCount; ++k) not_checked[kind_name(k)] = s.not_checked_by_kind[k];
      nlohmann::json j = {{"ok", true},
                          {"overlay", args->file},
                          {"overlay_bytes", s.overlay_bytes},
                          {"encrypted", encrypted},
                          {"authenticated", s.authenticated},
                          {"base_id", s.header.base_id.hex()},
                          {"base_checked", s.base_checked},
                          {"frames", s.frames},
                          {"block_frames", s.block_frames},
                          {"file_frames", s.file_frames},
                          {"blocks_checked", s.blocks_checked},
                          {"blocks_not_checked", s.blocks_not_checked},
                          {"blocks_not_checked_by_kind", not_checked},
                          {"files_checked", s.files_checked},
                          {"files_not_checked", s.files_not_checked},
                          {"not_checked_reason", s.not_checked_reason},
                          {"seconds", {{"base_id", s.seconds_base_id}, {"total", s.seconds_total}}}};
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("overlay %s: intact; %s, %llu frames, %llu blocks and %llu files checked in %.2f s\n",
                args->file.c_str(), human_bytes(s.overlay_bytes).c_str(), static_cast<unsigned long long>(s.frames),
                static_cast<unsigned long long>(s.blocks_checked), static_cast<unsigned long long>(s.files_checked),
                s.seconds_total);
    std::printf("%s\n", encrypted ? "authenticated: every AES-256-GCM tag verified with the given key"
                                  : "not encrypted: checksums and hashes detect damage, not deliberate tampering");
    if (s.base_checked) {
      std::printf("base      %s is the overlay's base (id %s)\n", args->base.c_str(), s.base_id.hex().c_str());
    }
    if (!s.everything_checked()) {
      std::printf("NOT CHECKED: %llu blocks and %llu files: %s%s\n",
                  static_cast<unsigned long long>(s.blocks_not_checked),
                  static_cast<unsigned long long>(s.files_not_checked), s.not_checked_reason.c_str(),
                  s.base_checked ? "" : " (give --base DIR to check them)");
    }
  });
}

}  // namespace

void add_overlay_commands(CLI::App& app) {
  CLI::App* overlay = app.add_subcommand("overlay", "Create, inspect or verify VM overlays.");
  overlay->require_subcommand(1);
  add_create(*overlay);
  add_info(*overlay);
  add_verify(*overlay);
}

}  // namespace vmsynth::cli
