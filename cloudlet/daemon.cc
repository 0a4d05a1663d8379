#include "cloudlet/daemon.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "cloudlet/bases.h"
#include "cloudlet/client.h"
#include "cloudlet/discovery.h"
#include "cloudlet/metrics.h"
#include "cloudlet/tokens.h"
#include "cloudlet/vm_registry.h"
#include "common/error.h"
#include "vm/machine_policy.h"
#include "vm/machine_spec.h"
#include "vm/vm_control.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth::cloudlet {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A failure as the API reports it: HTTP status, stable code, words.
struct Failure {
  int status = 500;
  std::string code;
  std::string message;
};

// The library's status -> the API's error code and HTTP status.
Failure failure_from_status(int rc, std::string message) {
  std::string code = vmsynth_status_name(rc);
  std::replace(code.begin(), code.end(), '-', '_');
  int status = 500;
  switch (rc) {
    case VMSYNTH_E_USAGE:
    case VMSYNTH_E_CORRUPT:
    case VMSYNTH_E_WRONG_KEY:
      status = 400;
      break;
    case VMSYNTH_E_WRONG_BASE:
    case VMSYNTH_E_EXISTS:
      status = 409;
      break;
    case VMSYNTH_E_UNSUPPORTED:
      status = 422;
      break;
    case VMSYNTH_E_CANCELLED:
      status = 503;
      break;
    default:
      status = 500;
      break;
  }
  if (message.find(std::strerror(ENOSPC)) != std::string::npos) {
    status = 507;
    code = "no_space";
  }
  return {status, code, std::move(message)};
}

Failure failure_from_error(const Error& e) {
  static_assert(VMSYNTH_E_USAGE == static_cast<int>(ErrorCode::kUsage));
  return failure_from_status(static_cast<int>(e.code()), e.message());
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(2) + "\n", "application/json");
}

void send_failure(httplib::Response& res, const Failure& f) {
  send_json(res, f.status, {{"error", {{"code", f.code}, {"message", f.message}}}});
}

struct ParamsDeleter {
  void operator()(vmsynth_params* p) const { vmsynth_params_free(p); }
};
struct SynthDeleter {
  void operator()(vmsynth_synth* s) const { vmsynth_synth_free(s); }
};
using ParamsPtr = std::unique_ptr<vmsynth_params, ParamsDeleter>;
using SynthPtr = std::unique_ptr<vmsynth_synth, SynthDeleter>;

// Free bytes for an unprivileged writer on the file system holding `path`.
uint64_t free_bytes(const std::string& path) {
  struct statvfs s {};
  if (::statvfs(path.c_str(), &s) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

// Shuts down the socket of the connection from peer (addr, port), found
// among this process's descriptors: the HTTP library does not hand out its
// sockets, and a handler blocked reading a silent client must be woken.
void shutdown_peer_socket(const std::string& addr, int port) {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) continue;
    char host[INET6_ADDRSTRLEN] = {};
    int p = -1;
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      p = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      p = ntohs(a->sin6_port);
    }
    if (p == port && addr == host) ::shutdown(fd, SHUT_RDWR);
  }
  ::closedir(d);
}

}  // namespace

// ---- Sessions -----------------------------------------------------------

// One overlay upload, from its first request byte to its response.
struct Session {
  std::string id;  // the VM id it will have
  std::string peer_addr;
  int peer_port = -1;
  std::string token_name;
  uint64_t content_length = 0;  // 0: chunked
  int64_t started_unix_ms = unix_ms();
  std::atomic<uint64_t> received{0};

  mutable std::mutex mu;
  std::string state = "receiving";  // receiving | synthesizing | launching
  std::string phase;                // the library's phase
  uint64_t done = 0, total = 0;

  json to_json() const {
    std::lock_guard lock(mu);
    return {{"id", id},
            {"peer", peer_addr},
            {"state", state},
            {"bytes_received", received.load()},
            {"content_length", content_length},
            {"phase", phase},
            {"done", done},
            {"total", total},
            {"started_unix_ms", started_unix_ms}};
  }
};

struct Daemon::Impl {
  DaemonConfig cfg;
  Log log;
  TokenStore tokens;
  BaseRegistry bases;
  std::unique_ptr<VmRegistry> vms;
  Metrics metrics;
  std::string cache_dir;
  std::unique_ptr<httplib::Server> server;
  int port = 0;
  bool tls = false;
  int listen_fd = -1;             // the library's listening socket (see bind())
  std::optional<uid_t> qemu_uid;  // --qemu-user
  gid_t qemu_gid = 0;

