// The C API (include/vmsynth/vmsynth.h): the edge where C++ meets C. Every
// function catches everything here; a vmsynth::Error becomes its code and
// message, anything else VMSYNTH_E_INTERNAL.
#include "vmsynth/vmsynth.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <thread>

#include "codec/overlay_format.h"
#include "common/error.h"
#include "engine/base_id.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/synthesis.h"
#include "engine/vm_dir.h"
#include "io/byte_source.h"
#include "io/staged_dir.h"
#include "lib/api.h"
#include "lib/feed_source.h"
#include "lib/key_files.h"
#include "lib/results.h"

using vmsynth::Error;
using vmsynth::ErrorCode;

namespace {

// The status and message of the exception being handled.
struct Failure {
  int status;
  std::string message;
  nlohmann::json json;
};

Failure internal_failure(const std::string& m) {
  return {VMSYNTH_E_INTERNAL, m, {{"ok", false}, {"error", {{"code", "internal"}, {"message", m}, {"context", ""}}}}};
}

Failure current_failure() {
  try {
    throw;
  } catch (const Error& e) {
    return {static_cast<int>(e.code()), e.what(), vmsynth::lib::error_json(e)};
  } catch (const std::bad_alloc&) {
    return internal_failure("out of memory");
  } catch (const std::exception& e) {
    return internal_failure(std::string("internal error: ") + e.what());
  } catch (...) {
    return internal_failure("internal error: unknown exception");
  }
}

// A string for the caller, allocated with malloc (vmsynth_free).
char* give(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

void store(char** result_json, const nlohmann::json& j) {
  if (result_json != nullptr) *result_json = give(j.dump(2));
}

std::string str_arg(const char* s, const char* what) {
  if (s == nullptr) throw Error(ErrorCode::kUsage, std::string(what) + " is NULL");
  return s;
}

// Runs a one-call operation: fn returns the result document.
template <typename Fn>
int one_call(char** result_json, Fn&& fn) noexcept {
  if (result_json != nullptr) *result_json = nullptr;
  try {
    store(result_json, fn());
    return VMSYNTH_OK;
  } catch (...) {
    Failure f = current_failure();
    try {
      store(result_json, f.json);
    } catch (...) {
    }
    return f.status;
  }
}

}  // namespace

// ---- Synthesis handle -----------------------------------------------------

struct vmsynth_synth {
  enum class State { kOpen, kFeeding, kFinished, kFailed };

  explicit vmsynth_synth(const vmsynth::CancelToken* group) : token(group) {}

  vmsynth::SynthesizeOptions opts;
  // The handle's own (vmsynth_synth_cancel), following the params' token if
  // one was given (which then stops this synthesis too).
  vmsynth::CancelToken token;
  std::unique_ptr<vmsynth::lib::FeedSource> feed;
  std::thread engine;
  std::atomic<bool> engine_ended{false};
  std::exception_ptr engine_error;
  vmsynth::SynthesizeStats stats;
  State state = State::kOpen;
  int status = VMSYNTH_OK;
  std::string error;
  nlohmann::json error_json;  // the failure as the one-call functions report it
  std::string result;

  int fail() {
    Failure f = current_failure();
    state = State::kFailed;
    status = f.status;
    error = std::move(f.message);
    error_json = std::move(f.json);
    return status;
  }

  void start_engine() {
    feed = std::make_unique<vmsynth::lib::FeedSource>(token);
    engine = std::thread([this] {
      try {
        stats = vmsynth::synthesize(*feed, opts);
      } catch (...) {
        engine_error = std::current_exception();
      }
      engine_ended.store(true, std::memory_order_release);
      feed->stop_consuming();
    });
    state = State::kFeeding;
  }

  // Waits for the engine; its failure becomes the handle's.
  int join_engine() {
    if (engine.joinable()) engine.join();
    if (engine_error) {
      try {
        std::rethrow_exception(engine_error);
      } catch (...) {
        return fail();
      }
    }
    return VMSYNTH_OK;
  }

