// The public C API (include/vmsynth/vmsynth.h) against its header's contract,
// linked with the static vmsynth_api library so that it runs in every build
// configuration, the ASan/UBSan and TSan builds included. The installed
// shared library is exercised from C by tests/consumer/.
//
// Test data are small pairs made in-process (tests/engine/synthesis_test_util.h);
// under ThreadSanitizer test setup runs on one thread, and so do the overlay
// creations the tests ask the library for ("threads" "1"), so that reports
// concern the code under test rather than an uninstrumented libtbb.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/synthesis_test_util.h"
#include "testutil/vm_files.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth {
namespace {

using testutil::TempDir;
using Bytes = std::vector<std::byte>;
using Json = nlohmann::json;

constexpr uint64_t kMiB = 1 << 20;

// ---- RAII owners for the C handles ------------------------------------------

struct SynthFree {
  void operator()(vmsynth_synth* s) const { vmsynth_synth_free(s); }
};
struct ParamsFree {
  void operator()(vmsynth_params* p) const { vmsynth_params_free(p); }
};
struct CancelFree {
  void operator()(vmsynth_cancel* c) const { vmsynth_cancel_free(c); }
};
using Synth = std::unique_ptr<vmsynth_synth, SynthFree>;
using Params = std::unique_ptr<vmsynth_params, ParamsFree>;
using Cancel = std::unique_ptr<vmsynth_cancel, CancelFree>;

Params new_params() {
  Params p(vmsynth_params_new());
  if (!p) throw std::runtime_error("vmsynth_params_new returned NULL");
  return p;
}

// Sets name=value, failing the test (not returning) if it is refused.
void set(vmsynth_params* p, const char* name, const char* value) {
  ASSERT_EQ(vmsynth_params_set(p, name, value), VMSYNTH_OK) << name << "=" << value;
}

// Params for overlay creation: one thread under TSan (see the file comment).
Params create_params() {
  Params p = new_params();
  if (testutil::kThreadSanitizer) {
    EXPECT_EQ(vmsynth_params_set(p.get(), "threads", "1"), VMSYNTH_OK);
  }
  return p;
}

// The result of a one-call operation: its status and its parsed JSON.
struct CallResult {
  int status = -1;
  Json json;
};

// Runs fn() on this thread; under ThreadSanitizer in a one-thread arena, so
// that the oneTBB loops a one-call operation runs on its caller's thread (the
// base id, engine/base_id.cc) are serial and not reported against an
// uninstrumented libtbb (as testutil::run_synthesis does for the engine).
template <typename Fn>
auto on_caller_arena(Fn&& fn) {
  if (!testutil::kThreadSanitizer) return fn();
  tbb::task_arena one(1);
  return one.execute(fn);
}

// Calls fn(&json) (a one-call operation) and parses what it stored.
template <typename Fn>
CallResult call_json(Fn&& fn) {
  char* text = nullptr;
  CallResult r;
  r.status = on_caller_arena([&] { return fn(&text); });
  r.json = Json::object();
  if (text == nullptr) {
    ADD_FAILURE() << "no result JSON (status " << r.status << ")";
    return r;
  }
  std::string s(text);
  vmsynth_free(text);
  try {
    r.json = Json::parse(s);
    if (!r.json.is_object()) throw std::runtime_error("not an object");
  } catch (const std::exception& e) {
    r.json = Json::object();
    ADD_FAILURE() << "result is not JSON (" << e.what() << "): " << s;
  }
  return r;
}

// Empty if nothing is at out_dir and no staging entry (".<name>...") is
// beside it, else what is there.
std::string leftovers(const std::string& out_dir) {
  std::string found;
  if (std::filesystem::exists(std::filesystem::symlink_status(out_dir))) found += out_dir + " exists; ";
  std::filesystem::path p(out_dir);
  for (const auto& n : testutil::entries_with_prefix(p.parent_path().string(), "." + p.filename().string())) {
    found += "staging entry " + n + " left; ";
  }
  return found;
}

// True if a message names the cause of a cancelled synthesis.
bool says_cancelled(const std::string& message) {
  return message.find("cancel") != std::string::npos || message.find("interrupt") != std::string::npos;
}

// Feeds `data` through the handle in chunks of random size from 1 byte to
// 1 MiB (the first 1 byte, the second 1 MiB, the rest spread evenly over the
// orders of magnitude); returns the first non-OK status, else OK.
int feed_random_chunks(vmsynth_synth* s, const Bytes& data, uint64_t seed, size_t limit = SIZE_MAX) {
  std::mt19937_64 rng(seed);
  size_t at = 0, k = 0, end = std::min(limit, data.size());
  while (at < end) {
    size_t n;
    if (k == 0) {
      n = 1;
    } else if (k == 1) {
      n = kMiB;
    } else {
      unsigned bits = static_cast<unsigned>(rng() % 21);
      n = 1 + static_cast<size_t>(rng() % (uint64_t{1} << bits));
    }
    ++k;
    n = std::min(n, end - at);
    int rc = vmsynth_synth_feed(s, data.data() + at, n);
    if (rc != VMSYNTH_OK) return rc;
    at += n;
  }
  return VMSYNTH_OK;
}

// A small pair (16 MiB memory, 32 MiB disk, "typical" changes) and its
// overlay, made once for the whole binary.
class Api : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TempDir("vmsynth-api-data");
    testutil::generate_test_pair(PairSpec::profile("typical", 16 * kMiB, 32 * kMiB, 31), data_->path());
    testutil::make_overlay(base(), launch(), overlay_path(), 0, 3);
    overlay_ = new Bytes(testutil::read_bytes(overlay_path()));
  }
  static void TearDownTestSuite() {
    delete overlay_;
    delete data_;
    overlay_ = nullptr;
    data_ = nullptr;
  }

  static std::string base() { return data_->sub("base"); }
  static std::string launch() { return data_->sub("launch"); }
  static std::string overlay_path() { return data_->sub("overlay.vmo"); }
  static const Bytes& overlay() { return *overlay_; }

  std::string out(const std::string& name = "out") const { return dir_ / name; }

  // A copy of the good overlay with byte `at` XORed with `mask`.
  static Bytes flipped(size_t at, uint8_t mask) {
    Bytes b = overlay();
    b.at(at) ^= std::byte{mask};
    return b;
  }

  TempDir dir_{"vmsynth-api"};

 private:
  static inline TempDir* data_ = nullptr;
  static inline Bytes* overlay_ = nullptr;
};

// ---- Version, status names, frees --------------------------------------------

TEST(ApiBasics, VersionMatchesTheHeader) {
  EXPECT_EQ(vmsynth_version_number(), static_cast<unsigned>(VMSYNTH_VERSION_NUMBER));
  EXPECT_STREQ(vmsynth_version_string(), VMSYNTH_VERSION_STRING);
}

TEST(ApiBasics, StatusNames) {
  const std::pair<int, const char*> names[] = {
      {VMSYNTH_OK, "ok"},
      {VMSYNTH_E_USAGE, "usage"},
      {VMSYNTH_E_CORRUPT, "corrupt"},
      {VMSYNTH_E_WRONG_BASE, "wrong-base"},
      {VMSYNTH_E_WRONG_KEY, "wrong-key"},
      {VMSYNTH_E_IO, "io"},
      {VMSYNTH_E_UNSUPPORTED, "unsupported"},
      {VMSYNTH_E_EXISTS, "exists"},
      {VMSYNTH_E_CANCELLED, "interrupted"},
      {VMSYNTH_E_INTERNAL, "internal"},
  };
  for (const auto& [code, name] : names) EXPECT_STREQ(vmsynth_status_name(code), name) << code;
  for (int code : {-1, 1, 10, 69, 71, 255, 1000}) EXPECT_STREQ(vmsynth_status_name(code), "unknown") << code;
}

