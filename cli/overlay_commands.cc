// `vmsynth overlay create`, `vmsynth overlay info` and `vmsynth overlay verify`.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/key_options.h"
#include "cli/progress.h"
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

nlohmann::json kinds_json(const std::array<uint64_t, format::kOpKindCount>& counts) {
  nlohmann::json j;
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    j[kind_name(k)] = {{"count", counts[k]}, {"bytes", counts[k] * format::kBlockSize}};
  }
  return j;
}

int parse_level(const std::string& s) {
  if (s == "max") return kMaxLevel;
  try {
    size_t used = 0;
    int v = std::stoi(s, &used);
    if (used == s.size() && v >= 1 && v <= kMaxLevel) return v;
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::kUsage, "--level must be a number from 1 to " + std::to_string(kMaxLevel) + " or 'max', not '" +
                                     s + "'");
}

void print_kinds(const std::array<uint64_t, format::kOpKindCount>& counts) {
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    std::printf("  %-10s %10llu blocks  %12s\n", kind_name(k).c_str(), static_cast<unsigned long long>(counts[k]),
                human_bytes(counts[k] * format::kBlockSize).c_str());
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
    CreateOptions o;
    o.key = args->key.load();
    o.base_dir = args->base;
    o.launch_dir = args->launch;
    o.output = args->out;
    o.level = parse_level(args->level);
    o.threads = args->threads;
    o.force = args->force;
    note_output(args->out);
    install_interrupt_handlers();
    o.cancel = &interrupt_token();
    TerminalProgress progress("creating overlay", args->quiet);
    o.progress = progress.callback();
    CreateStats s = create_overlay(o);
    progress.finish();
    if (args->json) {
      nlohmann::json j = {{"ok", true},
                          {"overlay", args->out},
                          {"overlay_bytes", s.overlay_bytes},
                          {"encrypted", o.key.present()},
                          {"base_id", s.base_id.hex()},
                          {"launch_memory_bytes", s.launch_size[0]},
                          {"launch_disk_bytes", s.launch_size[1]},
                          {"level", o.level},
                          {"frames", s.frames},
                          {"ops", kinds_json(s.kind_count)},
                          {"payload_raw_bytes", s.payload_raw_bytes},
                          {"file_bytes", s.file_bytes},
                          {"seconds",
                           {{"base_id", s.seconds_base_id},
                            {"index", s.seconds_index},
                            {"classify", s.seconds_classify},
                            {"encode", s.seconds_encode},
                            {"total", s.seconds_total}}}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      uint64_t launch = s.launch_size[0] + s.launch_size[1];
      std::printf("overlay %s%s: %s (%.2f%% of the launch VM's %s), %llu frames, %.2f s\n", args->out.c_str(),
                  o.key.present() ? " (encrypted)" : "",
                  human_bytes(s.overlay_bytes).c_str(), launch ? 100.0 * double(s.overlay_bytes) / double(launch) : 0.0,
                  human_bytes(launch).c_str(), static_cast<unsigned long long>(s.frames), s.seconds_total);
      print_kinds(s.kind_count);
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
    auto src = io::open_source(args->file);
    OverlayInfo info = inspect_overlay(*src, args->key.load());
    const auto& h = info.header;
    const char* kdf = h.kdf == format::Kdf::kScrypt ? "scrypt" : h.kdf == format::Kdf::kRawKey ? "raw-key" : "none";
    if (args->json) {
      nlohmann::json files = nlohmann::json::array();
      for (const auto& f : info.files) {
        files.push_back({{"name", f.name}, {"bytes", f.size}, {"stored_bytes", f.stored}, {"base_delta", f.base_prefix}});
      }
      nlohmann::json j = {
          {"ok", true},
          {"version", std::to_string(h.version_major) + "." + std::to_string(h.version_minor)},
          {"base_id", h.base_id.hex()},
          {"base_memory_bytes", h.base_size[0]},
          {"base_disk_bytes", h.base_size[1]},
          {"launch_memory_bytes", h.launch_size[0]},
          {"launch_disk_bytes", h.launch_size[1]},
          {"encrypted", h.encrypted()},
          {"cipher", h.encrypted() ? "aes-256-gcm" : "none"},
          {"key_derivation", kdf},
          // Headers, op tables, file records and trailer only (see the footer).
          {"authenticated", info.headers_authenticated},
          {"payloads_authenticated", false},
          {"payloads_checked", false},
          {"checked", info.checked()},
          {"not_checked", info.not_checked()},
          {"tables_decoded", info.tables_decoded},
          {"overlay_bytes", info.overlay_bytes},
          {"frames", info.frames},
          {"block_frames", info.block_frames},
          {"ops", kinds_json(info.kind_count)},
          {"ops_memory", kinds_json(info.kind_count_by_image[0])},
          {"ops_disk", kinds_json(info.kind_count_by_image[1])},
          {"table_stored_bytes", info.table_stored_bytes},
          {"payload_raw_bytes", info.payload_raw_bytes},
          {"payload_stored_bytes", info.payload_stored_bytes},
          {"files", files}};
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("overlay format %u.%u, %s, %llu frames\n", h.version_major, h.version_minor,
                human_bytes(info.overlay_bytes).c_str(), static_cast<unsigned long long>(info.frames));
    std::printf("base id   %s (memory %s, disk %s)\n", h.base_id.hex().c_str(), human_bytes(h.base_size[0]).c_str(),
                human_bytes(h.base_size[1]).c_str());
    std::printf("launch    memory %s, disk %s\n", human_bytes(h.launch_size[0]).c_str(),
                human_bytes(h.launch_size[1]).c_str());
    if (h.encrypted()) {
      std::string k = kdf;
      if (h.kdf == format::Kdf::kScrypt) {
        k += " (N=2^" + std::to_string(h.kdf_log2_n) + ", r=" + std::to_string(h.kdf_r) + ", p=" +
             std::to_string(h.kdf_p) + ")";
      }
      std::printf("encrypted AES-256-GCM, key from %s; %s\n", k.c_str(),
                  info.headers_authenticated
                      ? "headers and op tables authenticated with the given key (payloads not)"
                      : "NOT authenticated (no key given): the headers shown are unverified");
    }
    std::printf("ops:\n");
    print_kinds(info.kind_count);
    std::printf("payload   %s -> %s stored; op tables %s\n", human_bytes(info.payload_raw_bytes).c_str(),
                human_bytes(info.payload_stored_bytes).c_str(), human_bytes(info.table_stored_bytes).c_str());
    for (const auto& f : info.files) {
      std::printf("file      %s: %s -> %s stored%s\n", f.name.c_str(), human_bytes(f.size).c_str(),
                  human_bytes(f.stored).c_str(), f.base_prefix ? " (delta against the base's copy)" : "");
    }
    std::printf("checked:     %s\n", info.checked().c_str());
    std::printf("not checked: %s; run 'vmsynth overlay verify' to check them\n", info.not_checked().c_str());
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