  // `src`: what the engine read.
  void succeed(const vmsynth::io::ByteSource& src) {
    // The last call: every byte of the overlay consumed.
    vmsynth::report(opts.progress, "finished", stats.overlay_bytes, opts.source_size);
    nlohmann::json j = vmsynth::lib::synthesize_json(stats, opts.out_dir);
    const auto first = src.first_byte_at();
    j["seconds"]["since_first_byte"] =
        first ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *first).count() : 0.0;
    result = j.dump(2);
    state = State::kFinished;
  }
};

namespace {

int after_finish(vmsynth_synth* s, const char* what) {
  s->error = std::string(what) + " after the synthesis finished";
  return VMSYNTH_E_USAGE;  // not sticky: the synthesis stands
}

}  // namespace

extern "C" {

unsigned vmsynth_version_number(void) { return VMSYNTH_VERSION_NUMBER; }
const char* vmsynth_version_string(void) { return VMSYNTH_VERSION_STRING; }

const char* vmsynth_status_name(int status) {
  switch (status) {
    case VMSYNTH_OK:
      return "ok";
    case VMSYNTH_E_INTERNAL:
      return "internal";
    default:
      break;
  }
  if (status >= VMSYNTH_E_USAGE && status <= VMSYNTH_E_CANCELLED) {
    // error_code_name returns string literals: NUL-terminated.
    return vmsynth::error_code_name(static_cast<ErrorCode>(status)).data();
  }
  return "unknown";
}

void vmsynth_free(void* p) { std::free(p); }

// ---- Cancel tokens ----------------------------------------------------------

vmsynth_cancel* vmsynth_cancel_new(void) { return new (std::nothrow) vmsynth_cancel; }
void vmsynth_cancel_request(vmsynth_cancel* c) {
  if (c != nullptr) c->token.request();
}
int vmsynth_cancel_requested(const vmsynth_cancel* c) { return c != nullptr && c->token.requested() ? 1 : 0; }
void vmsynth_cancel_free(vmsynth_cancel* c) { delete c; }

// ---- Parameters -------------------------------------------------------------

vmsynth_params* vmsynth_params_new(void) { return new (std::nothrow) vmsynth_params; }

int vmsynth_params_set(vmsynth_params* p, const char* name, const char* value) {
  if (p == nullptr || name == nullptr || value == nullptr) return VMSYNTH_E_USAGE;
  try {
    vmsynth_params changed = *p;
    vmsynth::lib::set_param(changed, name, value);
    changed.error.clear();
    *p = std::move(changed);
    return VMSYNTH_OK;
  } catch (...) {
    Failure f = current_failure();
    try {
      p->error = std::move(f.message);
    } catch (...) {
    }
    return f.status;
  }
}

const char* vmsynth_params_error(const vmsynth_params* p) { return p != nullptr ? p->error.c_str() : ""; }

int vmsynth_params_set_progress(vmsynth_params* p, void (*fn)(void* ctx, uint64_t done, uint64_t total), void* ctx) {
  if (p == nullptr) return VMSYNTH_E_USAGE;
  try {
    p->progress = nullptr;
    if (fn != nullptr) {
      p->progress = [fn, ctx](const vmsynth::Progress& g) {
        if (g.done != 0 || g.total != 0) fn(ctx, g.done, g.total);  // phases that count something
      };
    }
    return VMSYNTH_OK;
  } catch (...) {
    return current_failure().status;
  }
}

int vmsynth_params_set_phase_progress(vmsynth_params* p,
                                      void (*fn)(void* ctx, const char* phase, uint64_t done, uint64_t total),
                                      void* ctx) {
  if (p == nullptr) return VMSYNTH_E_USAGE;
  try {
    p->progress = nullptr;
    if (fn != nullptr) {
      p->progress = [fn, ctx](const vmsynth::Progress& g) {
        const std::string phase(g.phase);  // NUL-terminated for C
        fn(ctx, phase.c_str(), g.done, g.total);
      };
    }
    return VMSYNTH_OK;
  } catch (...) {
    return current_failure().status;
  }
}

int vmsynth_params_set_cancel(vmsynth_params* p, vmsynth_cancel* c) {
  if (p == nullptr) return VMSYNTH_E_USAGE;
  p->cancel = c;
  return VMSYNTH_OK;
}

void vmsynth_params_free(vmsynth_params* p) { delete p; }

// ---- Synthesis handle -------------------------------------------------------

int vmsynth_synth_open(vmsynth_synth** out, const char* base_dir, const char* out_dir, const vmsynth_params* p) {
  if (out == nullptr) return VMSYNTH_E_USAGE;
  const vmsynth_params& params = vmsynth::lib::params_or_defaults(p);
  *out = new (std::nothrow) vmsynth_synth(params.cancel != nullptr ? &params.cancel->token : nullptr);
  vmsynth_synth* s = *out;
  if (s == nullptr) return VMSYNTH_E_INTERNAL;
  try {
    s->opts = vmsynth::lib::synthesize_options(params, str_arg(base_dir, "base_dir"), str_arg(out_dir, "out_dir"));
    s->opts.cancel = &s->token;
    vmsynth::check_synthesize_options(s->opts);
    vmsynth::io::refuse_existing_output(s->opts.out_dir, s->opts.force);
    return VMSYNTH_OK;
  } catch (...) {
    return s->fail();
  }
}

int vmsynth_synth_feed(vmsynth_synth* s, const void* data, size_t len) {
  if (s == nullptr) return VMSYNTH_E_USAGE;
  if (s->state == vmsynth_synth::State::kFailed) return s->status;
  if (s->state == vmsynth_synth::State::kFinished) return after_finish(s, "feed");
  if (len == 0) return VMSYNTH_OK;
  try {
    if (data == nullptr) throw Error(ErrorCode::kUsage, "feed: data is NULL with len " + std::to_string(len));
    if (s->state == vmsynth_synth::State::kOpen) s->start_engine();
    const bool taken = s->feed->push(static_cast<const std::byte*>(data), len);
    if (!taken || s->engine_ended.load(std::memory_order_acquire)) {
      // The engine ended before the overlay did: its error (a cancel shows
      // as kInterrupted from the engine, which polls the same token).
      s->feed->close();
      if (int rc = s->join_engine(); rc != VMSYNTH_OK) return rc;
      throw Error(ErrorCode::kCorrupt, "unexpected data after the end of the overlay");
    }
    return VMSYNTH_OK;
  } catch (...) {
    return s->fail();
  }
}

int vmsynth_synth_finish(vmsynth_synth* s) {
  if (s == nullptr) return VMSYNTH_E_USAGE;
  if (s->state == vmsynth_synth::State::kFailed) return s->status;
  if (s->state == vmsynth_synth::State::kFinished) return after_finish(s, "finish");
  try {
    if (s->state == vmsynth_synth::State::kOpen) s->start_engine();  // nothing fed: the engine says what is missing
    s->feed->close();
    if (int rc = s->join_engine(); rc != VMSYNTH_OK) return rc;
    s->succeed(*s->feed);
    return VMSYNTH_OK;
  } catch (...) {
    return s->fail();
  }
}

int vmsynth_synth_finish_from(vmsynth_synth* s, const char* source) {
  if (s == nullptr) return VMSYNTH_E_USAGE;
  if (s->state == vmsynth_synth::State::kFailed) return s->status;
  if (s->state == vmsynth_synth::State::kFinished) return after_finish(s, "finish_from");
  try {
    const std::string spec = str_arg(source, "source");
    if (s->state != vmsynth_synth::State::kOpen) {
      throw Error(ErrorCode::kUsage, "finish_from: bytes were already fed to this synthesis; use finish");
    }
    s->state = vmsynth_synth::State::kFeeding;
    if (s->opts.source_size == 0) s->opts.source_size = vmsynth::io::regular_file_size(spec).value_or(0);
    if (spec != "-" && spec.find("://") == std::string::npos) s->opts.overlay_path = spec;
    auto src = vmsynth::io::open_source(spec, s->token.stop_check());
    s->stats = vmsynth::synthesize(*src, s->opts);
    s->succeed(*src);
    return VMSYNTH_OK;
  } catch (...) {
    return s->fail();
  }
}

void vmsynth_synth_cancel(vmsynth_synth* s) {
  if (s != nullptr) s->token.request();
}

const char* vmsynth_synth_error(const vmsynth_synth* s) { return s != nullptr ? s->error.c_str() : ""; }

int vmsynth_synth_stats_json(const vmsynth_synth* s, char** json) {
  if (s == nullptr || json == nullptr) return VMSYNTH_E_USAGE;
  *json = nullptr;
  if (s->state != vmsynth_synth::State::kFinished) return VMSYNTH_E_USAGE;
  *json = give(s->result);
  return *json != nullptr ? VMSYNTH_OK : VMSYNTH_E_INTERNAL;
}

void vmsynth_synth_free(vmsynth_synth* s) {
  if (s == nullptr) return;
  if (s->engine.joinable()) {
    // Unfinished: make the engine's next read fail, so it removes its staging
    // whatever it has been fed (a complete overlay must not be committed).
    s->feed->abort();
    s->engine.join();
  }
  delete s;
}

// ---- One-call operations ----------------------------------------------------

int vmsynth_synthesize(const char* base_dir, const char* overlay, const char* out_dir, const vmsynth_params* p,
                       char** result_json) {
  vmsynth_synth* s = nullptr;
  int rc = vmsynth_synth_open(&s, base_dir, out_dir, p);
  if (rc == VMSYNTH_OK) rc = vmsynth_synth_finish_from(s, overlay);
  if (result_json != nullptr) *result_json = nullptr;
  if (s == nullptr) return rc;
  if (result_json != nullptr) {
    try {
      *result_json = give(rc == VMSYNTH_OK ? s->result : s->error_json.dump(2));
    } catch (...) {
    }
  }
  vmsynth_synth_free(s);
  return rc;
}

int vmsynth_overlay_create(const char* base_dir, const char* launch_dir, const char* overlay_path,
                           const vmsynth_params* p, char** result_json) {
  return one_call(result_json, [&] {
    const vmsynth::CreateOptions o =
        vmsynth::lib::create_options(vmsynth::lib::params_or_defaults(p), str_arg(base_dir, "base_dir"),
                                     str_arg(launch_dir, "launch_dir"), str_arg(overlay_path, "overlay_path"));
    return vmsynth::lib::create_json(vmsynth::create_overlay(o), o);
  });
}

int vmsynth_overlay_info(const char* overlay, const vmsynth_params* p, char** result_json) {
  return one_call(result_json, [&] {
    const vmsynth_params& params = vmsynth::lib::params_or_defaults(p);
    const vmsynth::CancelToken* token = params.cancel != nullptr ? &params.cancel->token : nullptr;
    auto src = vmsynth::io::open_source(str_arg(overlay, "overlay"),
                                        token != nullptr ? token->stop_check() : vmsynth::io::StopCheck{});
    return vmsynth::lib::info_json(vmsynth::inspect_overlay(*src, vmsynth::lib::key_spec(params)));
  });
}

static_assert(VMSYNTH_OVERLAY_HEADER_BYTES == vmsynth::format::kFileHeaderSize);

int vmsynth_overlay_header(const void* data, size_t len, char** result_json) {
  return one_call(result_json, [&] {
    if (data == nullptr && len > 0) throw vmsynth::Error(vmsynth::ErrorCode::kUsage, "data is NULL");
    if (len < vmsynth::format::kFileHeaderSize) {
      throw vmsynth::Error(vmsynth::ErrorCode::kCorrupt, "overlay truncated: its file header is " +
                                                             std::to_string(vmsynth::format::kFileHeaderSize) +
                                                             " bytes, only " + std::to_string(len) + " given");
    }
    const auto* bytes = static_cast<const std::byte*>(data);
    return vmsynth::lib::header_json(vmsynth::format::decode_file_header(
        std::span<const std::byte, vmsynth::format::kFileHeaderSize>(bytes, vmsynth::format::kFileHeaderSize)));
  });
}

int vmsynth_base_id(const char* base_dir, const vmsynth_params* p, char** result_json) {
  return one_call(result_json, [&]() -> nlohmann::json {
    const vmsynth_params& params = vmsynth::lib::params_or_defaults(p);
    const vmsynth::VmDir base{str_arg(base_dir, "base_dir")};
    vmsynth::check_vm_dir(base, "base");
    const vmsynth::Hash128 id = vmsynth::compute_base_id(base, {params.base_id_cache, params.cache_dir});
    return {{"ok", true}, {"base_dir", base.path}, {"base_id", id.hex()}};
  });
}

}  // extern "C"