TEST(ApiBasics, FreeingNullIsANoOp) {
  vmsynth_free(nullptr);
  vmsynth_params_free(nullptr);
  vmsynth_cancel_free(nullptr);
  vmsynth_synth_free(nullptr);
}

TEST(ApiBasics, CancelTokenIsSticky) {
  Cancel c(vmsynth_cancel_new());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(vmsynth_cancel_requested(c.get()), 0);
  vmsynth_cancel_request(c.get());
  EXPECT_EQ(vmsynth_cancel_requested(c.get()), 1);
  vmsynth_cancel_request(c.get());
  EXPECT_EQ(vmsynth_cancel_requested(c.get()), 1);
}

// ---- Parameters -----------------------------------------------------------------

TEST(ApiParams, EveryDocumentedNameAndValueIsAccepted) {
  const std::vector<std::pair<const char*, std::vector<const char*>>> good = {
      {"engine", {"parallel", "serial"}},
      {"threads", {"0", "1", "2", "256"}},
      {"disk_format", {"raw", "qcow2"}},
      {"clone", {"auto", "reflink", "copy-range", "read-write"}},
      {"write_backend", {"io_uring", "pwrite"}},
      {"queue_depth", {"1", "64", "4096"}},
      {"memory_budget", {"16777216", "16M", "16384K", "256M", "1G", "1T", "1099511627776", "268435456"}},
      {"overlay_size", {"0", "1", "123456789"}},
      {"level", {"1", "9", "22", "max"}},
      {"key_file", {"/nonexistent/key", ""}},  // read when an operation starts
      {"passphrase_file", {"/nonexistent/passphrase", ""}},
      {"cache_dir", {"/tmp/vmsynth-api-cache"}},
      {"base_id_cache", {"1", "0"}},
      {"force", {"0", "1"}},
  };
  Params p = new_params();
  for (const auto& [name, values] : good) {
    for (const char* v : values) {
      EXPECT_EQ(vmsynth_params_set(p.get(), name, v), VMSYNTH_OK) << name << "=" << v;
      EXPECT_STREQ(vmsynth_params_error(p.get()), "") << name << "=" << v;
    }
  }
}

TEST(ApiParams, UnknownNamesAndBadValuesAreUsageErrors) {
  const std::vector<std::pair<const char*, std::vector<const char*>>> bad = {
      {"nope", {"1"}},
      {"Engine", {"serial"}},
      {"memory-budget", {"16M"}},
      {"", {"1"}},
      {"engine", {"fast", "Serial", ""}},
      {"threads", {"257", "-1", "", "1x", "two", "99999999999999999999"}},
      {"disk_format", {"vmdk", "RAW", ""}},
      {"clone", {"cow", ""}},
      {"write_backend", {"aio", "io-uring", ""}},
      {"queue_depth", {"0", "4097", "-1", "", "64k"}},
      {"memory_budget", {"16777215", "15M", "16383K", "1099511627777", "2T", "1025G", "1P", "0", "", "-1", "M", "16X"}},
      {"overlay_size", {"-1", "abc", ""}},
      {"level", {"0", "23", "fast", "maximum", "-1", ""}},
      {"base_id_cache", {"2", "yes", ""}},
      {"force", {"2", "yes", ""}},
  };
  Params p = new_params();
  for (const auto& [name, values] : bad) {
    for (const char* v : values) {
      EXPECT_EQ(vmsynth_params_set(p.get(), name, v), VMSYNTH_E_USAGE) << name << "=\"" << v << "\"";
      // vmsynth_params_error names the parameter.
      const std::string why = vmsynth_params_error(p.get());
      EXPECT_NE(why.find(*name ? name : "parameter"), std::string::npos) << name << "=\"" << v << "\": " << why;
    }
  }
}

TEST_F(Api, ARefusedValueLeavesTheParamsUnchanged) {
  // force=1, then a bad force value: the existing output is still replaced.
  Params p = new_params();
  set(p.get(), "force", "1");
  EXPECT_EQ(vmsynth_params_set(p.get(), "force", "maybe"), VMSYNTH_E_USAGE);
  set(p.get(), "disk_format", "qcow2");
  EXPECT_EQ(vmsynth_params_set(p.get(), "disk_format", "vmdk"), VMSYNTH_E_USAGE);
  std::filesystem::create_directories(out());
  testutil::write_file(out() + "/keep.txt", "x");
  auto r = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), overlay_path().c_str(), out().c_str(), p.get(), j); });
  ASSERT_EQ(r.status, VMSYNTH_OK) << r.json.dump();
  EXPECT_FALSE(std::filesystem::exists(out() + "/keep.txt"));
  EXPECT_TRUE(std::filesystem::exists(out() + "/disk.qcow2"));
  EXPECT_EQ(r.json.value("disk_format", ""), "qcow2");
}

TEST_F(Api, SerialEngineRefusesMoreThanOneThread) {
  // Refused when set or when the synthesis starts, not ignored.
  Params p = new_params();
  set(p.get(), "engine", "serial");
  int rc = vmsynth_params_set(p.get(), "threads", "2");
  if (rc == VMSYNTH_OK) {
    vmsynth_synth* raw = nullptr;
    rc = vmsynth_synth_open(&raw, base().c_str(), out().c_str(), p.get());
    Synth s(raw);
    if (rc == VMSYNTH_OK) rc = vmsynth_synth_finish_from(s.get(), overlay_path().c_str());
    EXPECT_NE(std::string(s ? vmsynth_synth_error(s.get()) : "").find("thread"), std::string::npos)
        << (s ? vmsynth_synth_error(s.get()) : "");
  }
  EXPECT_EQ(rc, VMSYNTH_E_USAGE);
  EXPECT_EQ(leftovers(out()), "");
}

// ---- Opening --------------------------------------------------------------------

TEST_F(Api, OpenRefusesBadArguments) {
  EXPECT_EQ(vmsynth_synth_open(nullptr, base().c_str(), out().c_str(), nullptr), VMSYNTH_E_USAGE);

  // A base that is not a VM directory: an error naming it, a handle that explains.
  vmsynth_synth* raw = nullptr;
  std::string missing = dir_ / "no-such-base";
  int rc = vmsynth_synth_open(&raw, missing.c_str(), out().c_str(), nullptr);
  Synth s(raw);
  EXPECT_NE(rc, VMSYNTH_OK);
  ASSERT_NE(s, nullptr) << "no handle to explain the failure";
  EXPECT_NE(std::string(vmsynth_synth_error(s.get())).find("no-such-base"), std::string::npos)
      << vmsynth_synth_error(s.get());
  s.reset();

  // An existing output without force: E_EXISTS naming force; untouched.
  std::filesystem::create_directories(out());
  testutil::write_file(out() + "/keep.txt", "x");
  raw = nullptr;
  rc = vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr);
  s.reset(raw);
  EXPECT_EQ(rc, VMSYNTH_E_EXISTS);
  ASSERT_NE(s, nullptr);
  EXPECT_NE(std::string(vmsynth_synth_error(s.get())).find("force"), std::string::npos) << vmsynth_synth_error(s.get());
  s.reset();
  EXPECT_TRUE(std::filesystem::exists(out() + "/keep.txt"));

  // An output inside the base: E_USAGE, force or not.
  Params p = new_params();
  set(p.get(), "force", "1");
  std::string inside = base() + "/out";
  raw = nullptr;
  rc = vmsynth_synth_open(&raw, base().c_str(), inside.c_str(), p.get());
  s.reset(raw);
  EXPECT_EQ(rc, VMSYNTH_E_USAGE) << (s ? vmsynth_synth_error(s.get()) : "");
  s.reset();
  EXPECT_FALSE(std::filesystem::exists(inside));
}

