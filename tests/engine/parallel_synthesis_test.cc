// Tests of the parallel synthesis engine (engine/parallel_synthesizer.cc)
// against the serial reference: bit-identical output on many shapes and thread
// counts, both write backends, errors mid-stream (same code and message as
// serial, nothing left behind), cancellation, a small memory budget,
// streaming from a slow pipe and a socket; and that overlay creation does not
// depend on its thread count.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "engine/cancel.h"
#include "engine/overlay_reader.h"
#include "engine/synthesis.h"
#include "tools/gen_pair/synthetic_pair.h"
#include "tests/engine/synthesis_test_util.h"
#include "testutil/run_command.h"

namespace vmsynth {
namespace {

using testutil::TempDir;
using testutil::VmContent;

constexpr uint64_t kMiB = 1ull << 20;
constexpr size_t kBlock = 4096;

// ---- Shapes ----------------------------------------------------------------

// Writes dir/base and dir/launch for the named shape.
void build_shape(const std::string& shape, const std::string& dir) {
  auto gen = [&](PairSpec spec) { testutil::generate_test_pair(spec, dir); };
  const std::string base = dir + "/base", launch = dir + "/launch";
  auto pair = [&](const VmContent& b, const VmContent& l) {
    testutil::write_vm(base, b);
    testutil::write_vm(launch, l);
  };
  if (shape == "typical") {
    gen(PairSpec::profile("typical", 8 * kMiB, 32 * kMiB, 11));
  } else if (shape == "decode_heavy") {
    gen(PairSpec::profile("decode-heavy", 8 * kMiB, 16 * kMiB, 12));
  } else if (shape == "every_op_kind") {
    PairSpec s;
    s.memory_bytes = 4 * kMiB;
    s.disk_bytes = 8 * kMiB;
    s.seed = 13;
    s.memory_moved_pages = 40;
    s.memory_base_disk_copies = 30;
    s.memory_zeroed_pages = 50;
    s.memory_page_cache_copies = 60;
    s.memory_edited_pages = 70;
    s.memory_fresh_compressible_pages = 80;
    s.memory_fresh_random_pages = 20;
    s.memory_duplicate_pages = 25;
    s.disk_edited_blocks = 40;
    s.disk_fresh_compressible_blocks = 100;
    s.disk_fresh_random_blocks = 30;
    s.disk_duplicate_blocks = 40;
    s.disk_growth_bytes = kMiB;
    gen(s);
  } else if (shape == "identical") {
    VmContent c{testutil::random_bytes(64 * kBlock, 1), testutil::text_bytes(128 * kBlock, 2), "dev", "{}"};
    pair(c, c);
  } else if (shape == "all_zero") {
    VmContent b{testutil::random_bytes(64 * kBlock, 3), testutil::text_bytes(96 * kBlock, 4), "", ""};
    VmContent l{std::string(64 * kBlock, '\0'), std::string(96 * kBlock, '\0'), "", ""};
    pair(b, l);
  } else if (shape == "all_random") {
    VmContent b{testutil::random_bytes(256 * kBlock, 5), testutil::random_bytes(512 * kBlock, 6), "", ""};
    VmContent l{testutil::random_bytes(256 * kBlock, 7), testutil::random_bytes(512 * kBlock, 8), "", ""};
    pair(b, l);
  } else if (shape == "grown_disk") {
    std::string disk = testutil::text_bytes(300 * kBlock, 9);
    VmContent b{testutil::random_bytes(32 * kBlock, 10), disk, "", ""};
    VmContent l = b;
    l.disk += testutil::text_bytes(700 * kBlock, 11) + std::string(100 * kBlock, '\0') +
              testutil::random_bytes(50 * kBlock, 12);
    pair(b, l);
  } else if (shape == "shrunk_disk") {
    VmContent b{testutil::random_bytes(32 * kBlock, 13), testutil::text_bytes(900 * kBlock, 14), "", ""};
    VmContent l = b;
    l.disk.resize(300 * kBlock);
    l.disk.replace(10 * kBlock, 3 * kBlock, testutil::random_bytes(3 * kBlock, 15));
    pair(b, l);
  } else if (shape == "unaligned_sizes") {
    VmContent b{testutil::text_bytes(10 * kBlock + 123, 16), testutil::text_bytes(512 * 77, 17), "d1", ""};
    VmContent l = b;
    l.memory = testutil::text_bytes(10 * kBlock + 123, 18);
    l.disk = testutil::text_bytes(512 * 93, 19);
    l.devstate = "d2";
    pair(b, l);
  } else if (shape == "one_changed_block") {
    VmContent b{testutil::text_bytes(200 * kBlock, 20), testutil::text_bytes(400 * kBlock, 21),
                testutil::random_bytes(5000, 22), "{\"a\":1}"};
    VmContent l = b;
    l.disk[123 * kBlock + 17] ^= 0x5a;
    pair(b, l);
  } else {
    FAIL() << "unknown shape " << shape;
  }
}

const std::vector<std::string>& shape_names() {
  static const std::vector<std::string> names = {
      "typical",    "decode_heavy", "every_op_kind", "identical",       "all_zero",         "all_random",
      "grown_disk", "shrunk_disk",  "unaligned_sizes", "one_changed_block"};
  return names;
}

// A built shape and its overlay, shared by the tests of one shape.
struct Prepared {
  TempDir dir{"vmsynth-par-test"};
  std::string base, launch, overlay;
  explicit Prepared(const std::string& shape) {
    build_shape(shape, dir.path());
    base = dir.sub("base");
    launch = dir.sub("launch");
    overlay = dir.sub("app.vmo");
    testutil::make_overlay(base, launch, overlay);
  }
};

void expect_same_stats(const SynthesizeStats& a, const SynthesizeStats& b) {
  EXPECT_EQ(a.frames, b.frames);
  EXPECT_EQ(a.kind_count, b.kind_count);
  EXPECT_EQ(a.blocks_written, b.blocks_written);
  EXPECT_EQ(a.overlay_bytes, b.overlay_bytes);
  EXPECT_EQ(a.launch_size, b.launch_size);
  EXPECT_EQ(a.base_id, b.base_id);
}

// ---- Bit-identical output --------------------------------------------------

class ParallelShapes : public ::testing::TestWithParam<std::string> {};

TEST_P(ParallelShapes, MatchesSerialAtEveryThreadCount) {
  Prepared p(GetParam());
  const std::string serial_out = p.dir.sub("out-serial");
  SynthesizeStats ss =
      testutil::synthesize_file(p.overlay, testutil::synth_options(p.base, serial_out, EngineKind::kSerial));
  ASSERT_EQ(testutil::vm_dir_difference(serial_out, p.launch), "");
  for (unsigned threads : {1u, 2u, 8u}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    const std::string out = p.dir.sub("out-par-" + std::to_string(threads));
    SynthesizeStats ps =
        testutil::synthesize_file(p.overlay, testutil::synth_options(p.base, out, EngineKind::kParallel, threads));
    EXPECT_EQ(ps.engine, "parallel");
    EXPECT_EQ(ps.threads, threads);
    EXPECT_EQ(testutil::vm_dir_difference(out, serial_out), "");
    expect_same_stats(ps, ss);
    std::filesystem::remove_all(out);
  }
}

INSTANTIATE_TEST_SUITE_P(Parallel, ParallelShapes, ::testing::ValuesIn(shape_names()),
                         [](const auto& info) { return info.param; });

// ---- qcow2 launch disk --------------------------------------------------------

// Empty when out_dir (synthesized with --disk-format qcow2) holds the launch
// VM of launch_dir: disk.qcow2 passes `qemu-img check`, names the base disk
// as its raw backing file and reads (flattened by qemu-img) as the launch
// disk; there is no disk.img; every other file is identical.
std::string qcow2_output_difference(const std::string& out_dir, const std::string& launch_dir,
                                    const std::string& base_dir) {
  const std::string q = out_dir + "/disk.qcow2";
  if (std::filesystem::exists(out_dir + "/disk.img")) return "disk.img written beside disk.qcow2";
  auto check = testutil::run_command("qemu-img check '" + q + "'");
  if (check.exit_code != 0) return "qemu-img check: " + check.output;
  auto info = testutil::run_command("qemu-img info --output=json '" + q + "'");
  const std::string backing = std::filesystem::canonical(base_dir + "/disk.img").string();
  if (info.output.find("\"backing-filename\": \"" + backing + "\"") == std::string::npos ||
      info.output.find("\"backing-filename-format\": \"raw\"") == std::string::npos) {
    return "backing file is not the base disk: " + info.output;
  }
  const std::string flat = out_dir + "/../flat-" + std::filesystem::path(out_dir).filename().string();
  auto conv = testutil::run_command("qemu-img convert -O raw '" + q + "' '" + flat + "'");
  if (conv.exit_code != 0) return "qemu-img convert: " + conv.output;
  const bool same = testutil::read_file(flat) == testutil::read_file(launch_dir + "/disk.img");
  std::filesystem::remove(flat);
  if (!same) return "flattened disk.qcow2 differs from the launch disk";
  for (const char* name : {"memory.img", "devstate.bin", "vm.json"}) {
    const bool in_out = std::filesystem::exists(out_dir + "/" + name);
    if (in_out != std::filesystem::exists(launch_dir + "/" + name)) return std::string(name) + " presence differs";
    if (in_out && testutil::read_file(out_dir + "/" + name) != testutil::read_file(launch_dir + "/" + name)) {
      return std::string(name) + " differs";
    }
  }
  return "";
}

TEST_P(ParallelShapes, Qcow2DiskReadsAsTheLaunchDisk) {
  if (!testutil::have_program("qemu-img")) GTEST_SKIP() << "qemu-img not installed (apt-get install -y qemu-utils)";
  Prepared p(GetParam());
  const std::string base_disk = testutil::read_file(p.base + "/disk.img");
  struct Case {
    EngineKind engine;
    unsigned threads;
  };
  for (Case c : {Case{EngineKind::kSerial, 1}, Case{EngineKind::kParallel, 1}, Case{EngineKind::kParallel, 2},
                 Case{EngineKind::kParallel, 8}}) {
    SCOPED_TRACE(std::string(c.engine == EngineKind::kSerial ? "serial" : "parallel") + " threads " +
                 std::to_string(c.threads));
    const std::string out = p.dir.sub("out-qcow2");
    SynthesizeOptions o = testutil::synth_options(p.base, out, c.engine, c.threads);
    o.disk_format = DiskFormat::kQcow2;
    SynthesizeStats st = testutil::synthesize_file(p.overlay, o);
    EXPECT_EQ(st.disk_format, "qcow2");
    EXPECT_EQ(qcow2_output_difference(out, p.launch, p.base), "");
    std::filesystem::remove_all(out);
  }
  EXPECT_EQ(testutil::read_file(p.base + "/disk.img"), base_disk) << "the base disk changed";
}

TEST(ParallelSynthesis, Qcow2RefusesADiskOfPartSectors) {
  TempDir dir("vmsynth-qcow2-odd");
  VmContent b{testutil::random_bytes(8 * kBlock, 1), testutil::text_bytes(3 * kBlock + 100, 2), "", ""};
  VmContent l = b;
  l.disk[5] ^= 1;
  testutil::write_vm(dir.sub("base"), b);
  testutil::write_vm(dir.sub("launch"), l);
  testutil::make_overlay(dir.sub("base"), dir.sub("launch"), dir.sub("app.vmo"));
  for (EngineKind engine : {EngineKind::kSerial, EngineKind::kParallel}) {
    SynthesizeOptions o = testutil::synth_options(dir.sub("base"), dir.sub("out"), engine);
    o.disk_format = DiskFormat::kQcow2;
    try {
      testutil::synthesize_file(dir.sub("app.vmo"), o);
      ADD_FAILURE() << "a 12388-byte disk became a qcow2 image";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("--disk-format raw"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(dir.sub("out")));
    EXPECT_TRUE(testutil::entries_with_prefix(dir.path(), ".out.partial").empty());
  }
}

// The base clone runs beside the writer region by region (16 MiB): images of
// several regions, written while the copy is under way, come out exact.
TEST(ParallelSynthesis, ImagesOfManyCloneRegionsComeOutExact) {
  TempDir dir("vmsynth-par-regions");
  testutil::generate_test_pair(PairSpec::profile("typical", 40 * kMiB, 72 * kMiB, 21), dir.path());
  testutil::make_overlay(dir.sub("base"), dir.sub("launch"), dir.sub("app.vmo"));
  for (unsigned threads : {1u, 2u}) {
    const std::string out = dir.sub("out-" + std::to_string(threads));
    SynthesizeStats st = testutil::synthesize_file(
        dir.sub("app.vmo"), testutil::synth_options(dir.sub("base"), out, EngineKind::kParallel, threads));
    EXPECT_EQ(testutil::vm_dir_difference(out, dir.sub("launch")), "") << threads << " threads";
    EXPECT_GT(st.blocks_written, 0u);
  }
}

TEST(ParallelSynthesis, EveryOpKindIsExercised) {
  Prepared p("every_op_kind");
  SynthesizeStats ps = testutil::synthesize_file(
      p.overlay, testutil::synth_options(p.base, p.dir.sub("out"), EngineKind::kParallel, 2));
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    EXPECT_GT(ps.kind_count[k], 0u) << format::op_kind_name(static_cast<format::OpKind>(k));
  }
}

// ---- Write backends and clone methods --------------------------------------

TEST(ParallelSynthesis, IoUringAndForcedPwriteAgree) {
  Prepared p("every_op_kind");
  auto o = testutil::synth_options(p.base, p.dir.sub("out-uring"), EngineKind::kParallel, 2);
  ASSERT_EQ(o.write_backend, WriteBackend::kIoUring);  // the default
  SynthesizeStats u = testutil::synthesize_file(p.overlay, o);
  if (u.write_backend == "io_uring") {
    EXPECT_EQ(u.write_fallback, "");
  } else {
    // A kernel or seccomp profile without io_uring: the fallback must say why.
    EXPECT_EQ(u.write_backend, "pwrite");
    EXPECT_NE(u.write_fallback, "");
  }
  EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "");