  vmsynth_cancel* group_cancel = nullptr;  // every session follows it
  std::atomic<bool> draining{false};
  std::mutex sessions_mu;
  std::condition_variable sessions_cv;
  std::map<std::string, std::shared_ptr<Session>> sessions;
  std::thread drain_thread;
  std::unique_ptr<Publisher> publisher;  // --mdns

  Impl(DaemonConfig c, Log l) : cfg(std::move(c)), log(std::move(l)) {}

  // -- request plumbing --

  std::optional<Failure> authorize(const httplib::Request& req, std::string* name = nullptr) const {
    const AuthDecision d = tokens.check(req.get_header_value("Authorization"));
    if (d.result == AuthResult::kMissing) {
      return Failure{401, "unauthorized", "this cloudlet needs a bearer token (Authorization: Bearer TOKEN)"};
    }
    if (d.result == AuthResult::kWrong)
      return Failure{403, "forbidden", "the bearer token is not one of this cloudlet's"};
    if (name != nullptr) *name = d.name;
    return std::nullopt;
  }

  struct PostOptions {
    bool launch = false;
    std::string disk_format = "raw";
  };

  static std::optional<Failure> parse_post(const httplib::Request& req, PostOptions& o) {
    for (const auto& [k, v] : req.params) {
      if (k == "launch") {
        if (v != "true" && v != "false" && v != "1" && v != "0") {
          return Failure{400, "usage", "launch='" + v + "': expected true or false"};
        }
        o.launch = v == "true" || v == "1";
      } else if (k == "disk_format") {
        if (v != "raw" && v != "qcow2") return Failure{400, "usage", "disk_format='" + v + "': expected raw or qcow2"};
        o.disk_format = v;
      } else {
        return Failure{400, "usage", "unknown query parameter '" + k + "'; known: launch, disk_format"};
      }
    }
    return std::nullopt;
  }

  uint64_t declared_length(const httplib::Request& req) const {
    if (!req.has_header("Content-Length")) return 0;
    try {
      return std::stoull(req.get_header_value("Content-Length"));
    } catch (...) {
      return 0;
    }
  }

  Failure busy_failure() const {
    return {503, "busy",
            "this cloudlet is receiving " + std::to_string(cfg.max_sessions) +
                " overlays already (--max-sessions); retry later"};
  }

  // What can be decided from the headers alone, before any body byte is
  // read (also the answer to `Expect: 100-continue`).
  std::optional<Failure> precheck_post(const httplib::Request& req) {
    if (draining) return Failure{503, "shutting_down", "this cloudlet is shutting down"};
    if (auto f = authorize(req)) return f;
    PostOptions o;
    if (auto f = parse_post(req, o)) return f;
    const uint64_t len = declared_length(req);
    if (len > cfg.max_overlay_bytes) {
      return Failure{413, "too_large",
                     "the overlay is " + std::to_string(len) + " bytes; this cloudlet takes at most " +
                         std::to_string(cfg.max_overlay_bytes) + " (--max-overlay-bytes)"};
    }
    if (metrics.sessions_in_flight() >= static_cast<int64_t>(cfg.max_sessions)) return busy_failure();
    if (len > 0 && len > free_bytes(vms->vms_dir())) {
      return Failure{507, "no_space",
                     "the overlay is " + std::to_string(len) + " bytes; the state directory has " +
                         std::to_string(free_bytes(vms->vms_dir())) + " free"};
    }
    return std::nullopt;
  }

  // Space the launch VM of `header` needs, checked before synthesis starts.
  std::optional<Failure> check_space(const json& header, const BaseVm& base) const {
    // Raw images are clones of the base plus the changed blocks: at most the
    // launch size beyond what the base already occupies (a reflink clone
    // costs nothing until written); the overlay's own size bounds the
    // changed blocks in practice, but a zero-heavy overlay can grow, so the
    // bound is the launch images' size.
    const uint64_t need =
        header.value("launch_memory_bytes", uint64_t{0}) + header.value("launch_disk_bytes", uint64_t{0});
    const uint64_t free = free_bytes(vms->vms_dir());
    const uint64_t estimate = need > base.allocated_bytes ? need - base.allocated_bytes : 0;
    if (estimate > free) {
      return Failure{507, "no_space",
                     "the launch VM needs up to " + std::to_string(estimate) + " bytes; the state directory has " +
                         std::to_string(free) + " free"};
    }
    if (cfg.max_state_bytes > 0) {
      const uint64_t used = vms->allocated_bytes();
      if (used + need > cfg.max_state_bytes) {
        return Failure{507, "no_space",
                       "the state directory holds " + std::to_string(used) + " bytes of VMs; this one (" +
                           std::to_string(need) + ") would pass --max-state-bytes " +
                           std::to_string(cfg.max_state_bytes) + "; delete VMs first"};
      }
    }
    return std::nullopt;
  }