// ---- Feeding --------------------------------------------------------------------

TEST_F(Api, FeedInRandomChunksFrom1ByteTo1MiBIsBitExact) {
  ASSERT_GT(overlay().size(), 2 * kMiB) << "the test pair's overlay is too small to need 1 MiB chunks";
  for (const char* engine : {"parallel", "serial"}) {
    for (uint64_t seed : {1, 2}) {
      SCOPED_TRACE(std::string(engine) + " seed " + std::to_string(seed));
      std::string o = out(std::string("out-") + engine + std::to_string(seed));
      Params p = new_params();
      set(p.get(), "engine", engine);
      vmsynth_synth* raw = nullptr;
      ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), o.c_str(), p.get()), VMSYNTH_OK);
      Synth s(raw);
      ASSERT_EQ(feed_random_chunks(s.get(), overlay(), seed), VMSYNTH_OK) << vmsynth_synth_error(s.get());
      EXPECT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), 0), VMSYNTH_OK);  // len 0: a no-op
      ASSERT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_OK) << vmsynth_synth_error(s.get());
      EXPECT_STREQ(vmsynth_synth_error(s.get()), "");
      EXPECT_EQ(testutil::vm_dir_difference(o, launch()), "");
      char* text = nullptr;
      ASSERT_EQ(vmsynth_synth_stats_json(s.get(), &text), VMSYNTH_OK);
      ASSERT_NE(text, nullptr);
      Json j = Json::parse(text);
      vmsynth_free(text);
      EXPECT_EQ(j.value("ok", false), true) << j.dump();
      EXPECT_EQ(j.value("engine", ""), engine) << j.dump();
      EXPECT_EQ(j.value("out", ""), o) << j.dump();
      EXPECT_EQ(j.value("overlay_bytes", uint64_t{0}), overlay().size()) << j.dump();
      for (const char* key : {"threads", "base_id", "frames", "blocks_written", "ops", "seconds"}) {
        EXPECT_TRUE(j.contains(key)) << key << " missing: " << j.dump();
      }
      EXPECT_TRUE(j["seconds"].contains("since_first_byte")) << j.dump();
    }
  }
}

TEST_F(Api, EightHandlesFromEightThreadsAtOnce) {
  constexpr int kJobs = 8;
  struct Job {
    std::string out;
    int status = -1;
    std::string error;
  };
  std::vector<Job> jobs(kJobs);
  std::vector<std::thread> threads;
  for (int i = 0; i < kJobs; ++i) {
    jobs[i].out = out("out-" + std::to_string(i));
    threads.emplace_back([&, i] {
      Job& job = jobs[i];
      // Even jobs: the parallel engine on 2 threads; odd jobs: the serial engine.
      Params p = new_params();
      const bool serial = i % 2 == 1;
      if (vmsynth_params_set(p.get(), serial ? "engine" : "threads", serial ? "serial" : "2") != VMSYNTH_OK) return;
      vmsynth_synth* raw = nullptr;
      job.status = vmsynth_synth_open(&raw, base().c_str(), job.out.c_str(), p.get());
      Synth s(raw);
      if (job.status == VMSYNTH_OK) job.status = feed_random_chunks(s.get(), overlay(), 1000 + i);
      if (job.status == VMSYNTH_OK) job.status = vmsynth_synth_finish(s.get());
      if (s) job.error = vmsynth_synth_error(s.get());
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& job : jobs) {
    EXPECT_EQ(job.status, VMSYNTH_OK) << job.out << ": " << job.error;
    EXPECT_EQ(testutil::vm_dir_difference(job.out, launch()), "") << job.out;
  }
}

// ---- Cancelling -----------------------------------------------------------------

// A synthesis whose engine waits for input: half the overlay fed, nothing
// more. Then a cancel from another thread; the next feed and the finish
// return E_CANCELLED, the message says so, and nothing is left.
TEST_F(Api, CancelFromAnotherThreadWhileTheEngineWaitsForInput) {
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), overlay().size() / 2), VMSYNTH_OK)
      << vmsynth_synth_error(s.get());
  std::thread([&] { vmsynth_synth_cancel(s.get()); }).join();
  vmsynth_synth_cancel(s.get());  // idempotent
  EXPECT_EQ(vmsynth_synth_feed(s.get(), overlay().data() + overlay().size() / 2, 4096), VMSYNTH_E_CANCELLED);
  EXPECT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_E_CANCELLED);
  EXPECT_TRUE(says_cancelled(vmsynth_synth_error(s.get()))) << vmsynth_synth_error(s.get());
  EXPECT_EQ(leftovers(out()), "");
  s.reset();
  EXPECT_EQ(leftovers(out()), "");
}

// The same through a cancel token given in the params.
TEST_F(Api, CancelTokenStopsAHandleThatWaitsForInput) {
  Cancel c(vmsynth_cancel_new());
  Params p = new_params();
  ASSERT_EQ(vmsynth_params_set_cancel(p.get(), c.get()), VMSYNTH_OK);
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), p.get()), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), overlay().size() / 2), VMSYNTH_OK)
      << vmsynth_synth_error(s.get());
  std::thread([&] { vmsynth_cancel_request(c.get()); }).join();
  // The engine stops at its next frame or chunk, also while it waits for
  // input: the next feed or the finish reports it.
  int rc = vmsynth_synth_feed(s.get(), overlay().data() + overlay().size() / 2, 4096);
  if (rc == VMSYNTH_OK) rc = vmsynth_synth_finish(s.get());
  EXPECT_EQ(rc, VMSYNTH_E_CANCELLED) << vmsynth_synth_error(s.get());
  EXPECT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_E_CANCELLED);
  EXPECT_EQ(leftovers(out()), "");
  s.reset();
  EXPECT_EQ(leftovers(out()), "");
}

// vmsynth_synth_cancel stops its own synthesis only, also when the params gave
// the handles a shared token ("a handle still has its own"): the other
// handle on that token finishes, and the token is not requested.
TEST_F(Api, SynthCancelStopsOnlyItsHandleWhenHandlesShareAToken) {
  Cancel c(vmsynth_cancel_new());
  Params p = new_params();
  ASSERT_EQ(vmsynth_params_set_cancel(p.get(), c.get()), VMSYNTH_OK);
  vmsynth_synth *raw_a = nullptr, *raw_b = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw_a, base().c_str(), out("a").c_str(), p.get()), VMSYNTH_OK);
  Synth a(raw_a);
  ASSERT_EQ(vmsynth_synth_open(&raw_b, base().c_str(), out("b").c_str(), p.get()), VMSYNTH_OK);
  Synth b(raw_b);
  ASSERT_EQ(vmsynth_synth_feed(a.get(), overlay().data(), overlay().size() / 2), VMSYNTH_OK);
  ASSERT_EQ(vmsynth_synth_feed(b.get(), overlay().data(), overlay().size() / 2), VMSYNTH_OK);
  vmsynth_synth_cancel(a.get());
  EXPECT_EQ(vmsynth_cancel_requested(c.get()), 0) << "vmsynth_synth_cancel requested the params' shared token";
  EXPECT_EQ(vmsynth_synth_finish(a.get()), VMSYNTH_E_CANCELLED);
  const size_t half = overlay().size() / 2;
  EXPECT_EQ(vmsynth_synth_feed(b.get(), overlay().data() + half, overlay().size() - half), VMSYNTH_OK)
      << vmsynth_synth_error(b.get());
  EXPECT_EQ(vmsynth_synth_finish(b.get()), VMSYNTH_OK) << vmsynth_synth_error(b.get());
  EXPECT_EQ(testutil::vm_dir_difference(out("b"), launch()), "");
  EXPECT_EQ(leftovers(out("a")), "");
}