  o.out_dir = p.dir.sub("out-pwrite");
  o.write_backend = WriteBackend::kPwrite;
  SynthesizeStats w = testutil::synthesize_file(p.overlay, o);
  EXPECT_EQ(w.write_backend, "pwrite");
  EXPECT_EQ(w.write_fallback, "");  // asked for: no notice
  EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "");

  o.out_dir = p.dir.sub("out-env");
  o.write_backend = WriteBackend::kIoUring;
  ::setenv("VMSYNTH_NO_IO_URING", "1", 1);
  SynthesizeStats e = testutil::synthesize_file(p.overlay, o);
  ::unsetenv("VMSYNTH_NO_IO_URING");
  EXPECT_EQ(e.write_backend, "pwrite");
  EXPECT_NE(e.write_fallback.find("VMSYNTH_NO_IO_URING"), std::string::npos) << e.write_fallback;
  EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "");
}

TEST(ParallelSynthesis, EveryCloneMethodGivesTheSameOutput) {
  Prepared p("grown_disk");
  for (io::CloneMethod m : {io::CloneMethod::kAuto, io::CloneMethod::kCopyRange, io::CloneMethod::kReadWrite}) {
    auto o = testutil::synth_options(p.base, p.dir.sub("out"), EngineKind::kParallel, 2);
    o.clone = m;
    testutil::synthesize_file(p.overlay, o);
    EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "") << io::clone_method_name(m);
  }
}