  // -- sessions --

  std::shared_ptr<Session> start_session(const httplib::Request& req, std::string token_name) {
    auto s = std::make_shared<Session>();
    s->id = vms->new_id();
    s->peer_addr = req.remote_addr;
    s->peer_port = req.remote_port;
    s->token_name = std::move(token_name);
    s->content_length = declared_length(req);
    std::lock_guard lock(sessions_mu);
    // The precheck's count was advisory; this one, under the lock, decides.
    if (sessions.size() >= cfg.max_sessions) return nullptr;
    sessions[s->id] = s;
    metrics.session_started();
    return s;
  }

  void end_session(const std::shared_ptr<Session>& s) {
    bool idle = false;
    {
      std::lock_guard lock(sessions_mu);
      sessions.erase(s->id);
      metrics.session_ended();
      idle = sessions.empty();
    }
    sessions_cv.notify_all();
    // Each session's buffers (feed ring, frames) come from malloc arenas
    // that glibc keeps after they are freed; hand them back when idle, or a
    // daemon that once ran 8 syntheses holds their peak for good.
    if (idle) ::malloc_trim(0);
  }

  static void on_progress(void* ctx, const char* phase, uint64_t done, uint64_t total) {
    auto* s = static_cast<Session*>(ctx);
    std::lock_guard lock(s->mu);
    s->state = "synthesizing";
    s->phase = phase;
    s->done = done;
    s->total = total;
  }

  ParamsPtr session_params(Session& s, const httplib::Request& req, const PostOptions& o, Failure& why) const {
    ParamsPtr p(vmsynth_params_new());
    if (!p) throw std::bad_alloc();
    auto set = [&](const char* name, const std::string& value) {
      if (vmsynth_params_set(p.get(), name, value.c_str()) != VMSYNTH_OK) {
        why = {400, "usage", vmsynth_params_error(p.get())};
        return false;
      }
      return true;
    };
    if (!set("threads", std::to_string(cfg.threads)) || !set("disk_format", o.disk_format) ||
        !set("cache_dir", cache_dir) || !set("overlay_size", std::to_string(s.content_length))) {
      return nullptr;
    }
    // An encrypted overlay's key comes with it, in a header (use TLS).
    if (req.has_header("X-Vmsynth-Key") && !set("key", req.get_header_value("X-Vmsynth-Key"))) return nullptr;
    if (req.has_header("X-Vmsynth-Passphrase") && !set("passphrase", req.get_header_value("X-Vmsynth-Passphrase"))) {
      return nullptr;
    }
    vmsynth_params_set_phase_progress(p.get(), &Impl::on_progress, &s);
    vmsynth_params_set_cancel(p.get(), group_cancel);
    return p;
  }