// A token requested before an operation starts stops it before it writes.
TEST_F(Api, RequestedTokenStopsOperationsBeforeTheyStart) {
  Cancel c(vmsynth_cancel_new());
  vmsynth_cancel_request(c.get());
  Params p = create_params();
  ASSERT_EQ(vmsynth_params_set_cancel(p.get(), c.get()), VMSYNTH_OK);
  auto r = call_json([&](char** j) {
    return vmsynth_overlay_create(base().c_str(), launch().c_str(), out("x.vmo").c_str(), p.get(), j);
  });
  EXPECT_EQ(r.status, VMSYNTH_E_CANCELLED) << r.json.dump();
  EXPECT_EQ(leftovers(out("x.vmo")), "");
  r = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), overlay_path().c_str(), out().c_str(), p.get(), j); });
  EXPECT_EQ(r.status, VMSYNTH_E_CANCELLED) << r.json.dump();
  EXPECT_EQ(r.json["error"].value("code", ""), "interrupted") << r.json.dump();
  EXPECT_EQ(leftovers(out()), "");
}

// Back-pressure: the engine is held inside its progress callback, so a
// feeder pushing a large overlay must block in feed (memory stays bounded);
// a cancel from another thread then makes that blocked feed return
// E_CANCELLED, and nothing is left. (If the feeder never returned, the
// ASSERT would leave it blocked on a handle about to be freed: the guard is
// 60 s, far above what a working library needs.)
TEST(ApiBackPressure, CancelFromAnotherThreadWhileFeedIsBlocked) {
  TempDir dir("vmsynth-api-bp");
  PairSpec spec;
  spec.memory_bytes = 48 * kMiB;
  spec.disk_bytes = 1 * kMiB;
  spec.memory_fresh_random_pages = 40 * kMiB / 4096;  // ~40 MiB of incompressible literals
  spec.devstate_bytes = 4096;
  spec.devstate_changed_bytes = 16;
  testutil::generate_test_pair(spec, dir.path());
  testutil::make_overlay(dir / "base", dir / "launch", dir / "overlay.vmo", 0, 1);
  const Bytes overlay = testutil::read_bytes(dir / "overlay.vmo");
  ASSERT_GT(overlay.size(), 32 * kMiB);

  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool stalled = false;
    bool release = false;
  } gate;
  Params p = new_params();
  set(p.get(), "memory_budget", "16M");
  auto hold = [](void* ctx, const char* phase, uint64_t done, uint64_t) {
    auto* g = static_cast<Gate*>(ctx);
    if (std::string(phase) != "applying" || done == 0) return;
    std::unique_lock l(g->mu);
    g->stalled = true;
    g->cv.notify_all();
    // Bounded, so that a library that never lets the feeder go still ends.
    g->cv.wait_for(l, std::chrono::seconds(120), [&] { return g->release; });
  };
  ASSERT_EQ(vmsynth_params_set_phase_progress(p.get(), hold, &gate), VMSYNTH_OK);
  std::string out = dir / "out";
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, (dir / "base").c_str(), out.c_str(), p.get()), VMSYNTH_OK);
  Synth s(raw);

  std::atomic<uint64_t> fed{0};
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool feeder_done = false;
  int feed_rc = VMSYNTH_OK;
  std::thread feeder([&] {
    int rc = VMSYNTH_OK;
    constexpr size_t kChunk = 64 << 10;
    for (size_t at = 0; at < overlay.size() && rc == VMSYNTH_OK; at += kChunk) {
      size_t n = std::min(kChunk, overlay.size() - at);
      rc = vmsynth_synth_feed(s.get(), overlay.data() + at, n);
      if (rc == VMSYNTH_OK) fed += n;
    }
    std::lock_guard l(done_mu);
    feed_rc = rc;
    feeder_done = true;
    done_cv.notify_all();
  });

  {
    std::unique_lock l(gate.mu);
    ASSERT_TRUE(gate.cv.wait_for(l, std::chrono::seconds(120), [&] { return gate.stalled; }))
        << "the progress callback never reported applying";
  }
  // Wait until the feeder stops making progress (it is blocked), or is done.
  uint64_t last = fed.load();
  for (int still = 0; still < 10;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    {
      std::lock_guard l(done_mu);
      if (feeder_done) break;
    }
    uint64_t now = fed.load();
    still = now == last ? still + 1 : 0;
    last = now;
  }
  EXPECT_LT(fed.load(), overlay.size()) << "feed never blocked while the engine was held: memory is not bounded";

  // Cancel from this thread while the feeder is blocked, then let the engine
  // go (it may finish its current step before it sees the cancel: feed may
  // wait for it, so that nothing staged is left when it returns).
  vmsynth_synth_cancel(s.get());
  {
    std::lock_guard l(gate.mu);
    gate.release = true;
    gate.cv.notify_all();
  }
  bool returned;
  {
    std::unique_lock l(done_mu);
    returned = done_cv.wait_for(l, std::chrono::seconds(60), [&] { return feeder_done; });
  }
  ASSERT_TRUE(returned) << "a feed blocked by back-pressure did not return within 60 s of vmsynth_synth_cancel";
  feeder.join();
  EXPECT_EQ(feed_rc, VMSYNTH_E_CANCELLED) << vmsynth_synth_error(s.get());
  EXPECT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_E_CANCELLED);
  EXPECT_EQ(leftovers(out), "");
  s.reset();
  EXPECT_EQ(leftovers(out), "");
}

TEST_F(Api, FreeingAnUnfinishedHandleLeavesNothing) {
  for (size_t fed : {size_t{0}, overlay().size() / 2, overlay().size()}) {
    SCOPED_TRACE("fed " + std::to_string(fed) + " bytes");
    vmsynth_synth* raw = nullptr;
    ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
    Synth s(raw);
    if (fed > 0) {
      ASSERT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), fed), VMSYNTH_OK) << vmsynth_synth_error(s.get());
    }
    s.reset();
    EXPECT_EQ(leftovers(out()), "");
  }
}