// ---- Errors ----------------------------------------------------------------

struct Failure {
  ErrorCode code;
  std::string what;
};

// Runs `engine` over `overlay`, expecting a vmsynth::Error; checks that
// neither the output nor a staging directory is left.
Failure expect_failure(const std::string& base, const std::string& parent, const std::vector<std::byte>& overlay,
                       EngineKind engine, unsigned threads) {
  const std::string out = parent + "/out";
  auto o = testutil::synth_options(base, out, engine, threads);
  o.force = false;
  Failure f{ErrorCode::kUsage, ""};
  try {
    testutil::synthesize_bytes(overlay, o);
    ADD_FAILURE() << "synthesis succeeded on a damaged overlay";
  } catch (const Error& e) {
    f = {e.code(), e.what()};
  }
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_TRUE(testutil::entries_with_prefix(parent, ".out").empty());
  return f;
}

// Serial and parallel (1, 2, 8 threads) must fail alike: same code and message.
void expect_same_failure(const std::string& base, const std::string& parent, const std::vector<std::byte>& overlay,
                         ErrorCode want) {
  Failure s = expect_failure(base, parent, overlay, EngineKind::kSerial, 1);
  EXPECT_EQ(s.code, want) << s.what;
  for (unsigned threads : {1u, 2u, 8u}) {
    Failure f = expect_failure(base, parent, overlay, EngineKind::kParallel, threads);
    EXPECT_EQ(f.code, s.code) << "threads " << threads << ": " << f.what;
    EXPECT_EQ(f.what, s.what) << "threads " << threads;
  }
}

