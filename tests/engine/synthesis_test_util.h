// Test helpers for synthesis: temporary directories, small hand-made VM
// directories, overlays made from them, running an engine and comparing VM
// directories byte for byte.
//
// Shared by the engine tests (parallel_synthesis_test.cc, roundtrip_test.cc).
// Everything is header-only and inline; helpers report problems with GoogleTest
// assertions or by throwing, never by aborting.
//
// Ownership: a TempDir owns its directory tree and removes it on destruction.
// Thread safety: none needed; use from the test's thread (ChunkedPipeWriter
// runs its own thread and joins it).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <tbb/task_arena.h>

#include "engine/overlay_creator.h"
#include "engine/synthesis.h"
#include "tools/gen_pair/synthetic_pair.h"
#include "engine/vm_dir.h"
#include "io/byte_source.h"
#include "testutil/temp_dir.h"

namespace vmsynth::testutil {

// True in a ThreadSanitizer build.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif



inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::vector<std::byte> read_bytes(const std::string& path) {
  std::string s = read_file(path);
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

inline void write_file(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline void write_bytes(const std::string& path, const std::vector<std::byte>& content) {
  write_file(path, std::string_view(reinterpret_cast<const char*>(content.data()), content.size()));
}

// Deterministic random bytes.
inline std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// Deterministic compressible bytes (words from a small vocabulary).
inline std::string text_bytes(size_t n, uint64_t seed) {
  static const char* kWords[] = {"synthesis ", "overlay ", "cloudlet ", "frame ", "block ", "launch ", "base ",
                                 "memory ",    "disk ",    "delta ",    "zstd ",  "io_uring "};
  std::mt19937_64 rng(seed);
  std::string s;
  s.reserve(n + 16);
  while (s.size() < n) s += kWords[rng() % std::size(kWords)];
  s.resize(n);
  return s;
}

// A VM directory: the two images and, when non-empty, the opaque files.
struct VmContent {
  std::string memory;
  std::string disk;
  std::string devstate;
  std::string vm_json;
};

inline void write_vm(const std::string& dir, const VmContent& c) {
  std::filesystem::create_directories(dir);
  VmDir d{dir};
  write_file(d.image(ImageKind::kMemory), c.memory);
  write_file(d.image(ImageKind::kDisk), c.disk);
  if (!c.devstate.empty()) write_file(d.file(kDevStateName), c.devstate);
  if (!c.vm_json.empty()) write_file(d.file(kVmJsonName), c.vm_json);
}

// generate_pair() for test setup; under ThreadSanitizer in a one-thread arena
// (its oneTBB loops would be reported against an uninstrumented libtbb).
inline PairStats generate_test_pair(const PairSpec& spec, const std::string& dir) {
  if (!kThreadSanitizer) return generate_pair(spec, dir);
  tbb::task_arena one(1);
  return one.execute([&] { return generate_pair(spec, dir); });
}

// Creates an overlay of launch_dir against base_dir at `path`. threads 0: one
// per core, except under ThreadSanitizer, where test setup uses one thread
// (overlay_creator's TBB loops are reported as races against an
// uninstrumented libtbb; see tests/tsan.supp) so that reports concern the code
// under test only.
inline CreateStats make_overlay(const std::string& base_dir, const std::string& launch_dir, const std::string& path,
                                unsigned threads = 0, int level = 3) {
  if (threads == 0 && kThreadSanitizer) threads = 1;
  CreateOptions o;
  o.base_dir = base_dir;
  o.launch_dir = launch_dir;
  o.output = path;
  o.level = level;
  o.threads = threads;
  o.force = true;
  o.require_page_aligned_memory = false;  // some shapes test unaligned tail blocks
  return create_overlay(o);
}

inline SynthesizeOptions synth_options(const std::string& base_dir, const std::string& out_dir, EngineKind engine,
                                       unsigned threads = 0) {
  SynthesizeOptions o;
  o.base_dir = base_dir;
  o.out_dir = out_dir;
  o.engine = engine;
  o.threads = threads;
  o.force = true;
  o.use_base_id_cache = false;  // tests must not leave cache files behind in the base
  return o;
}

// synthesize(), called from a one-thread arena under ThreadSanitizer: the
// caller-side oneTBB loops (the base id check, engine/base_id.cc) are then
// serial and not reported against an uninstrumented libtbb. The parallel
// engine runs its graph in its own arena, so it stays fully parallel.
inline SynthesizeStats run_synthesis(io::ByteSource& src, const SynthesizeOptions& o) {
  if (!kThreadSanitizer) return synthesize(src, o);
  tbb::task_arena one(1);
  return one.execute([&] { return synthesize(src, o); });
}

// Synthesizes from an overlay file.
inline SynthesizeStats synthesize_file(const std::string& overlay, const SynthesizeOptions& o) {
  auto src = io::open_source(overlay);
  return run_synthesis(*src, o);
}

// Synthesizes from overlay bytes in memory, served in chunks of `max_chunk`.
inline SynthesizeStats synthesize_bytes(std::vector<std::byte> overlay, const SynthesizeOptions& o,
                                        size_t max_chunk = 1 << 16) {
  auto src = io::memory_source(std::move(overlay), max_chunk);
  return run_synthesis(*src, o);
}

// Empty when the two VM directories hold the same files with the same bytes
// (images, devstate.bin, vm.json), else what differs first.
inline std::string vm_dir_difference(const std::string& a, const std::string& b) {
  for (std::string_view name : {kMemoryImageName, kDiskImageName, kDevStateName, kVmJsonName}) {
    std::string pa = a + "/" + std::string(name), pb = b + "/" + std::string(name);
    bool ea = std::filesystem::exists(pa), eb = std::filesystem::exists(pb);
    if (ea != eb) return std::string(name) + ": present in only one of " + a + " and " + b;
    if (!ea) continue;
    std::string ca = read_file(pa), cb = read_file(pb);
    if (ca.size() != cb.size()) {
      return std::string(name) + ": sizes differ (" + std::to_string(ca.size()) + " vs " + std::to_string(cb.size()) +
             ")";
    }
    auto m = std::mismatch(ca.begin(), ca.end(), cb.begin());
    if (m.first != ca.end()) return std::string(name) + ": first difference at byte " + std::to_string(m.first - ca.begin());
  }
  return {};
}

// Entries of `dir` whose names start with `prefix` (e.g. ".out.partial").
inline std::vector<std::string> entries_with_prefix(const std::string& dir, std::string_view prefix) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0) found.push_back(n);
  }
  return found;
}