// A pipe the test writes an overlay into: the first `head` bytes at once,
// the rest when let go; a one-call operation reads the other end by path.
class HeldPipe {
 public:
  HeldPipe(const Bytes& data, size_t head) {
    std::signal(SIGPIPE, SIG_IGN);  // a reader that went away is EPIPE, not the end of the test binary
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    writer_ = std::thread([this, &data, head] {
      bool ok = write_all(data.data(), head);
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return go_; });
      l.unlock();
      if (ok && !stop_) write_all(data.data() + head, data.size() - head);
      ::close(write_fd_);
    });
  }
  ~HeldPipe() {
    release(true);
    if (read_fd_ >= 0) ::close(read_fd_);
    writer_.join();
  }
  std::string path() const { return "/proc/self/fd/" + std::to_string(read_fd_); }
  // Lets the writer go on (stop: close without writing the rest).
  void release(bool stop) {
    std::lock_guard l(mu_);
    go_ = true;
    stop_ = stop_ || stop;
    cv_.notify_all();
  }

 private:
  bool write_all(const std::byte* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(write_fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  int read_fd_ = -1, write_fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  bool go_ = false, stop_ = false;
  std::thread writer_;
};

// One token given to two one-call syntheses reading stalled pipes cancels
// both: each returns E_CANCELLED with an "interrupted" error, nothing left.
TEST_F(Api, SharedCancelTokenCancelsTwoOneCallOperations) {
  Cancel c(vmsynth_cancel_new());
  struct Seen {
    std::mutex mu;
    std::condition_variable cv;
    int applying = 0;
  } seen;
  // One params per operation (each with its own progress context), the same token.
  std::vector<Params> params;
  std::vector<std::unique_ptr<HeldPipe>> pipes;
  std::vector<std::string> outs;
  std::vector<CallResult> results(2);
  std::vector<int> reported(2, 0);
  auto on_progress = [](void* ctx, uint64_t done, uint64_t) {
    auto* flag = static_cast<std::pair<Seen*, int*>*>(ctx);
    if (done == 0) return;
    std::lock_guard l(flag->first->mu);
    if (!*flag->second) {
      *flag->second = 1;
      ++flag->first->applying;
      flag->first->cv.notify_all();
    }
  };
  std::vector<std::pair<Seen*, int*>> ctx = {{&seen, &reported[0]}, {&seen, &reported[1]}};
  for (int i = 0; i < 2; ++i) {
    params.push_back(new_params());
    ASSERT_EQ(vmsynth_params_set_cancel(params[i].get(), c.get()), VMSYNTH_OK);
    ASSERT_EQ(vmsynth_params_set_progress(params[i].get(), on_progress, &ctx[i]), VMSYNTH_OK);
    pipes.push_back(std::make_unique<HeldPipe>(overlay(), overlay().size() / 2));
    outs.push_back(out("out-" + std::to_string(i)));
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      results[i] = call_json([&](char** j) {
        return vmsynth_synthesize(base().c_str(), pipes[i]->path().c_str(), outs[i].c_str(), params[i].get(), j);
      });
    });
  }
  {
    std::unique_lock l(seen.mu);
    EXPECT_TRUE(seen.cv.wait_for(l, std::chrono::seconds(120), [&] { return seen.applying == 2; }))
        << "both syntheses should have reported progress on the first half";
  }
  vmsynth_cancel_request(c.get());
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(results[i].status, VMSYNTH_E_CANCELLED) << results[i].json.dump();
    EXPECT_EQ(results[i].json.value("ok", true), false) << results[i].json.dump();
    EXPECT_EQ(results[i].json["error"].value("code", ""), "interrupted") << results[i].json.dump();
    EXPECT_EQ(leftovers(outs[i]), "");
  }
}

// ---- Sticky failures ------------------------------------------------------------

// After a failed feed or finish every later call returns the same status, and
// vmsynth_synth_error the same message.
TEST_F(Api, FailureIsSticky) {
  struct Case {
    const char* name;
    Bytes overlay;
    int status;
    const char* needle;
  };
  std::vector<Case> cases;
  cases.push_back({"flipped header byte", flipped(30, 0x10), VMSYNTH_E_CORRUPT, "overlay header checksum mismatch"});
  cases.push_back({"truncated", Bytes(overlay().begin(), overlay().begin() + static_cast<long>(overlay().size() / 2)),
                   VMSYNTH_E_CORRUPT, "truncated"});
  Bytes v2 = overlay();
  v2[8] = std::byte{2};
  v2[10] = std::byte{0};
  cases.push_back({"version 2.0", v2, VMSYNTH_E_UNSUPPORTED, "version 2.0 is not supported"});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    vmsynth_synth* raw = nullptr;
    ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
    Synth s(raw);
    int rc = feed_random_chunks(s.get(), c.overlay, 5);
    if (rc == VMSYNTH_OK) rc = vmsynth_synth_finish(s.get());
    ASSERT_EQ(rc, c.status) << vmsynth_synth_error(s.get());
    const std::string message = vmsynth_synth_error(s.get());
    EXPECT_NE(message.find(c.needle), std::string::npos) << message;
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), 100), c.status);
      EXPECT_EQ(vmsynth_synth_error(s.get()), message);
      EXPECT_EQ(vmsynth_synth_finish(s.get()), c.status);
      EXPECT_EQ(vmsynth_synth_error(s.get()), message);
      EXPECT_EQ(vmsynth_synth_finish_from(s.get(), overlay_path().c_str()), c.status);
      EXPECT_EQ(vmsynth_synth_error(s.get()), message);
    }
    vmsynth_synth_cancel(s.get());  // a cancel after the failure does not change it
    EXPECT_EQ(vmsynth_synth_finish(s.get()), c.status);
    EXPECT_EQ(vmsynth_synth_error(s.get()), message);
    EXPECT_EQ(leftovers(out()), "");
    s.reset();
    EXPECT_EQ(leftovers(out()), "");
  }
}

// ---- finish_from and call order -------------------------------------------------

TEST_F(Api, FinishFromAFile) {
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
  Synth s(raw);
  char* text = nullptr;
  EXPECT_EQ(vmsynth_synth_stats_json(s.get(), &text), VMSYNTH_E_USAGE);  // not finished yet
  EXPECT_EQ(text, nullptr);
  ASSERT_EQ(vmsynth_synth_finish_from(s.get(), overlay_path().c_str()), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  EXPECT_EQ(testutil::vm_dir_difference(out(), launch()), "");
  ASSERT_EQ(vmsynth_synth_stats_json(s.get(), &text), VMSYNTH_OK);
  Json j = Json::parse(text);
  vmsynth_free(text);
  EXPECT_EQ(j.value("ok", false), true);
  EXPECT_EQ(j.value("out", ""), out());
  EXPECT_EQ(j.value("overlay_bytes", uint64_t{0}), overlay().size());
  // Finished: a later feed is out of order.
  EXPECT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), 1), VMSYNTH_E_USAGE);
  s.reset();
  EXPECT_EQ(testutil::vm_dir_difference(out(), launch()), "");  // a free after finish keeps the output
}

TEST_F(Api, FinishFromAfterFeedIsOutOfOrder) {
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(vmsynth_synth_feed(s.get(), overlay().data(), 1000), VMSYNTH_OK);
  EXPECT_EQ(vmsynth_synth_finish_from(s.get(), overlay_path().c_str()), VMSYNTH_E_USAGE);
  EXPECT_NE(std::string(vmsynth_synth_error(s.get())), "");
  s.reset();
  EXPECT_EQ(leftovers(out()), "");
}

TEST_F(Api, FinishFromAMissingFileIsAnIoErrorNamingIt) {
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), nullptr), VMSYNTH_OK);
  Synth s(raw);
  std::string missing = dir_ / "missing.vmo";
  EXPECT_EQ(vmsynth_synth_finish_from(s.get(), missing.c_str()), VMSYNTH_E_IO);
  EXPECT_NE(std::string(vmsynth_synth_error(s.get())).find("missing.vmo"), std::string::npos)
      << vmsynth_synth_error(s.get());
  s.reset();
  EXPECT_EQ(leftovers(out()), "");
}