// Byte offset of the stored payload of the last blocks frame that has one.
uint64_t last_payload_offset(const std::vector<std::byte>& overlay) {
  auto src = io::memory_source(overlay);
  OverlayReader r(*src);
  RawFrame f;
  uint64_t at = 0;
  while (r.next(f)) {
    if (f.header.type == format::FrameType::kBlocks && f.header.payload_stored > 0) {
      at = f.offset + format::kFrameHeaderSize + f.header.table_stored + f.header.payload_stored / 2;
    }
  }
  return at;
}

TEST(ParallelSynthesis, CorruptPayloadInALateFrameFailsLikeSerial) {
  Prepared p("decode_heavy");
  std::vector<std::byte> overlay = testutil::read_bytes(p.overlay);
  uint64_t at = last_payload_offset(overlay);
  ASSERT_GT(at, overlay.size() / 2);
  overlay[at] ^= std::byte{0x40};
  expect_same_failure(p.base, p.dir.path(), overlay, ErrorCode::kCorrupt);
}

TEST(ParallelSynthesis, TruncatedStreamFailsLikeSerial) {
  Prepared p("decode_heavy");
  std::vector<std::byte> overlay = testutil::read_bytes(p.overlay);
  overlay.resize(overlay.size() * 3 / 4);
  expect_same_failure(p.base, p.dir.path(), overlay, ErrorCode::kCorrupt);
}