  // POST /v1/vms: receive, synthesize while receiving, maybe launch.
  void post_vm(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
    res.set_header("Connection", "close");  // a refused body is not read to its end
    if (auto f = precheck_post(req)) return send_failure(res, *f);
    std::string token_name;
    authorize(req, &token_name);
    PostOptions opt;
    parse_post(req, opt);
    std::shared_ptr<Session> s = start_session(req, token_name);
    if (!s) return send_failure(res, busy_failure());
    struct Ender {
      Impl* impl;
      std::shared_ptr<Session> s;
      ~Ender() { impl->end_session(s); }
    } ender{this, s};

    const std::string out_dir = vms->dir_of(s->id);
    std::optional<Failure> fail;
    ParamsPtr params;
    SynthPtr synth;
    const BaseVm* base = nullptr;
    std::string head;
    std::optional<Clock::time_point> first_byte;
    Clock::time_point last_byte{};

    auto open = [&]() -> bool {
      char* hj = nullptr;
      const int rc = vmsynth_overlay_header(head.data(), head.size(), &hj);
      const json header = json::parse(hj != nullptr ? hj : "{}", nullptr, false);
      vmsynth_free(hj);
      if (rc != VMSYNTH_OK) {
        fail = failure_from_status(rc, header.is_object() && header.contains("error")
                                           ? header["error"].value("message", "")
                                           : "bad overlay header");
        return false;
      }
      if (header.value("encrypted", false) && !req.has_header("X-Vmsynth-Key") &&
          !req.has_header("X-Vmsynth-Passphrase")) {
        fail = Failure{400, "wrong_key",
                       "this overlay is encrypted: give its key in the header X-Vmsynth-Key (64 hex digits) or "
                       "X-Vmsynth-Passphrase"};
        return false;
      }
      base = bases.find(header.value("base_id", ""));
      if (base == nullptr) {
        fail = Failure{409, "wrong_base",
                       "this overlay was made for base VM " + header.value("base_id", "") +
                           ", which this cloudlet does not hold (GET /v1/bases lists those it does)"};
        return false;
      }
      if (auto f = check_space(header, *base)) {
        fail = f;
        return false;
      }
      Failure why;
      params = session_params(*s, req, opt, why);
      if (!params) {
        fail = why;
        return false;
      }
      vmsynth_synth* raw = nullptr;
      const int orc = vmsynth_synth_open(&raw, base->dir.c_str(), out_dir.c_str(), params.get());
      synth.reset(raw);
      if (orc != VMSYNTH_OK) {
        fail = failure_from_status(orc, raw != nullptr ? vmsynth_synth_error(raw) : "out of memory");
        return false;
      }
      std::lock_guard lock(s->mu);
      s->state = "synthesizing";
      return true;
    };
    auto feed = [&](const char* data, size_t n) -> bool {
      const int rc = vmsynth_synth_feed(synth.get(), data, n);
      if (rc != VMSYNTH_OK) {
        fail = failure_from_status(rc, vmsynth_synth_error(synth.get()));
        return false;
      }
      return true;
    };

    // A refusal found mid-body drops the staging at once and reads the rest
    // of the body (bounded by --max-overlay-bytes below) to drop it: a client
    // still sending (one that did not wait for 100-continue) then reads the
    // answer instead of a connection reset.
    auto refused = [&] {
      synth.reset();
      return true;
    };
    const bool body_ok = reader([&](const char* data, size_t n) {
      const auto now = Clock::now();
      if (!first_byte) first_byte = now;
      last_byte = now;
      s->received += n;
      metrics.add_received(n);
      if (s->received > cfg.max_overlay_bytes) {
        fail = Failure{413, "too_large",
                       "the overlay passed " + std::to_string(cfg.max_overlay_bytes) + " bytes (--max-overlay-bytes)"};
        return false;
      }
      if (fail) return true;
      if (!synth) {
        const size_t take = std::min(n, VMSYNTH_OVERLAY_HEADER_BYTES - head.size());
        head.append(data, take);
        if (head.size() < VMSYNTH_OVERLAY_HEADER_BYTES) return true;
        if (!open() || !feed(head.data(), head.size())) return refused();
        data += take;
        n -= take;
      }
      return n == 0 || feed(data, n) || refused();
    });

    if (!body_ok && !fail) {
      // The client went away or stalled past --idle-timeout (or shutdown
      // woke the read): nobody is left to answer; drop the staging.
      synth.reset();
      metrics.synthesis_done("disconnected", 0);
      log("session " + s->id + " from " + s->peer_addr + ": the sender stopped after " +
          std::to_string(s->received.load()) + " bytes; staging removed");
      return send_failure(res, {400, "incomplete", "the overlay did not arrive whole"});
    }
    if (!fail && !synth) {
      fail = Failure{400, "corrupt",
                     "overlay truncated: " + std::to_string(head.size()) + " bytes, less than its " +
                         std::to_string(VMSYNTH_OVERLAY_HEADER_BYTES) + "-byte file header"};
    }
    if (!fail) {
      const int rc = vmsynth_synth_finish(synth.get());
      if (rc != VMSYNTH_OK) fail = failure_from_status(rc, vmsynth_synth_error(synth.get()));
    }
    if (fail) {
      synth.reset();  // removes everything staged
      metrics.synthesis_done(fail->code, 0);
      log("session " + s->id + " from " + s->peer_addr + ": " + std::to_string(fail->status) + " " + fail->code + ": " +
          fail->message);
      return send_failure(res, *fail);
    }
    const auto synthesized = Clock::now();
    char* stats_raw = nullptr;
    vmsynth_synth_stats_json(synth.get(), &stats_raw);
    const json stats = json::parse(stats_raw != nullptr ? stats_raw : "{}", nullptr, false);
    vmsynth_free(stats_raw);
    synth.reset();
    const double to_synth = seconds_between(*first_byte, synthesized);
    metrics.synthesis_done("ok", to_synth);

    json record = {{"id", s->id},
                   {"base_id", base->id},
                   {"base_name", base->name},
                   {"dir", out_dir},
                   {"state", "synthesized"},
                   {"disk_format", opt.disk_format},
                   {"overlay_bytes", s->received.load()},
                   {"created_unix_ms", unix_ms()},
                   {"client", s->token_name},
                   {"timings",
                    {{"first_byte_to_synthesized_s", to_synth},
                     {"first_byte_to_last_byte_s", seconds_between(*first_byte, last_byte)},
                     {"last_byte_to_synthesized_s", seconds_between(last_byte, synthesized)}}}};
    if (stats.is_object()) {
      record["synthesis"] = {{"engine", stats.value("engine", "")},
                             {"threads", stats.value("threads", 0)},
                             {"frames", stats.value("frames", 0)},
                             {"blocks_written", stats.value("blocks_written", 0)},
                             {"write_backend", stats.value("write_backend", "")}};
    }
    try {
      vms->put(record);
    } catch (const Error& e) {
      vms->remove_dir(s->id);
      return send_failure(res, failure_from_error(e));
    }
    if (opt.launch) {
      {
        std::lock_guard lock(s->mu);
        s->state = "launching";
      }
      if (auto f = launch(record, *base)) {
        if (f->code == "refused") {
          // A vm.json this cloudlet will not run is refused whole.
          vms->take(s->id);
          vms->remove_dir(s->id);
          metrics.synthesis_done("refused", 0);
          return send_failure(res, *f);
        }
        record["launch_error"] = {{"code", f->code}, {"message", f->message}};
        vms->put(record);
      } else {
        record["timings"]["first_byte_to_running_s"] = seconds_between(*first_byte, Clock::now());
        vms->put(record);
      }
    }
    log("session " + s->id + " from " + s->peer_addr + ": " + record.value("state", "") + " from " +
        std::to_string(s->received.load()) + " bytes in " + std::to_string(to_synth) + " s");
    send_json(res, 201, public_record(record));
  }