// ---- One-call operations --------------------------------------------------------

TEST_F(Api, OneCallOperationsReturnTheCommandsJson) {
  Params cp = create_params();
  std::string ov = out("new.vmo");
  auto created = call_json(
      [&](char** j) { return vmsynth_overlay_create(base().c_str(), launch().c_str(), ov.c_str(), cp.get(), j); });
  ASSERT_EQ(created.status, VMSYNTH_OK) << created.json.dump();
  const uint64_t size = std::filesystem::file_size(ov);
  EXPECT_EQ(created.json.value("ok", false), true);
  EXPECT_EQ(created.json.value("overlay", ""), ov);
  EXPECT_EQ(created.json.value("overlay_bytes", uint64_t{0}), size);
  EXPECT_EQ(created.json.value("encrypted", true), false);
  EXPECT_EQ(created.json.value("level", 0), 9);  // the default level
  EXPECT_EQ(testutil::entries_with_prefix(dir_.path(), ".new.vmo"), std::vector<std::string>{});

  auto info = call_json([&](char** j) { return vmsynth_overlay_info(ov.c_str(), nullptr, j); });
  ASSERT_EQ(info.status, VMSYNTH_OK) << info.json.dump();
  EXPECT_EQ(info.json.value("ok", false), true);
  EXPECT_EQ(info.json.value("overlay_bytes", uint64_t{0}), size);
  EXPECT_EQ(info.json.value("payloads_checked", true), false);
  EXPECT_EQ(info.json.value("base_id", ""), created.json.value("base_id", "?"));

  Params np = new_params();
  set(np.get(), "base_id_cache", "0");
  auto id = call_json([&](char** j) { return vmsynth_base_id(base().c_str(), np.get(), j); });
  ASSERT_EQ(id.status, VMSYNTH_OK) << id.json.dump();
  EXPECT_EQ(id.json.value("ok", false), true);
  EXPECT_EQ(id.json.value("base_dir", ""), base());
  const std::string hex = id.json.value("base_id", "");
  EXPECT_EQ(hex.size(), 32u) << hex;
  EXPECT_TRUE(std::all_of(hex.begin(), hex.end(), [](char ch) {
    return std::isxdigit(static_cast<unsigned char>(ch));
  })) << hex;
  EXPECT_EQ(hex, created.json.value("base_id", ""));

  auto synth =
      call_json([&](char** j) { return vmsynth_synthesize(base().c_str(), ov.c_str(), out().c_str(), nullptr, j); });
  ASSERT_EQ(synth.status, VMSYNTH_OK) << synth.json.dump();
  EXPECT_EQ(synth.json.value("ok", false), true);
  EXPECT_EQ(synth.json.value("out", ""), out());
  EXPECT_EQ(synth.json.value("overlay_bytes", uint64_t{0}), size);
  EXPECT_EQ(synth.json.value("base_id", ""), hex);
  EXPECT_EQ(testutil::vm_dir_difference(out(), launch()), "");

  // result_json NULL: the status only.
  EXPECT_EQ(on_caller_arena([&] { return vmsynth_base_id(base().c_str(), np.get(), nullptr); }), VMSYNTH_OK);
  EXPECT_EQ(vmsynth_overlay_info(ov.c_str(), nullptr, nullptr), VMSYNTH_OK);
}

TEST_F(Api, OneCallFailuresAreJsonErrors) {
  struct Case {
    const char* name;
    std::function<int(char**)> call;
    int status;
    const char* needle;
  };
  testutil::write_file(dir_ / "text.vmo", testutil::text_bytes(1000, 5));
  const std::string text = dir_ / "text.vmo", missing = dir_ / "missing.vmo";
  const std::vector<Case> cases = {
      {"not an overlay",
       [&](char** j) { return vmsynth_synthesize(base().c_str(), text.c_str(), out().c_str(), nullptr, j); },
       VMSYNTH_E_CORRUPT, "not a vmsynth overlay"},
      {"info of not an overlay", [&](char** j) { return vmsynth_overlay_info(text.c_str(), nullptr, j); },
       VMSYNTH_E_CORRUPT, "not a vmsynth overlay"},
      {"missing overlay",
       [&](char** j) { return vmsynth_synthesize(base().c_str(), missing.c_str(), out().c_str(), nullptr, j); },
       VMSYNTH_E_IO, "missing.vmo"},
      {"create over an existing file",
       [&](char** j) {
         return vmsynth_overlay_create(base().c_str(), launch().c_str(), overlay_path().c_str(), nullptr, j);
       },
       VMSYNTH_E_EXISTS, "force"},
      {"base id of a missing directory",
       [&](char** j) { return vmsynth_base_id((dir_ / "nobase").c_str(), nullptr, j); }, -1, "nobase"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto r = call_json(c.call);
    if (c.status >= 0) {
      EXPECT_EQ(r.status, c.status) << r.json.dump();
    } else {
      EXPECT_NE(r.status, VMSYNTH_OK) << r.json.dump();
    }
    EXPECT_EQ(r.json.value("ok", true), false) << r.json.dump();
    ASSERT_TRUE(r.json.contains("error") && r.json["error"].is_object()) << r.json.dump();
    EXPECT_EQ(r.json["error"].value("code", ""), vmsynth_status_name(r.status)) << r.json.dump();
    EXPECT_NE(r.json["error"].value("message", "").find(c.needle), std::string::npos) << r.json.dump();
    EXPECT_TRUE(r.json["error"].contains("context")) << r.json.dump();
    EXPECT_EQ(leftovers(out()), "");
  }
}

// ---- Progress -------------------------------------------------------------------

struct ProgressLog {
  std::mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> calls;  // done, total
  std::vector<std::string> phases;
  std::atomic<int> inside{0};
  bool overlapped = false;

  static void on_progress(void* ctx, uint64_t done, uint64_t total) {
    auto* log = static_cast<ProgressLog*>(ctx);
    if (log->inside.fetch_add(1) != 0) log->overlapped = true;
    {
      std::lock_guard l(log->mu);
      log->calls.emplace_back(done, total);
    }
    log->inside.fetch_sub(1);
  }
  static void on_phase(void* ctx, const char* phase, uint64_t done, uint64_t total) {
    auto* log = static_cast<ProgressLog*>(ctx);
    {
      std::lock_guard l(log->mu);
      log->phases.emplace_back(phase);
    }
    on_progress(ctx, done, total);
  }
};

// Checks that done never decreases and ends at `total`, and that every call
// carries `total`.
void expect_progress(ProgressLog& log, uint64_t total) {
  std::lock_guard l(log.mu);
  ASSERT_FALSE(log.calls.empty()) << "the progress callback was never called";
  EXPECT_FALSE(log.overlapped) << "two progress calls ran at once";
  uint64_t prev = 0;
  for (const auto& [done, t] : log.calls) {
    EXPECT_GE(done, prev) << "done went backwards";
    EXPECT_EQ(t, total) << "done " << done;
    prev = done;
  }
  EXPECT_EQ(log.calls.back().first, total) << "a complete synthesis's progress ends short of its total";
}

TEST_F(Api, ProgressOfAFedOverlayCountsOverlayBytesOutOfOverlaySize) {
  ProgressLog log;
  Params p = new_params();
  set(p.get(), "overlay_size", std::to_string(overlay().size()).c_str());
  ASSERT_EQ(vmsynth_params_set_progress(p.get(), ProgressLog::on_progress, &log), VMSYNTH_OK);
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), p.get()), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(feed_random_chunks(s.get(), overlay(), 9), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  ASSERT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  expect_progress(log, overlay().size());
}