// A source that fails with an I/O error after `limit` bytes.
class FailingSource final : public io::ByteSource {
 public:
  FailingSource(std::vector<std::byte> data, size_t limit) : data_(std::move(data)), limit_(limit) {}
  std::string describe() const override { return "failing source"; }

 protected:
  size_t read_raw(std::span<std::byte> buf) override {
    if (at_ >= limit_) throw Error(ErrorCode::kIo, "connection reset by peer (injected)");
    size_t n = std::min({buf.size(), limit_ - at_, size_t{65536}});
    std::memcpy(buf.data(), data_.data() + at_, n);
    at_ += n;
    return n;
  }

 private:
  std::vector<std::byte> data_;
  size_t limit_;
  size_t at_ = 0;
};

TEST(ParallelSynthesis, SourceThatThrowsMidStreamFailsLikeSerial) {
  Prepared p("decode_heavy");
  std::vector<std::byte> overlay = testutil::read_bytes(p.overlay);
  const size_t limit = overlay.size() * 2 / 3;
  std::string serial_what;
  for (EngineKind engine : {EngineKind::kSerial, EngineKind::kParallel}) {
    for (unsigned threads : {1u, 2u, 8u}) {
      const std::string out = p.dir.sub("out");
      FailingSource src(overlay, limit);
      auto o = testutil::synth_options(p.base, out, engine, threads);
      try {
        testutil::run_synthesis(src, o);
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kIo) << e.what();
        if (engine == EngineKind::kSerial) serial_what = e.what();
        EXPECT_EQ(e.what(), serial_what);
      }
      EXPECT_FALSE(std::filesystem::exists(out));
      EXPECT_TRUE(testutil::entries_with_prefix(p.dir.path(), ".out").empty());
      if (engine == EngineKind::kSerial) break;
    }
  }
}