  // Launches the synthesized VM of `record` (updated in place). A failure
  // with code "refused" means its vm.json is not acceptable.
  std::optional<Failure> launch(json& record, const BaseVm& base) {
    if (::geteuid() == 0 && !qemu_uid) {
      return Failure{422, "unsupported",
                     "this cloudlet runs as root without --qemu-user, and does not run QEMU as root"};
    }
    const std::string dir = record["dir"].get<std::string>();
    // The sender wrote this vm.json: it must describe the base VM's machine.
    // Checked here, so that a refusal is told apart from a failed launch;
    // resume_vm checks it again against the same base (trusted_base_dir).
    try {
      const vm::VmDescription trusted = vm::load_machine(base.dir, "launched");
      vm::apply_machine_policy(vm::read_vm_json(dir), trusted.spec);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kUnsupported) return failure_from_error(e);  // no machine description
      return Failure{400, "refused", e.message()};
    }
    try {
      vm::ResumeOptions ro;
      ro.trusted_base_dir = base.dir;
      vm::Confinement c;
      if (qemu_uid) {
        c.uid = *qemu_uid;
        c.gid = qemu_gid;
      }
      ro.confinement = c;
      const vm::ResumeResult r = vm::resume_vm(dir, ro);
      record["state"] = "running";
      record["launch"] = {{"pid", r.pid},
                          {"accelerator", std::string(vm::accel_name(r.accel))},
                          {"resume_ms", r.resume_ms},
                          {"sandboxed", r.sandboxed},
                          {"uid", r.uid},
                          {"limits", r.limits}};
      return std::nullopt;
    } catch (const Error& e) {
      return failure_from_error(e);
    }
  }

  // The record as clients see it (the issue's POST response fields first).
  static json public_record(const json& r) {
    json j = r;
    j.erase("client");
    return j;
  }

  // The record with what QEMU says now; a VM that died is marked stopped.
  json live_record(json r) {
    const std::string dir = r.value("dir", "");
    json qemu = {{"running", false}};
    try {
      const vm::VmStatus st = vm::query_vm(dir);
      qemu = {{"running", st.running}, {"pid", st.pid}, {"status", st.qmp_status}};
    } catch (const Error& e) {
      qemu["error"] = e.message();
    }
    if (r.value("state", "") == "running" && !qemu.value("running", false)) {
      r["state"] = "stopped";
      try {
        vms->put(r);
      } catch (const Error&) {
      }
    }
    r["qemu"] = qemu;
    uint64_t allocated = 0;
    json sizes = json::object();
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      struct stat st {};
      if (::lstat(it->path().c_str(), &st) != 0) continue;
      allocated += static_cast<uint64_t>(st.st_blocks) * 512;
      const std::string name = it->path().filename().string();
      if (name == "memory.img") sizes["memory_bytes"] = st.st_size;
      if (name == "disk.img" || name == "disk.qcow2") sizes["disk_file_bytes"] = st.st_size;
    }
    sizes["allocated_bytes"] = allocated;
    r["sizes"] = sizes;
    return public_record(r);
  }

  int64_t running_vms() const {
    int64_t n = 0;
    for (const json& r : vms->list()) n += r.value("state", "") == "running";
    return n;
  }

  // -- routes --

  void routes() {
    httplib::Server& s = *server;
    s.Get("/v1/health", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"status", draining ? "draining" : "ok"}, {"version", vmsynth_version_string()}});
    });
    s.Get("/v1/bases", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      json a = json::array();
      for (const BaseVm& b : bases.all()) {
        a.push_back({{"id", b.id}, {"name", b.name}, {"memory_bytes", b.memory_bytes}, {"disk_bytes", b.disk_bytes}});
      }
      send_json(res, 200, a);
    });
    s.Post("/v1/vms", [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& r) {
      post_vm(req, res, r);
    });
    s.Get("/v1/vms", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      json a = json::array();
      for (const json& r : vms->list()) a.push_back(live_record(r));
      send_json(res, 200, a);
    });
    s.Get(R"(/v1/vms/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      const std::string id = req.matches[1];
      auto r = valid_id(id) ? vms->get(id) : std::nullopt;
      if (!r) return send_failure(res, {404, "not_found", "no VM '" + id + "' on this cloudlet"});
      send_json(res, 200, live_record(*r));
    });
    s.Delete(R"(/v1/vms/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      const std::string id = req.matches[1];
      auto r = valid_id(id) ? vms->take(id) : std::nullopt;
      if (!r) return send_failure(res, {404, "not_found", "no VM '" + id + "' on this cloudlet"});
      stop_quietly(*r);
      try {
        vms->remove_dir(id);
      } catch (const Error& e) {
        return send_failure(res, failure_from_error(e));
      }
      log("deleted VM " + id);
      res.status = 204;
    });
    s.Get("/v1/sessions", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      json a = json::array();
      std::lock_guard lock(sessions_mu);
      for (const auto& [id, sess] : sessions) a.push_back(sess->to_json());
      send_json(res, 200, a);
    });
    s.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto f = authorize(req)) return send_failure(res, *f);
      res.set_content(metrics.render(running_vms()), "text/plain; version=0.0.4");
    });
    s.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.method == "POST" && req.path == "/v1/vms") {
        if (auto f = precheck_post(req)) {
          send_failure(res, *f);
          res.set_header("Connection", "close");
          return f->status;
        }
      }
      return 100;
    });
    s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && res.body.empty()) {
        send_failure(res, {404, "not_found", "no such endpoint: " + req.method + " " + req.path});
      } else if (res.body.empty() && res.status == 400) {
        // The library refused the request before routing it.
        send_failure(res, {400, "usage", "malformed HTTP request, or its header block is over 8 KiB"});
      } else if (res.body.empty()) {
        send_failure(res, {res.status, "http", "HTTP error " + std::to_string(res.status)});
      }
    });
    s.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const Error& e) {
        send_failure(res, failure_from_error(e));
        return;
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log(req.method + " " + req.path + ": " + what);
      send_failure(res, {500, "internal", what});
    });
    s.set_logger([this](const httplib::Request&, const httplib::Response& res) { metrics.request_done(res.status); });
  }

  void stop_quietly(const json& r) {
    try {
      vm::stop_vm(r.value("dir", ""));
      log("stopped the VM of " + r.value("id", ""));
    } catch (const Error&) {
      // not running (or no machine description): nothing to stop
    }
  }

  void recover() {
    vms->recover(log);
    for (json r : vms->list()) {
      if (r.value("state", "") != "running") continue;
      bool running = false;
      try {
        running = vm::query_vm(r.value("dir", "")).running;
      } catch (const Error&) {
      }
      if (running) {
        log("found VM " + r.value("id", "") + " still running");
      } else {
        r["state"] = "stopped";
        vms->put(r);
        log("VM " + r.value("id", "") + " had stopped while the daemon was down");
      }
    }
  }
};