TEST_F(Api, ProgressWithoutOverlaySizeHasTotalZero) {
  ProgressLog log;
  Params p = new_params();
  ASSERT_EQ(vmsynth_params_set_progress(p.get(), ProgressLog::on_progress, &log), VMSYNTH_OK);
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out().c_str(), p.get()), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(feed_random_chunks(s.get(), overlay(), 10), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  ASSERT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  std::lock_guard l(log.mu);
  ASSERT_FALSE(log.calls.empty());
  uint64_t prev = 0;
  for (const auto& [done, total] : log.calls) {
    EXPECT_EQ(total, 0u);
    EXPECT_GE(done, prev);
    prev = done;
  }
}

TEST_F(Api, PhaseProgressNamesPhasesAndReplacesThePlainCallback) {
  ProgressLog plain, phased;
  Params p = new_params();
  ASSERT_EQ(vmsynth_params_set_progress(p.get(), ProgressLog::on_progress, &plain), VMSYNTH_OK);
  ASSERT_EQ(vmsynth_params_set_phase_progress(p.get(), ProgressLog::on_phase, &phased), VMSYNTH_OK);
  auto r = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), overlay_path().c_str(), out().c_str(), p.get(), j); });
  ASSERT_EQ(r.status, VMSYNTH_OK) << r.json.dump();
  EXPECT_TRUE(plain.calls.empty()) << "the replaced callback was called";
  std::lock_guard l(phased.mu);
  ASSERT_FALSE(phased.phases.empty());
  EXPECT_NE(std::find(phased.phases.begin(), phased.phases.end(), "applying"), phased.phases.end());
  for (const auto& ph : phased.phases) {
    EXPECT_FALSE(ph.empty());
    EXPECT_TRUE(std::all_of(ph.begin(), ph.end(), [](char ch) { return (ch >= 'a' && ch <= 'z') || ch == ' '; })) << ph;
  }
  // A file's size is known: applying counts towards it, and the last call
  // ("finished") has every byte.
  for (size_t i = 0; i < phased.phases.size(); ++i) {
    if (phased.phases[i] == "applying") {
      EXPECT_EQ(phased.calls[i].second, overlay().size());
      EXPECT_LE(phased.calls[i].first, overlay().size());
    }
  }
  EXPECT_EQ(phased.phases.back(), "finished");
  EXPECT_EQ(phased.calls.back(), std::make_pair(uint64_t{overlay().size()}, uint64_t{overlay().size()}));
}


// ---- The overlay's file header (vmsynth_overlay_header) --------------------------

// The header of the first VMSYNTH_OVERLAY_HEADER_BYTES bytes says what
// `vmsynth overlay info --json` says of the whole file, field for field.
TEST_F(Api, OverlayHeaderMatchesOverlayInfo) {
  auto head = call_json([&](char** j) { return vmsynth_overlay_header(overlay().data(), VMSYNTH_OVERLAY_HEADER_BYTES, j); });
  ASSERT_EQ(head.status, VMSYNTH_OK) << head.json.dump();
  const vmfiles::RunResult info = vmfiles::run_vmsynth({"overlay", "info", "--json", overlay_path()}, dir_.path());
  ASSERT_EQ(info.status, 0) << info.err;
  const Json full = Json::parse(info.out);
  EXPECT_EQ(head.json.value("ok", false), true);
  for (const char* key : {"version", "base_id", "base_memory_bytes", "base_disk_bytes", "launch_memory_bytes",
                          "launch_disk_bytes", "encrypted"}) {
    ASSERT_TRUE(head.json.contains(key)) << key << " missing: " << head.json.dump();
    EXPECT_EQ(head.json[key], full.at(key)) << key;
  }
  EXPECT_EQ(head.json.value("encrypted", true), false);
  EXPECT_EQ(head.json.value("launch_memory_bytes", uint64_t{0}), 16 * kMiB);
  EXPECT_EQ(head.json.value("launch_disk_bytes", uint64_t{0}), std::filesystem::file_size(launch() + "/disk.img"));
  // More bytes than the header are ignored.
  auto whole = call_json([&](char** j) { return vmsynth_overlay_header(overlay().data(), overlay().size(), j); });
  ASSERT_EQ(whole.status, VMSYNTH_OK) << whole.json.dump();
  EXPECT_EQ(whole.json, head.json);
}

TEST_F(Api, OverlayHeaderOfTooFewBytesIsCorruptAndSaysTruncated) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{VMSYNTH_OVERLAY_HEADER_BYTES - 1}}) {
    SCOPED_TRACE(n);
    auto r = call_json([&](char** j) { return vmsynth_overlay_header(overlay().data(), n, j); });
    EXPECT_EQ(r.status, VMSYNTH_E_CORRUPT) << r.json.dump();
    EXPECT_EQ(r.json.value("ok", true), false);
    const std::string message = r.json.contains("error") ? r.json["error"].value("message", "") : "";
    EXPECT_NE(message.find("truncated"), std::string::npos) << r.json.dump();
    EXPECT_NE(message.find(std::to_string(n) + " given"), std::string::npos) << r.json.dump();
  }
  // NULL data of a non-zero length is the caller's mistake.
  auto r = call_json([&](char** j) { return vmsynth_overlay_header(nullptr, VMSYNTH_OVERLAY_HEADER_BYTES, j); });
  EXPECT_EQ(r.status, VMSYNTH_E_USAGE) << r.json.dump();
}

TEST_F(Api, OverlayHeaderWithABadMagicOrChecksumIsCorrupt) {
  for (size_t at : {size_t{0}, size_t{3}, size_t{VMSYNTH_OVERLAY_HEADER_BYTES / 2}, size_t{VMSYNTH_OVERLAY_HEADER_BYTES - 1}}) {
    SCOPED_TRACE(at);
    const Bytes b = flipped(at, 0x20);
    auto r = call_json([&](char** j) { return vmsynth_overlay_header(b.data(), VMSYNTH_OVERLAY_HEADER_BYTES, j); });
    EXPECT_EQ(r.status, VMSYNTH_E_CORRUPT) << r.json.dump();
    ASSERT_TRUE(r.json.contains("error")) << r.json.dump();
    EXPECT_EQ(r.json["error"].value("code", ""), "corrupt");
    EXPECT_NE(r.json["error"].value("message", ""), "");
  }
  // A byte past the header changes nothing the header says.
  const Bytes past = flipped(VMSYNTH_OVERLAY_HEADER_BYTES, 0x20);
  EXPECT_EQ(vmsynth_overlay_header(past.data(), past.size(), nullptr), VMSYNTH_OK);
}

// ---- Keys as parameters (key, passphrase) ------------------------------------------

constexpr const char* kHexKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
constexpr const char* kOtherHexKey = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