TEST(ParallelSynthesis, CancellationStopsCleanly) {
  Prepared p("decode_heavy");
  for (EngineKind engine : {EngineKind::kSerial, EngineKind::kParallel}) {
    SCOPED_TRACE(engine == EngineKind::kSerial ? "serial" : "parallel");
    const std::string out = p.dir.sub("out");
    // Requested before the engine starts: nothing is applied.
    auto o = testutil::synth_options(p.base, out, engine, 2);
    {
      CancelToken before;
      before.request();
      o.cancel = &before;
      try {
        testutil::synthesize_file(p.overlay, o);
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kInterrupted) << e.what();
      }
    }
    // Requested mid-stream from the engine's own progress callback.
    CancelToken mid;
    o.cancel = &mid;
    o.progress = [&mid](const Progress& p) {
      if (p.phase == "applying" && p.done > 0) mid.request();
    };
    try {
      testutil::synthesize_file(p.overlay, o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInterrupted) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(out));
    EXPECT_TRUE(testutil::entries_with_prefix(p.dir.path(), ".out").empty());
  }
}

// ---- Memory ----------------------------------------------------------------

// Two syntheses in one process, one cancelled: the other's token is its own
// and it completes (the cancel flag used to be process-wide).
TEST(ParallelSynthesis, CancellingOneJobLeavesAnotherRunning) {
  Prepared p("decode_heavy");
  CancelToken stopped, running;
  stopped.request();
  auto a = testutil::synth_options(p.base, p.dir.sub("a"), EngineKind::kParallel, 2);
  auto b = testutil::synth_options(p.base, p.dir.sub("b"), EngineKind::kParallel, 2);
  a.cancel = &stopped;
  b.cancel = &running;
  std::exception_ptr a_error;
  std::thread ta([&] {
    try {
      testutil::synthesize_file(p.overlay, a);
    } catch (...) {
      a_error = std::current_exception();
    }
  });
  EXPECT_NO_THROW(testutil::synthesize_file(p.overlay, b));
  ta.join();
  ASSERT_TRUE(a_error);
  try {
    std::rethrow_exception(a_error);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(p.dir.sub("a")));
  EXPECT_TRUE(std::filesystem::exists(p.dir.sub("b") + "/memory.img"));
}

// Eight syntheses in one process, each from its own std::thread with
// threads=2: each job's task_arena asks oneTBB's process-wide worker pool for
// more workers than this machine has (2 cores: one worker, shared by eight
// arenas), so most arenas run on their calling thread alone. None may wait
// for work that only another of its arena's threads could do, and each output
// must still be exact.
TEST(ParallelSynthesis, EightConcurrentSynthesesInOneProcess) {
  Prepared p("every_op_kind");
  constexpr unsigned kJobs = 8;
  std::vector<std::exception_ptr> errors(kJobs);
  std::vector<SynthesizeStats> stats(kJobs);
  {
    std::vector<std::jthread> jobs;
    for (unsigned i = 0; i < kJobs; ++i) {
      jobs.emplace_back([&, i] {
        try {
          auto o = testutil::synth_options(p.base, p.dir.sub("out" + std::to_string(i)), EngineKind::kParallel, 2);
          stats[i] = testutil::synthesize_file(p.overlay, o);
        } catch (...) {
          errors[i] = std::current_exception();
        }
      });
    }
  }
  for (unsigned i = 0; i < kJobs; ++i) {
    SCOPED_TRACE("job " + std::to_string(i));
    if (errors[i]) {
      try {
        std::rethrow_exception(errors[i]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
      continue;
    }
    EXPECT_EQ(stats[i].threads, 2u);
    EXPECT_EQ(testutil::vm_dir_difference(p.dir.sub("out" + std::to_string(i)), p.launch), "");
  }
}

TEST(ParallelSynthesis, SmallMemoryBudgetStillCompletes) {
  // ~48 MiB of payload through the smallest budget (16 MiB: two frames in
  // flight) with more threads than frames.
  TempDir dir("vmsynth-par-budget");
  PairSpec s = PairSpec::profile("decode-heavy", 32 * kMiB, 128 * kMiB, 21);
  testutil::generate_test_pair(s, dir.path());
  const std::string overlay = dir.sub("app.vmo");
  testutil::make_overlay(dir.sub("base"), dir.sub("launch"), overlay, 0, 1);
  auto o = testutil::synth_options(dir.sub("base"), dir.sub("out"), EngineKind::kParallel, 8);
  o.memory_budget = 16 * kMiB;
  testutil::synthesize_file(overlay, o);
  EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, dir.sub("launch")), "");

  o.memory_budget = 8 * kMiB;  // below the documented minimum
  EXPECT_THROW(testutil::synthesize_file(overlay, o), Error);
}