Daemon::Daemon(DaemonConfig cfg, Log log) : impl_(std::make_unique<Impl>(std::move(cfg), std::move(log))) {
  Impl& d = *impl_;
  if (d.cfg.state_dir.empty()) throw Error(ErrorCode::kUsage, "--state DIR is required");
  if (d.cfg.bases_dir.empty()) throw Error(ErrorCode::kUsage, "--bases DIR is required");
  if (std::error_code ec; !fs::is_directory(d.cfg.bases_dir, ec)) {
    throw Error(ErrorCode::kUsage, "--bases '" + d.cfg.bases_dir + "' is not a directory");
  }
  if (d.cfg.max_sessions == 0) throw Error(ErrorCode::kUsage, "--max-sessions must be at least 1");
  if (!d.cfg.token_file.empty()) d.tokens = TokenStore::load(d.cfg.token_file);
  if (!d.tokens.enabled() && !is_loopback(d.cfg.listen_host)) {
    throw Error(ErrorCode::kUsage, "refusing to listen on " + d.cfg.listen_host +
                                       " without --token-file: anyone who reaches it could make this host "
                                       "synthesize and run VMs (bind 127.0.0.1, or give tokens)");
  }
  if (d.cfg.tls_cert.empty() != d.cfg.tls_key.empty()) {
    throw Error(ErrorCode::kUsage, "--tls-cert and --tls-key go together");
  }
  if (!d.cfg.qemu_user.empty()) {
    const passwd* pw = ::getpwnam(d.cfg.qemu_user.c_str());
    if (pw == nullptr) throw Error(ErrorCode::kUsage, "--qemu-user '" + d.cfg.qemu_user + "': no such user");
    if (pw->pw_uid == 0) throw Error(ErrorCode::kUsage, "--qemu-user '" + d.cfg.qemu_user + "' is root");
    if (::geteuid() != 0 && pw->pw_uid != ::geteuid()) {
      throw Error(ErrorCode::kUsage,
                  "--qemu-user '" + d.cfg.qemu_user + "' needs vmsynthd to run as root (it switches QEMU's user)");
    }
    d.qemu_uid = pw->pw_uid;
    d.qemu_gid = pw->pw_gid;
  }
  std::error_code ec;
  fs::create_directories(d.cfg.state_dir, ec);
  if (ec) throw Error(ErrorCode::kUsage, "cannot create --state '" + d.cfg.state_dir + "': " + ec.message());
  d.cfg.state_dir = fs::absolute(d.cfg.state_dir).lexically_normal().string();
  d.cache_dir = d.cfg.state_dir + "/cache";
  fs::create_directories(d.cache_dir, ec);
  d.vms = std::make_unique<VmRegistry>(d.cfg.state_dir + "/vms");
  d.recover();
  d.bases = BaseRegistry::scan(d.cfg.bases_dir, d.cache_dir, d.log);
  d.log("holding " + std::to_string(d.bases.all().size()) + " base VM(s) from " + d.cfg.bases_dir);
  d.group_cancel = vmsynth_cancel_new();
  if (d.group_cancel == nullptr) throw std::bad_alloc();

  if (!d.cfg.tls_cert.empty()) {
    auto ssl = std::make_unique<httplib::SSLServer>(d.cfg.tls_cert.c_str(), d.cfg.tls_key.c_str());
    if (!ssl->is_valid()) {
      throw Error(ErrorCode::kUsage, "cannot use --tls-cert '" + d.cfg.tls_cert + "' with --tls-key '" + d.cfg.tls_key +
                                         "' (unreadable, not PEM, or not a matching pair)");
    }
    d.server = std::move(ssl);
    d.tls = true;
  } else {
    d.server = std::make_unique<httplib::Server>();
  }
  // One thread per connection up to this many; uploads hold theirs for
  // their whole duration, so health checks and status requests keep room.
  const size_t workers = std::max<size_t>(64, d.cfg.max_sessions + 48);
  d.server->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  d.server->set_read_timeout(d.cfg.idle_timeout);
  d.server->set_write_timeout(d.cfg.idle_timeout);
  d.server->set_keep_alive_timeout(5);
  d.server->set_payload_max_length(d.cfg.max_overlay_bytes);
  d.server->set_tcp_nodelay(true);
  // The library listens with a backlog of 5 (compiled into Debian's build):
  // 64 clients connecting at once overflow it and wait for SYN retransmits
  // (1 s, 3 s, ...). Its socket-options hook sees the listening socket
  // before bind, so the socket is kept and bind() listens again on it with
  // the system's limit. Address reuse as the library's default sets it, but
  // not SO_REUSEPORT: no other process may bind the daemon's port.
  d.server->set_socket_options([&d](int fd) {
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    d.listen_fd = fd;
  });
  if (!d.tls && !is_loopback(d.cfg.listen_host)) {
    d.log("notice: serving " + d.cfg.listen_host +
          " without TLS: tokens, keys and unencrypted overlays cross the network in the clear (--tls-cert/--tls-key)");
  }
  d.routes();
}