TEST_F(Api, KeyParameterOf64HexDigitsEncryptsAndSynthesizes) {
  Params cp = create_params();
  set(cp.get(), "key", kHexKey);
  const std::string sealed = out("sealed.vmo");
  auto created = call_json(
      [&](char** j) { return vmsynth_overlay_create(base().c_str(), launch().c_str(), sealed.c_str(), cp.get(), j); });
  ASSERT_EQ(created.status, VMSYNTH_OK) << created.json.dump();
  EXPECT_EQ(created.json.value("encrypted", false), true);
  const Bytes sealed_bytes = testutil::read_bytes(sealed);
  auto head = call_json([&](char** j) { return vmsynth_overlay_header(sealed_bytes.data(), sealed_bytes.size(), j); });
  ASSERT_EQ(head.status, VMSYNTH_OK) << head.json.dump();
  EXPECT_EQ(head.json.value("encrypted", false), true);

  // The same key as a key file and as the parameter open the same overlay.
  testutil::write_file(dir_ / "key.hex", std::string(kHexKey) + "\n");
  Params fp = new_params();
  set(fp.get(), "key_file", (dir_ / "key.hex").c_str());
  auto by_file = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("by-file").c_str(), fp.get(), j); });
  ASSERT_EQ(by_file.status, VMSYNTH_OK) << by_file.json.dump();
  EXPECT_EQ(testutil::vm_dir_difference(out("by-file"), launch()), "");

  // Fed in chunks, as the daemon does with the key from its client's header.
  Params kp = new_params();
  set(kp.get(), "key", kHexKey);
  vmsynth_synth* raw = nullptr;
  ASSERT_EQ(vmsynth_synth_open(&raw, base().c_str(), out("fed").c_str(), kp.get()), VMSYNTH_OK);
  Synth s(raw);
  ASSERT_EQ(feed_random_chunks(s.get(), sealed_bytes, 7), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  ASSERT_EQ(vmsynth_synth_finish(s.get()), VMSYNTH_OK) << vmsynth_synth_error(s.get());
  s.reset();
  EXPECT_EQ(testutil::vm_dir_difference(out("fed"), launch()), "");

  // Another key: wrong_key, nothing left.
  Params wp = new_params();
  set(wp.get(), "key", kOtherHexKey);
  auto wrong = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("wrong").c_str(), wp.get(), j); });
  EXPECT_EQ(wrong.status, VMSYNTH_E_WRONG_KEY) << wrong.json.dump();
  EXPECT_EQ(leftovers(out("wrong")), "");
  // No key at all: refused, nothing left.
  auto none = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("none").c_str(), nullptr, j); });
  EXPECT_NE(none.status, VMSYNTH_OK) << none.json.dump();
  EXPECT_EQ(leftovers(out("none")), "");
}

TEST_F(Api, PassphraseParameterEncryptsAndSynthesizes) {
  Params cp = create_params();
  set(cp.get(), "passphrase", "correct horse battery staple");
  const std::string sealed = out("sealed.vmo");
  auto created = call_json(
      [&](char** j) { return vmsynth_overlay_create(base().c_str(), launch().c_str(), sealed.c_str(), cp.get(), j); });
  ASSERT_EQ(created.status, VMSYNTH_OK) << created.json.dump();
  EXPECT_EQ(created.json.value("encrypted", false), true);
  Params sp = new_params();
  set(sp.get(), "passphrase", "correct horse battery staple");
  auto good = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("good").c_str(), sp.get(), j); });
  ASSERT_EQ(good.status, VMSYNTH_OK) << good.json.dump();
  EXPECT_EQ(testutil::vm_dir_difference(out("good"), launch()), "");
  set(sp.get(), "passphrase", "incorrect horse battery staple");
  auto bad = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("bad").c_str(), sp.get(), j); });
  EXPECT_EQ(bad.status, VMSYNTH_E_WRONG_KEY) << bad.json.dump();
  EXPECT_EQ(leftovers(out("bad")), "");
}

// key with key_file (or passphrase) is refused, naming the parameter, and
// the params keep the key they had: the synthesis afterwards still opens the
// overlay with it.
TEST_F(Api, KeyAndAnotherKeySourceExcludeEachOtherAndLeaveTheParamsUnchanged) {
  Params cp = create_params();
  set(cp.get(), "key", kHexKey);
  const std::string sealed = out("sealed.vmo");
  ASSERT_EQ(on_caller_arena([&] {
              return vmsynth_overlay_create(base().c_str(), launch().c_str(), sealed.c_str(), cp.get(), nullptr);
            }),
            VMSYNTH_OK);
  testutil::write_file(dir_ / "other.hex", std::string(kOtherHexKey) + "\n");

  Params p = new_params();
  set(p.get(), "key", kHexKey);
  EXPECT_EQ(vmsynth_params_set(p.get(), "key_file", (dir_ / "other.hex").c_str()), VMSYNTH_E_USAGE);
  EXPECT_NE(std::string(vmsynth_params_error(p.get())).find("key_file"), std::string::npos)
      << vmsynth_params_error(p.get());
  EXPECT_EQ(vmsynth_params_set(p.get(), "passphrase", "words"), VMSYNTH_E_USAGE);
  EXPECT_NE(std::string(vmsynth_params_error(p.get())).find("passphrase"), std::string::npos)
      << vmsynth_params_error(p.get());
  EXPECT_EQ(vmsynth_params_set(p.get(), "passphrase_file", (dir_ / "other.hex").c_str()), VMSYNTH_E_USAGE);
  auto r = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("a").c_str(), p.get(), j); });
  ASSERT_EQ(r.status, VMSYNTH_OK) << r.json.dump();
  EXPECT_EQ(testutil::vm_dir_difference(out("a"), launch()), "");

  // The other way round: key_file first, then key is refused; the file's key stays.
  testutil::write_file(dir_ / "key.hex", std::string(kHexKey) + "\n");
  Params q = new_params();
  set(q.get(), "key_file", (dir_ / "key.hex").c_str());
  EXPECT_EQ(vmsynth_params_set(q.get(), "key", kOtherHexKey), VMSYNTH_E_USAGE);
  EXPECT_NE(std::string(vmsynth_params_error(q.get())).find("key"), std::string::npos);
  auto rq = call_json(
      [&](char** j) { return vmsynth_synthesize(base().c_str(), sealed.c_str(), out("b").c_str(), q.get(), j); });
  ASSERT_EQ(rq.status, VMSYNTH_OK) << rq.json.dump();

  // "" unsets: then the other source is accepted.
  set(p.get(), "key", "");
  set(p.get(), "key_file", (dir_ / "key.hex").c_str());
}

TEST(ApiParams, KeyThatIsNot64HexDigitsIsAUsageErrorNamingTheParameter) {
  const std::string hex = kHexKey;
  const std::vector<std::string> bad = {
      hex.substr(0, 63),                 // one digit short
      hex + "0",                         // one digit more
      "g" + hex.substr(1),               // not hex
      hex.substr(0, 62) + " 0",          // a space inside
      "0x" + hex.substr(2),              // a prefix
      std::string(32, 'k'),              // 32 characters: a key file may hold 32 raw bytes, a string may not
  };
  Params p = new_params();
  for (const std::string& v : bad) {
    EXPECT_EQ(vmsynth_params_set(p.get(), "key", v.c_str()), VMSYNTH_E_USAGE) << "\"" << v << "\"";
    const std::string why = vmsynth_params_error(p.get());
    EXPECT_NE(why.find("parameter key"), std::string::npos) << "\"" << v << "\": " << why;
    EXPECT_EQ(why.find(v), std::string::npos) << "the refusal repeats the secret: " << why;
  }
  // Upper-case hex digits are hex digits.
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char ch) { return std::toupper(ch); });
  EXPECT_EQ(vmsynth_params_set(p.get(), "key", upper.c_str()), VMSYNTH_OK) << vmsynth_params_error(p.get());
}

}  // namespace
}  // namespace vmsynth