// ---- Streaming -------------------------------------------------------------

// The engine must apply frames while the overlay is still arriving: the writer
// holds back its last chunk until the engine has reported progress.
TEST(ParallelSynthesis, AppliesFramesFromASlowPipeBeforeItEnds) {
  Prepared p("decode_heavy");
  std::vector<std::byte> overlay = testutil::read_bytes(p.overlay);
  ASSERT_GT(overlay.size(), 4 * 65536u);
  for (bool pwrite : {false, true}) {
    SCOPED_TRACE(pwrite ? "pwrite" : "io_uring");
    testutil::ProgressCounter progress;
    uint64_t seen_before_last = 0;
    testutil::ChunkedPipeWriter writer(overlay, 65536, std::chrono::microseconds(2000), [&] {
      seen_before_last = progress.wait_for(1, std::chrono::seconds(120));
    });
    auto o = testutil::synth_options(p.base, p.dir.sub(pwrite ? "out-pw" : "out-ur"), EngineKind::kParallel, 2);
    o.write_backend = pwrite ? WriteBackend::kPwrite : WriteBackend::kIoUring;
    o.progress = progress.callback();
    {
      auto src = io::open_source(writer.read_path());
      testutil::run_synthesis(*src, o);
    }
    writer.close_read_end();
    writer.join();
    EXPECT_GT(seen_before_last, 0u) << "no frame was applied before the last chunk arrived";
    EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "");
  }
}

TEST(ParallelSynthesis, AppliesFramesFromASlowSocketBeforeItEnds) {
  Prepared p("decode_heavy");
  std::vector<std::byte> overlay = testutil::read_bytes(p.overlay);
  io::TcpListener listener("127.0.0.1", 0);
  testutil::ProgressCounter progress;
  uint64_t seen_before_last = 0;
  std::thread sender([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(listener.port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return;
    }
    const size_t chunk = 65536;
    for (size_t off = 0; off < overlay.size(); off += chunk) {
      size_t n = std::min(chunk, overlay.size() - off);
      if (off + n == overlay.size()) seen_before_last = progress.wait_for(1, std::chrono::seconds(120));
      for (size_t done = 0; done < n;) {
        ssize_t w = ::send(fd, overlay.data() + off + done, n - done, MSG_NOSIGNAL);
        if (w <= 0) break;
        done += static_cast<size_t>(w);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ::close(fd);
  });
  auto o = testutil::synth_options(p.base, p.dir.sub("out"), EngineKind::kParallel, 2);
  o.progress = progress.callback();
  {
    auto src = listener.accept_source();
    testutil::run_synthesis(*src, o);
  }
  sender.join();
  EXPECT_GT(seen_before_last, 0u);
  EXPECT_EQ(testutil::vm_dir_difference(o.out_dir, p.launch), "");
}

// ---- Overlay creation ------------------------------------------------------

TEST(ParallelOverlayCreate, SameBytesAtEveryThreadCount) {
  if (testutil::kThreadSanitizer) {
    GTEST_SKIP() << "overlay_creator's oneTBB loops need an instrumented libtbb under ThreadSanitizer";
  }
  TempDir dir("vmsynth-par-create");
  build_shape("typical", dir.path());
  std::vector<std::byte> first;
  for (unsigned threads : {1u, 2u, 8u}) {
    const std::string path = dir.sub("app-" + std::to_string(threads) + ".vmo");
    testutil::make_overlay(dir.sub("base"), dir.sub("launch"), path, threads);
    std::vector<std::byte> bytes = testutil::read_bytes(path);
    if (first.empty()) {
      first = bytes;
    } else {
      EXPECT_TRUE(bytes == first) << "overlay made with " << threads << " threads differs";
    }
  }
}

}  // namespace
}  // namespace vmsynth
