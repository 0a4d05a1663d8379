// vmsynth_params: the names, their parsing and bounds, and the engine options
// they become.
#include <charconv>
#include <limits>

#include "common/enum_names.h"
#include "common/error.h"
#include "engine/threads.h"
#include "lib/api.h"
#include "lib/key_files.h"

namespace vmsynth::lib {

namespace {

[[noreturn]] void bad_value(std::string_view name, std::string_view value, std::string_view want) {
  throw Error(ErrorCode::kUsage,
              "parameter " + std::string(name) + ": '" + std::string(value) + "' is not " + std::string(want));
}

uint64_t parse_number(std::string_view name, std::string_view value, uint64_t lo, uint64_t hi,
                      bool size_suffix = false) {
  uint64_t v = 0;
  const char* end = value.data() + value.size();
  auto [p, ec] = std::from_chars(value.data(), end, v);
  unsigned shift = 0;
  if (size_suffix && p + 1 == end) {
    switch (*p) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift != 0) ++p;
  }
  const std::string range = "a number from " + std::to_string(lo) + " to " + std::to_string(hi) +
                            (size_suffix ? " (bytes; K, M, G, T suffixes are powers of 1024)" : "");
  if (value.empty() || ec != std::errc() || p != end) bad_value(name, value, range);
  if (shift != 0 && v > (std::numeric_limits<uint64_t>::max() >> shift)) bad_value(name, value, range);
  v <<= shift;
  if (v < lo || v > hi) bad_value(name, value, range);
  return v;
}

bool parse_bool(std::string_view name, std::string_view value) {
  if (value == "1" || value == "true") return true;
  if (value == "0" || value == "false") return false;
  bad_value(name, value, "1 or 0 (true or false)");
}

template <typename E>
E parse_choice(std::string_view name, std::string_view value) {
  if (auto v = find_enum<E>(value)) return *v;
  bad_value(name, value, enum_choices<E>());
}

// The four ways to give a key exclude each other; "" unsets the one named.
void set_key_param(vmsynth_params& p, std::string_view name, std::string_view value) {
  const bool given_elsewhere = (name != "key_file" && !p.key_file.empty()) ||
                               (name != "passphrase_file" && !p.passphrase_file.empty()) ||
                               (name != "key" && name != "passphrase" && p.key.present()) ||
                               (name == "key" && p.key.kind == codec::KeySpec::Kind::kPassphrase) ||
                               (name == "passphrase" && p.key.kind == codec::KeySpec::Kind::kRawKey);
  if (!value.empty() && given_elsewhere) {
    throw Error(ErrorCode::kUsage, "parameter " + std::string(name) +
                                       ": key_file, passphrase_file, key and passphrase exclude each other; unset "
                                       "the other with \"\"");
  }
  if (name == "key_file") {
    p.key_file = value;
  } else if (name == "passphrase_file") {
    p.passphrase_file = value;
  } else if (value.empty()) {
    if ((name == "key") == (p.key.kind == codec::KeySpec::Kind::kRawKey)) p.key = {};
  } else {
    const std::string origin = "parameter " + std::string(name);
    // A key file may hold 32 raw bytes; a key given as a string is hex only.
    if (name == "key" && (value.size() != 64 || value.find_first_not_of("0123456789abcdefABCDEF") != value.npos)) {
      throw Error(ErrorCode::kUsage, origin + ": expected 64 hex digits (a 256-bit key)");
    }
    const auto bytes = std::as_bytes(std::span(value.data(), value.size()));
    p.key = name == "key" ? codec::key_from_key_file(bytes, origin) : codec::key_from_passphrase_file(bytes, origin);
  }
}

}  // namespace

const vmsynth_params& params_or_defaults(const vmsynth_params* p) {
  static const vmsynth_params defaults;
  return p != nullptr ? *p : defaults;
}

void set_param(vmsynth_params& p, std::string_view name, std::string_view value) {
  if (name == "engine") {
    p.engine = parse_choice<EngineKind>(name, value);
  } else if (name == "threads") {
    p.threads = static_cast<unsigned>(parse_number(name, value, 0, kMaxThreads));
  } else if (name == "disk_format") {
    p.disk_format = parse_choice<DiskFormat>(name, value);
  } else if (name == "clone") {
    p.clone = parse_choice<io::CloneMethod>(name, value);
  } else if (name == "write_backend") {
    p.write_backend = parse_choice<WriteBackend>(name, value);
  } else if (name == "queue_depth") {
    p.queue_depth = static_cast<unsigned>(parse_number(name, value, 1, 4096));
  } else if (name == "memory_budget") {
    p.memory_budget = parse_number(name, value, uint64_t{16} << 20, uint64_t{1} << 40, true);
  } else if (name == "overlay_size") {
    p.overlay_size = parse_number(name, value, 0, std::numeric_limits<int64_t>::max(), true);
  } else if (name == "level") {
    if (value == "max") {
      p.level = kMaxLevel;
    } else {
      try {
        p.level = static_cast<int>(parse_number(name, value, 1, kMaxLevel));
      } catch (const Error&) {
        bad_value(name, value, "a zstd level from 1 to " + std::to_string(kMaxLevel) + " or 'max'");
      }
    }
  } else if (name == "key_file" || name == "passphrase_file" || name == "key" || name == "passphrase") {
    set_key_param(p, name, value);
  } else if (name == "cache_dir") {
    p.cache_dir = value;
  } else if (name == "base_id_cache") {
    p.base_id_cache = parse_bool(name, value);
  } else if (name == "force") {
    p.force = parse_bool(name, value);
  } else {
    throw Error(ErrorCode::kUsage,
                "unknown parameter '" + std::string(name) +
                    "'; known: engine, threads, disk_format, clone, write_backend, queue_depth, memory_budget, "
                    "overlay_size, level, key_file, passphrase_file, key, passphrase, cache_dir, base_id_cache, "
                    "force");
  }
}

codec::KeySpec key_spec(const vmsynth_params& p) {
  return p.key.present() ? p.key : load_key_spec(p.key_file, p.passphrase_file);
}

SynthesizeOptions synthesize_options(const vmsynth_params& p, const std::string& base_dir, const std::string& out_dir) {
  if (p.engine == EngineKind::kSerial && p.threads > 1) {
    throw Error(ErrorCode::kUsage, "threads " + std::to_string(p.threads) +
                                       ": the serial engine runs on one thread; use engine parallel for more");
  }
  SynthesizeOptions o;
  o.base_dir = base_dir;
  o.out_dir = out_dir;
  o.engine = p.engine;
  o.threads = p.threads;
  o.force = p.force;
  o.clone = p.clone;
  o.disk_format = p.disk_format;
  o.write_backend = p.write_backend;
  o.queue_depth = p.queue_depth;
  o.memory_budget = p.memory_budget;
  o.use_base_id_cache = p.base_id_cache;
  o.cache_dir = p.cache_dir;
  o.progress = p.progress;
  o.source_size = p.overlay_size;
  o.key = key_spec(p);
  return o;
}

CreateOptions create_options(const vmsynth_params& p, const std::string& base_dir, const std::string& launch_dir,
                             const std::string& overlay_path) {
  CreateOptions o;
  o.base_dir = base_dir;
  o.launch_dir = launch_dir;
  o.output = overlay_path;
  o.level = p.level;
  o.threads = p.threads;
  o.force = p.force;
  o.cache_dir = p.cache_dir;
  o.progress = p.progress;
  o.key = key_spec(p);
  if (p.cancel != nullptr) o.cancel = &p.cancel->token;
  return o;
}

}  // namespace vmsynth::lib