Daemon::~Daemon() {
  if (impl_->drain_thread.joinable()) impl_->drain_thread.join();
  vmsynth_cancel_free(impl_->group_cancel);
}

int Daemon::bind() {
  Impl& d = *impl_;
  if (d.cfg.listen_port == 0) {
    d.port = d.server->bind_to_any_port(d.cfg.listen_host);
    if (d.port <= 0) throw Error(ErrorCode::kIo, "cannot listen on " + d.cfg.listen_host);
  } else {
    if (!d.server->bind_to_port(d.cfg.listen_host, d.cfg.listen_port)) {
      throw Error(ErrorCode::kIo, "cannot listen on " + d.cfg.listen_host + ":" + std::to_string(d.cfg.listen_port) +
                                      " (in use, or not an address of this host)");
    }
    d.port = d.cfg.listen_port;
  }
  if (d.listen_fd >= 0 && ::listen(d.listen_fd, SOMAXCONN) != 0) {
    d.log("notice: cannot raise the listen backlog: " + std::string(std::strerror(errno)));
  }
  if (d.cfg.mdns) {
    // Published once the port is known; avahi-daemon's absence is a notice,
    // never a reason not to serve.
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::string name = std::string("vmsynthd on ") + host;
    if (name.size() > 63) name.resize(63);
    Publisher::Options o;
    o.name = name;
    o.port = static_cast<std::uint16_t>(d.port);
    o.tls = d.tls;
    o.base_ids = d.bases.ids();
    o.notice = [log = d.log](const std::string& m) { log("mdns: " + m); };
    d.publisher = std::make_unique<Publisher>(std::move(o));
  }
  return d.port;
}