// Writes `data` into a pipe in chunks from its own thread, so a reader sees a
// slow stream. Before the last chunk it calls `before_last` (e.g. to wait
// until the consumer has shown progress). read_fd() is the consumer's end;
// the writer closes its end when done.
class ChunkedPipeWriter {
 public:
  ChunkedPipeWriter(std::vector<std::byte> data, size_t chunk, std::chrono::microseconds pause,
                    std::function<void()> before_last)
      : data_(std::move(data)) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    thread_ = std::thread([this, chunk, pause, before_last = std::move(before_last)] {
      size_t off = 0;
      while (off < data_.size()) {
        size_t n = std::min(chunk, data_.size() - off);
        if (off + n == data_.size() && before_last) before_last();
        if (!write_all(off, n)) break;  // the reader went away
        off += n;
        std::this_thread::sleep_for(pause);
      }
      ::close(write_fd_);
    });
  }
  ~ChunkedPipeWriter() {
    if (thread_.joinable()) thread_.join();
    if (read_fd_ >= 0) ::close(read_fd_);
  }
  ChunkedPipeWriter(const ChunkedPipeWriter&) = delete;
  ChunkedPipeWriter& operator=(const ChunkedPipeWriter&) = delete;

  // The path a ByteSource can open for the read end ("/proc/self/fd/N").
  std::string read_path() const { return "/proc/self/fd/" + std::to_string(read_fd_); }
  // Closes the read end (call after the consumer is done with it, before the
  // destructor joins the writer, so a stuck writer gets EPIPE).
  void close_read_end() {
    if (read_fd_ >= 0) ::close(read_fd_);
    read_fd_ = -1;
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  bool write_all(size_t off, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(write_fd_, data_.data() + off, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      off += static_cast<size_t>(w);
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  std::vector<std::byte> data_;
  int read_fd_ = -1;
  int write_fd_ = -1;
  std::thread thread_;
};

// A counter the engine's progress callback bumps and a test can wait on. It
// counts only reports of overlay bytes applied (phase "applying", done > 0),
// not the announcements of phases.
class ProgressCounter {
 public:
  ProgressFn callback() {
    return [this](const Progress& p) {
      if (p.phase != "applying" || p.done == 0) return;
      std::lock_guard l(mu_);
      ++calls_;
      cv_.notify_all();
    };
  }
  // Waits until at least `n` calls or `limit` passed (a guard against a hang,
  // not a timing assertion); returns the count seen.
  uint64_t wait_for(uint64_t n, std::chrono::seconds limit) {
    std::unique_lock l(mu_);
    cv_.wait_for(l, limit, [&] { return calls_ >= n; });
    return calls_;
  }
  uint64_t calls() {
    std::lock_guard l(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t calls_ = 0;
};

}  // namespace vmsynth::testutil