void Daemon::serve() { impl_->server->listen_after_bind(); }

void Daemon::shutdown() {
  Impl& d = *impl_;
  if (d.draining.exchange(true)) return;
  d.log("shutting down: no new sessions; " + std::to_string(d.metrics.sessions_in_flight()) + " in flight get " +
        std::to_string(d.cfg.drain_timeout.count()) + " s");
  d.publisher.reset();  // withdrawn first: clients stop finding a cloudlet that is going
  // The listener closes now; serve() returns once the worker threads have
  // finished what they are doing, which the drain thread bounds.
  d.server->stop();
  d.drain_thread = std::thread([&d] {
    std::unique_lock lock(d.sessions_mu);
    if (!d.sessions_cv.wait_for(lock, d.cfg.drain_timeout, [&] { return d.sessions.empty(); })) {
      d.log("drain time is up: cancelling " + std::to_string(d.sessions.size()) + " session(s)");
      vmsynth_cancel_request(d.group_cancel);
      for (const auto& [id, s] : d.sessions) shutdown_peer_socket(s->peer_addr, s->peer_port);
    }
  });
}

void Daemon::stop_vms() {
  Impl& d = *impl_;
  // In parallel: each stop may wait seconds for QEMU (QMP quit, then signals).
  std::vector<std::thread> stoppers;
  for (json r : d.vms->list()) {
    if (r.value("state", "") != "running") continue;
    stoppers.emplace_back([&d, r]() mutable {
      d.stop_quietly(r);
      r["state"] = "stopped";
      try {
        d.vms->put(r);
      } catch (const Error& e) {
        d.log(e.message());
      }
    });
  }
  for (std::thread& t : stoppers) t.join();
}

std::string Daemon::url() const {
  const Impl& d = *impl_;
  const bool v6 = d.cfg.listen_host.find(':') != std::string::npos;
  return std::string(d.tls ? "https://" : "http://") + (v6 ? "[" + d.cfg.listen_host + "]" : d.cfg.listen_host) + ":" +
         std::to_string(d.port);
}

}  // namespace vmsynth::cloudlet
