// The parallel engine: the serial engine's steps as a oneTBB flow graph, with
// io_uring writes and the base clone overlapped with decoding. Its output and
// its errors (codes and context) are those of engine/serial_synthesizer.cc;
// docs/performance.md ("Parallel engine") explains the design and its numbers.
//
//   reader thread          job's task_arena (`threads` slots)           writer thread
//   ─────────────          ──────────────────────────────────           ─────────────
//   free slot ─ read ─> sequencer ─ validate ─ reconstruct ─> to_writer ─ write runs
//      ^        (source)  (by frame)  serial  │  N threads  ^   queue      (output's sink)
//      │                                      │             │                 │
//      │                            parked ───┘             └─ SELF_COPY ready┤
//      └─────────────── slot back when all its writes completed ──────────────┘
//
// - A FrameSlot is the token: it owns the buffers a frame needs (stored bytes,
//   decoded payload and reconstructed blocks), so the number of slots bounds
//   memory (SynthesizeOptions::memory_budget / kSlotWorstCaseBytes) and
//   buffers are reused instead of reallocated. Free slots wait in a SlotQueue.
// - reader: a std::thread, the only one that touches the ByteSource (blocking
//   reads). It takes a free slot, reads a frame into it and puts it into the
//   graph.
// - validate: decodes the op table and runs the OpValidator in stream order (a
//   sequencer in front guarantees that order), then resolves SELF_COPY
//   dependencies (SelfCopyTracker below): a frame whose sources were produced by
//   frames whose writes are still in flight is parked until they complete.
// - reconstruct: the serial engine's op applier (BlockFrameDecoder,
//   engine/frame_decoder.h: DELTA prefix and BASE_COPY read from the base,
//   zstd decode, SELF_COPY read back from the output, XXH3 verification of
//   every block) into the slot's buffer, then coalescing of adjacent blocks
//   into write runs, queued for the writer. Parallel.
// - writer: a std::thread. Waits once for the clone, then hands runs to the
//   LaunchOutput (engine/launch_output.h), whose sink is an io::WriteQueue;
//   the completion callback returns the slot, releases parked frames and
//   reports progress. It drains the sink whenever it has nothing else queued,
//   so completions never stall behind a source that is waiting for input.
//
// The blocking ends (reader, writer) are threads of their own, outside the
// arena, so that the arena's threads only ever compute: see run() for why
// that keeps a job safe when oneTBB lends its arena fewer workers than it
// has slots. Also outside the graph, the clone threads copy the base
// (LaunchOutput::clone_images_beside_writer) and a flusher thread starts
// writeback every kWritebackInterval (synthesize_parallel).
#include <sys/types.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/flow_graph.h>
#include <tbb/info.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/base_check.h"
#include "engine/cancel.h"
#include "engine/frame_decoder.h"
#include "engine/launch_output.h"
#include "engine/op_validator.h"
#include "engine/overlay_reader.h"
#include "engine/stopwatch.h"
#include "engine/synthesis.h"
#include "engine/threads.h"

namespace vmsynth {

using format::BlockAddress;
using format::BlockOp;
using format::kBlockSize;
using format::OpKind;

namespace {

// Worst-case bytes one blocks frame holds while in flight: stored table and
// payload (<= 4 MiB + zstd overhead + table) and decoded content (one 4 KiB
// block per op, <= 4 MiB). Each decoding thread also keeps a DELTA prefix
// buffer (<= 4 MiB). File frames (opaque files up to 64 MiB) are rare and may
// exceed it.
constexpr uint64_t kSlotWorstCaseBytes = 9ull << 20;
// Slots in flight: memory_budget / kSlotWorstCaseBytes, clamped to this range.
constexpr uint64_t kMinSlots = 2;
constexpr uint64_t kMaxSlots = 256;
// ...and to at most kSlotsPerThread per decoding thread plus kExtraSlots (one
// being read, one being written). More slots than that did not go faster and
// cost CPU: on a 2 GiB + 8 GiB decode-heavy pair, 10 slots took 2.75-2.9 s of
// user CPU where 3 took 2.0-2.45 s (zstd decoding into buffers that had left
// the cache while the other slots were in use; docs/performance.md).
constexpr uint64_t kSlotsPerThread = 1;
constexpr uint64_t kExtraSlots = 2;
// How often the flusher starts writeback of the output (synthesize_parallel).
constexpr std::chrono::milliseconds kWritebackInterval{200};
// A slot buffer that grew beyond this (a big opaque file) is freed after use.
constexpr size_t kKeepBufferBytes = 8u << 20;

// One coalesced write: adjacent target blocks whose contents are adjacent in
// one of the slot's buffers.
struct WriteRun {
  unsigned image = 0;
  uint64_t first_block = 0;
  uint64_t blocks = 0;
  const std::byte* data = nullptr;  // null: zeros to mark, not write (qcow2 disk)
};

struct FrameSlot {
  unsigned id = 0;
  uint64_t seq = 0;         // frame index in the stream
  uint64_t end_offset = 0;  // stream offset just after the frame
  RawFrame frame;
  std::vector<BlockOp> ops;
  // Decoded payload (DELTA and LITERAL blocks, in op order), then one block
  // per other op: at most op_count x 4 KiB together.
  std::vector<std::byte> content;
  std::vector<WriteRun> runs;
  unsigned deps_pending = 0;    // guarded by SelfCopyTracker's mutex
  unsigned writes_pending = 0;  // writer only
  // Hand-over fence between nodes. oneTBB's scheduler (not instrumented for
  // ThreadSanitizer in distribution builds) already orders a message's
  // producer before its consumer; this release/acquire pair states that
  // ownership transfer explicitly, for one atomic operation per stage.
  std::atomic<uint64_t> handoff{0};

  void publish() { handoff.fetch_add(1, std::memory_order_release); }
  void acquire() { (void)handoff.load(std::memory_order_acquire); }
  std::string where() const { return frame.where(); }

  void recycle() {
    for (auto* v : {&frame.body, &content}) {
      if (v->capacity() > kKeepBufferBytes) std::vector<std::byte>().swap(*v);
    }
    ops.clear();
    runs.clear();
  }
};

// Makes the ordering oneTBB guarantees visible to ThreadSanitizer, which
// cannot see it inside a distribution (uninstrumented) libtbb: graph
// construction before the first task, successive bodies of a serial node, and
// every body before wait_for_all() returns. Each node body starts and ends
// with one read-modify-write of this counter, before it touches anything else
// (even its own captures); bodies that really overlap stay unordered, so real
// races are still reported. It carries no information, so it is one
// process-wide atomic rather than per synthesis. Cost: two atomic operations
// per node visit.
std::atomic<uint64_t> g_body_fence{0};

// Brackets a node body (or the graph's setup and teardown on the main thread).
class FencedBody {
 public:
  FencedBody() { g_body_fence.fetch_add(1, std::memory_order_acq_rel); }
  ~FencedBody() { g_body_fence.fetch_add(1, std::memory_order_acq_rel); }
  FencedBody(const FencedBody&) = delete;
  FencedBody& operator=(const FencedBody&) = delete;
};

// SELF_COPY dependencies. The validator guarantees every SELF_COPY source was
// produced by a strictly earlier frame; the source can be read from the output
// once that frame's writes have completed. The tracker maps each target block
// of the frames still in flight to its frame (a block absent from the map was
// produced by a frame whose writes are done, or not at all), and keeps, per
// in-flight frame, the parked frames waiting for it. Memory: one map entry per
// op of a frame in flight, so at most slots x 1024 entries (~100 bytes each)
// whatever the image or overlay size.
class SelfCopyTracker {
 public:
  // In stream order (the validate node). Records `s`'s targets and counts the
  // in-flight frames it must wait for. Returns true if it can run now.
  bool admit(FrameSlot& s) {
    std::lock_guard lock(mu_);
    unsigned deps = 0;
    for (const BlockOp& op : s.ops) {
      if (op.kind != OpKind::kSelfCopy) continue;
      auto it = producer_.find(key(op.source));
      if (it == producer_.end()) continue;
      std::vector<FrameSlot*>& w = waiters_[it->second];
      if (w.empty() || w.back() != &s) {
        w.push_back(&s);
        ++deps;
      }
    }
    for (const BlockOp& op : s.ops) producer_[key(op.target)] = s.seq;
    s.deps_pending = deps;
    if (deps > 0) parked_.fetch_add(1, std::memory_order_relaxed);
    return deps == 0;
  }

  // Once every write of `s` has completed: forgets its targets and appends to
  // `ready` the parked frames that no longer wait for anything.
  void complete(const FrameSlot& s, std::vector<FrameSlot*>& ready) {
    std::lock_guard lock(mu_);
    for (const BlockOp& op : s.ops) {
      auto it = producer_.find(key(op.target));
      if (it != producer_.end() && it->second == s.seq) producer_.erase(it);
    }
    auto w = waiters_.find(s.seq);
    if (w == waiters_.end()) return;
    for (FrameSlot* f : w->second) {
      if (--f->deps_pending == 0) {
        ready.push_back(f);
        parked_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    waiters_.erase(w);
  }

  size_t parked() const { return parked_.load(std::memory_order_relaxed); }

 private:
  static uint64_t key(BlockAddress a) { return (uint64_t{a.image} << 63) | a.block; }

  std::mutex mu_;
  std::unordered_map<uint64_t, uint64_t> producer_;                // block -> frame in flight
  std::unordered_map<uint64_t, std::vector<FrameSlot*>> waiters_;  // frame -> parked frames
  std::atomic<size_t> parked_{0};
};

// The first error by stream position: when several nodes fail before the graph
// stops, the one of the earliest frame is reported, as the serial engine would.
class FirstError {
 public:
  // position: 0 for failures before any frame (the clone), else frame + 1.
  void record(std::exception_ptr e, uint64_t position) {
    std::lock_guard lock(mu_);
    if (!error_ || position < position_) {
      error_ = std::move(e);
      position_ = position;
    }
    failed_.store(true, std::memory_order_release);
  }
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  std::exception_ptr get() {
    std::lock_guard lock(mu_);
    return error_;
  }

 private:
  std::mutex mu_;
  std::exception_ptr error_;
  uint64_t position_ = std::numeric_limits<uint64_t>::max();
  std::atomic<bool> failed_{false};
};

// Captures the current exception, with the frame's context added to a vmsynth::Error.
std::exception_ptr current_with(const std::string& where) {
  try {
    throw;
  } catch (Error& e) {
    if (!where.empty()) e.with(where);
    return std::current_exception();
  } catch (const std::bad_alloc&) {
    Error e(ErrorCode::kIo, "out of memory");
    if (!where.empty()) e.with(where);
    return std::make_exception_ptr(e);
  } catch (...) {
    return std::current_exception();
  }
}

// A queue of frame slots between a thread outside the arena (the reader, the
// writer) and the others, so that the blocking ends of the pipeline wait
// here, on a condition variable, and never inside the arena. close() (a
// failure) wakes every waiter and makes pop() return null. The writer's
// queue also knows, once the reader has ended, how many frames will come in
// all (set_expected), and pop() returns null when they have all been taken.
// Thread safety: all members, any thread.
class SlotQueue {
 public:
  void push(FrameSlot* s) {
    {
      std::lock_guard lock(mu_);
      items_.push_back(s);
    }
    cv_.notify_one();
  }
  // Waits for a slot; null once closed, or once `taken` reached the expected count.
  FrameSlot* pop(uint64_t taken = 0) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return closed_ || !items_.empty() || taken == expected_; });
    if (closed_ || items_.empty()) return nullptr;
    FrameSlot* s = items_.front();
    items_.pop_front();
    return s;
  }
  bool empty() {
    std::lock_guard lock(mu_);
    return items_.empty();
  }
  void set_expected(uint64_t n) {
    {
      std::lock_guard lock(mu_);
      expected_ = n;
    }
    cv_.notify_all();
  }
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<FrameSlot*> items_;
  uint64_t expected_ = std::numeric_limits<uint64_t>::max();
  bool closed_ = false;
};

class ParallelSynthesis {
 public:
  ParallelSynthesis(const SynthesizeOptions& opts, OverlayReader& reader, LaunchOutput& out, const VmDir& base_dir,
                    const BaseBlockReader& base, std::shared_future<void> clone_started, unsigned threads,
                    unsigned slot_count, SynthesizeStats& st)
      : opts_(opts),
        reader_(reader),
        out_(out),
        base_dir_(base_dir),
        // pread, not a mapping: pages of a mapped base would count in the
        // resident set and grow it with the image size.
        sources_{.base = [&base](BlockAddress a, std::span<std::byte> b) { base.read(a, b); },
                 // The source's frame has completed its writes (SelfCopyTracker).
                 .launch = [&out](BlockAddress a, std::span<std::byte> b) { out.read_block(a, b); }},
        clone_started_(std::move(clone_started)),
        threads_(threads),
        validator_(reader.header()),
        table_codec_(reader.keys()),
        codecs_([&reader] { return codec::FrameCodec(reader.keys()); }),
        st_(st) {
    slots_.reserve(slot_count);
    for (unsigned i = 0; i < slot_count; ++i) {
      slots_.push_back(std::make_unique<FrameSlot>());
      slots_.back()->id = i;
    }
  }

  ~ParallelSynthesis() {
    // The kernel may still read slot buffers, and completions call back into
    // this object: close the output's sink before they go.
    out_.close_sink();
  }

  // Runs the graph to the end of the stream or the first error; throws it.
  void run() {
    // The job's own arena, `threads` slots, one of them reserved for this
    // (the calling) thread. An arena does not own threads: oneTBB has one
    // worker pool per process (one worker fewer than the cores, unless the
    // application sets tbb::global_control, which a library must not, or the
    // process's first arena asked for more), and it lends each arena up to its slot count minus the reserved
    // one, sharing them out when several arenas ask for more than the pool
    // has. So an arena may get fewer workers than it asks for, or none for a
    // while (eight syntheses of threads=2 on two cores share one worker);
    // then this thread, waiting in wait_for_all, runs the graph's tasks
    // alone. That is safe because nothing in the arena ever blocks on other
    // work: the nodes in it (validate, reconstruct) only compute and read
    // files, and the blocking parts, the reader (the ByteSource) and the
    // writer (the kernel, the clone), are dedicated std::threads outside it
    // that hand frames in and take them out through queues. A task never
    // waits for them, and they only wait for tasks through those queues.
    // (engine/threads.h: at most as many slots as oneTBB may run at all; the
    // reconstruct node's concurrency stays `threads`.)
    tbb::task_arena arena(arena_slots(threads_));
    arena.execute([&] { run_graph(); });
    if (!errors_.failed() && frames_done_ != frames_read_) {
      throw Error(ErrorCode::kCorrupt,
                  "internal error: " + std::to_string(frames_read_ - frames_done_) + " frames were not applied");
    }
    throw_if_cancelled(opts_.cancel);
    if (auto e = errors_.get()) std::rethrow_exception(e);
    st_.write_backend = std::string(out_.write_backend());
    st_.write_fallback = std::string(out_.write_fallback());
  }

 private:
  using ValidateNode = tbb::flow::multifunction_node<FrameSlot*, std::tuple<FrameSlot*>>;
  using ReconstructNode = tbb::flow::function_node<FrameSlot*, tbb::flow::continue_msg>;

  // In this job's arena (the graph is bound to the arena it is built in).
  void run_graph() {
    tbb::flow::graph g;
    graph_ = &g;
    tbb::flow::sequencer_node<FrameSlot*> in_order(g, [](FrameSlot* s) { return static_cast<size_t>(s->seq); });
    ValidateNode validate(g, tbb::flow::serial, [this](FrameSlot* s, ValidateNode::output_ports_type& p) {
      FencedBody fenced;
      validate_frame(*s, p);
    });
    ReconstructNode reconstruct(g, threads_, [this](FrameSlot* s) {
      FencedBody fenced;
      reconstruct_frame(*s);
      return tbb::flow::continue_msg();
    });
    tbb::flow::make_edge(in_order, validate);
    tbb::flow::make_edge(tbb::flow::output_port<0>(validate), reconstruct);
    in_order_ = &in_order;
    reconstruct_ = &reconstruct;
    {
      FencedBody fenced;
      for (auto& slot : slots_) free_slots_.push(slot.get());
      // The graph must not look idle while the reader and the writer, outside
      // it, may still put frames in: one wait reservation each, released
      // when they end (on every path).
      auto start = [&](void (ParallelSynthesis::*loop)()) {
        g.reserve_wait();
        try {
          return std::jthread([this, loop] { (this->*loop)(); });
        } catch (...) {
          g.release_wait();
          fail(current_with(""), 0);  // the other thread stops too
          return std::jthread();
        }
      };
      std::jthread reader = start(&ParallelSynthesis::read_loop);
      std::jthread writer = start(&ParallelSynthesis::write_loop);
      g.wait_for_all();
    }  // joins the reader and the writer
    FencedBody after_graph;
    in_order_ = nullptr;
    reconstruct_ = nullptr;
    graph_ = nullptr;
  }

  void fail(std::exception_ptr e, uint64_t position) {
    errors_.record(std::move(e), position);
    stop_reading_.store(true, std::memory_order_release);
    free_slots_.close();
    to_writer_.close();
    graph_->cancel();
  }

  // ---- reader (its own thread; the only one that reads the source) --------
  void read_loop() {
    while (FrameSlot* s = free_slots_.pop()) {
      FencedBody fenced;
      if (!read_frame(*s)) break;
    }
    to_writer_.set_expected(frames_read_.load(std::memory_order_relaxed));
    graph_->release_wait();
  }

  // Reads the next frame into `s` and hands it to the graph; false at the end
  // of the stream or on an error.
  bool read_frame(FrameSlot& s) {
    if (stop_reading_.load(std::memory_order_acquire) || errors_.failed()) return false;
    try {
      throw_if_cancelled(opts_.cancel);
      if (!reader_.next(s.frame)) {
        stop_reading_.store(true, std::memory_order_release);
        return false;
      }
    } catch (...) {
      fail(current_with(""), reader_.frames_read() + 1);
      return false;
    }
    s.seq = s.frame.header.index;
    s.end_offset = reader_.bytes_read();
    frames_read_.fetch_add(1, std::memory_order_relaxed);
    s.publish();
    in_order_->try_put(&s);
    return true;
  }

  // ---- validate (serial, stream order) ------------------------------------
  void validate_frame(FrameSlot& s, ValidateNode::output_ports_type& p) {
    s.acquire();
    if (errors_.failed()) return;
    try {
      const format::FrameHeader& h = s.frame.header;
      if (h.type == format::FrameType::kFile) {
        s.ops.clear();
        validator_.check_file(table_codec_.decode_file_table(h, s.frame.table()).id);
      } else {
        s.ops = table_codec_.decode_blocks_table(h, s.frame.table());
        validator_.check_blocks_frame(s.ops);
      }
    } catch (...) {
      fail(current_with(s.where()), s.seq + 1);
      return;
    }
    s.publish();
    if (tracker_.admit(s)) std::get<0>(p).try_put(&s);
  }

  // ---- reconstruct (parallel) ---------------------------------------------
  void reconstruct_frame(FrameSlot& s) {
    s.acquire();
    if (errors_.failed()) return;
    try {
      codec::FrameCodec& codec = codecs_.local();
      const format::FrameHeader& h = s.frame.header;
      if (h.type == format::FrameType::kFile) {
        out_.write_file(decode_file_frame(codec, h, s.frame.table(), s.frame.payload(), &base_dir_));
      } else {
        decode_to_runs(s, codec);
      }
    } catch (...) {
      fail(current_with(s.where()), s.seq + 1);
      return;
    }
    s.publish();
    to_writer_.push(&s);
  }

  // The frame's blocks (engine/frame_decoder.h, which verifies them) into
  // the slot's buffer, then coalesced into write runs.
  void decode_to_runs(FrameSlot& s, codec::FrameCodec& codec) {
    s.runs.clear();
    const BlockFrameDecoder::Emit add_to_runs = [&](const BlockOp& op, std::span<const std::byte> block) {
      // A qcow2 disk records zeros instead of storing them.
      const std::byte* content =
          op.kind == OpKind::kZero && out_.records_zeros(op.target.image) ? nullptr : block.data();
      if (!s.runs.empty()) {
        WriteRun& r = s.runs.back();
        if (r.image == op.target.image && r.first_block + r.blocks == op.target.block &&
            (r.data == nullptr ? content == nullptr
                               : content != nullptr && r.data + r.blocks * kBlockSize == content)) {
          ++r.blocks;
          return;
        }
      }
      s.runs.push_back({op.target.image, op.target.block, 1, content});
    };
    // One decoder per thread: its DELTA prefix buffer is only needed while decoding.
    decoders_.local().decode(codec, s.frame.header, s.frame.payload(), s.ops, sources_, add_to_runs, s.content);
  }

  // ---- writer (its own thread) --------------------------------------------
  // Takes reconstructed frames until every frame read has come through (or
  // the synthesis failed), then waits for the last writes.
  void write_loop() {
    uint64_t taken = 0;
    while (FrameSlot* s = to_writer_.pop(taken)) {
      ++taken;
      FencedBody fenced;
      write_frame(*s);
    }
    if (!errors_.failed()) {
      FencedBody fenced;
      try {
        start_writing();  // even for an overlay without frames: the clone's errors, the sink's stats
      } catch (...) {
        fail(current_with(""), 0);
      }
      if (!errors_.failed()) {
        try {
          // Completions reaped here only finish bookkeeping: no frame is parked
          // once every frame has reached the writer.
          out_.drain_writes();
        } catch (...) {
          fail(current_with(""), std::numeric_limits<uint64_t>::max());
        }
      }
    }
    graph_->release_wait();
  }

  // Waits for the clone (once) and opens the output's sink over its images.
  void start_writing() {
    if (out_.sink_open()) return;
    clone_started_.get();  // rethrows a clone failure
    out_.open_sink({.queued = true, .backend = opts_.write_backend, .queue_depth = opts_.queue_depth},
                   [this](uint64_t tag) { write_completed(tag); });
  }

  void write_frame(FrameSlot& s) {
    s.acquire();
    if (errors_.failed()) return;
    try {
      try {
        start_writing();
      } catch (...) {
        fail(current_with(""), 0);  // a clone failure comes before every frame
        return;
      }
      // One completion per run (the output counts a qcow2 disk's cluster
      // pieces), plus the writer's own until every run is handed over.
      s.writes_pending = static_cast<unsigned>(s.runs.size()) + 1;
      for (const WriteRun& r : s.runs) out_.write_run(r.image, r.first_block, r.blocks, r.data, s.id);
      write_completed(s.id);
      // Nothing else queued for the writer (or a frame waits for writes):
      // wait for the kernel now rather than leave completions unreaped.
      if (to_writer_.empty() || tracker_.parked() > 0) {
        out_.drain_writes();
      } else {
        out_.submit_writes();
      }
    } catch (...) {
      fail(current_with(s.where()), s.seq + 1);
    }
  }

  // From the output's completion callback and for the writer's own +1, on the
  // writer's thread. Must not throw.
  void write_completed(uint64_t tag) noexcept {
    FrameSlot& s = *slots_[tag];
    if (--s.writes_pending > 0) return;
    try {
      frame_done(s);
    } catch (...) {
      fail(current_with(s.where()), s.seq + 1);
    }
  }

  void frame_done(FrameSlot& s) {
    ready_.clear();
    tracker_.complete(s, ready_);
    if (s.frame.header.type == format::FrameType::kBlocks) {
      for (const BlockOp& op : s.ops) ++st_.kind_count[static_cast<unsigned>(op.kind)];
      st_.blocks_written += s.ops.size();
    }
    ++st_.frames;
    ++frames_done_;
    progress_ = std::max(progress_, s.end_offset);
    report(opts_.progress, "applying", progress_, opts_.source_size);
    s.recycle();
    for (FrameSlot* r : ready_) {
      r->publish();
      reconstruct_->try_put(r);  // from outside the arena: a task for one of its threads
    }
    s.publish();
    free_slots_.push(&s);
  }

  const SynthesizeOptions& opts_;
  OverlayReader& reader_;
  LaunchOutput& out_;
  const VmDir& base_dir_;                     // opaque files encoded against the base's
  const BlockFrameDecoder::Sources sources_;  // read from any reconstruct thread
  std::shared_future<void> clone_started_;    // the output images exist; writes may begin
  const unsigned threads_;

  OpValidator validator_;                                        // validate node only
  codec::FrameCodec table_codec_;                                // validate node only
  tbb::enumerable_thread_specific<codec::FrameCodec> codecs_;    // reconstruct node
  tbb::enumerable_thread_specific<BlockFrameDecoder> decoders_;  // reconstruct node
  SelfCopyTracker tracker_;
  FirstError errors_;
  std::atomic<bool> stop_reading_{false};
  std::atomic<uint64_t> frames_read_{0};
  SlotQueue free_slots_;  // slots whose frame is done: the reader's input
  SlotQueue to_writer_;   // frames reconstructed: the writer's input

  std::vector<std::unique_ptr<FrameSlot>> slots_;
  // Writer state (the writer thread).
  std::vector<FrameSlot*> ready_;
  uint64_t frames_done_ = 0;
  uint64_t progress_ = 0;
  SynthesizeStats& st_;

  tbb::flow::graph* graph_ = nullptr;
  tbb::flow::sequencer_node<FrameSlot*>* in_order_ = nullptr;
  ReconstructNode* reconstruct_ = nullptr;
};

}  // namespace

SynthesizeStats synthesize_parallel(io::ByteSource& src, const SynthesizeOptions& opts) {
  const Stopwatch total;
  check_synthesize_options(opts);
  if (opts.memory_budget < (16u << 20)) {
    throw Error(ErrorCode::kUsage,
                "memory budget " + std::to_string(opts.memory_budget) + " bytes is too small; use at least 16 MiB");
  }
  SynthesizeStats st;
  st.engine = "parallel";
  OverlayReader reader(src, opts.key);
  const format::FileHeader& h = reader.header();
  const VmDir base{opts.base_dir};

  Stopwatch t;
  report(opts.progress, "checking base");
  st.base_id = check_base(base, h, {opts.use_base_id_cache, opts.cache_dir});
  st.seconds_base_id = t.seconds();

  const unsigned threads =
      opts.threads == 0 ? static_cast<unsigned>(std::max(1, tbb::info::default_concurrency())) : opts.threads;
  // More slots than the stages can use only cost memory and cache.
  const auto slot_count = static_cast<unsigned>(std::clamp<uint64_t>(
      std::min<uint64_t>(opts.memory_budget / kSlotWorstCaseBytes, kSlotsPerThread * threads + kExtraSlots), kMinSlots,
      kMaxSlots));
  st.threads = threads;

  LaunchOutput out(base, h, opts.out_dir, opts.force, opts.disk_format);
  st.disk_format = disk_format_name(opts.disk_format);
  const BaseBlockReader base_blocks(base);

  // The clone runs beside the graph: frames are read, validated, decoded and
  // written meanwhile (the writer waits only until the output images exist;
  // the clone then copies around the blocks already written). The thread is
  // declared after `out`, so on every path (errors included) it is joined
  // before the staging directory is removed.
  std::promise<void> started_promise, clone_promise;
  std::shared_future<void> clone_started = started_promise.get_future().share();
  std::future<void> clone_done = clone_promise.get_future();
  std::atomic<bool> started{false};
  std::jthread clone_thread([&] {
    const Stopwatch tc;
    try {
      st.clone_method = out.clone_images_beside_writer(opts.clone, [&] {
        started.store(true);
        started_promise.set_value();
      });
      st.seconds_clone = tc.seconds();
      clone_promise.set_value();
    } catch (...) {
      if (!started.load()) started_promise.set_exception(std::current_exception());
      clone_promise.set_exception(std::current_exception());
    }
  });
  // Writeback beside the graph: every kWritebackInterval this thread starts
  // writing back what the images hold so far, so that the final fsync finds
  // little left (on the 2 GiB + 8 GiB pairs it waited ~2 s for the device
  // while nothing else ran). Its own thread, because starting writeback blocks
  // while the device queue is full and no stage should wait for that.
  // Declared after `out`: joined (stop requested) before the output is
  // committed or removed.
  std::jthread flusher([&](std::stop_token stop) {
    std::mutex m;
    std::condition_variable_any cv;  // never notified: a sleep that a stop request ends
    std::unique_lock lock(m);
    auto sleep = [&](std::chrono::milliseconds d) {
      cv.wait_for(lock, stop, d, [] { return false; });
      return !stop.stop_requested();
    };
    while (clone_started.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      if (!sleep(std::chrono::milliseconds(20))) return;
    }
    try {
      clone_started.get();
    } catch (...) {
      return;  // the clone failed; the synthesis reports it
    }
    while (sleep(kWritebackInterval)) out.start_writeback();
  });
  t.restart();
  report(opts.progress, "applying", 0, opts.source_size);
  try {
    ParallelSynthesis run(opts, reader, out, base, base_blocks, clone_started, threads, slot_count, st);
    run.run();
  } catch (...) {
    out.cancel_clone();  // the output is discarded: do not copy the rest of the base
    throw;
  }
  st.overlay_bytes = reader.bytes_read();
  st.seconds_apply = t.seconds();
  report(opts.progress, "copying base");  // what the clone still has to copy, if anything
  clone_thread.join();
  clone_done.get();  // a clone that failed after writing began
  flusher.request_stop();
  flusher.join();

  t.restart();
  report(opts.progress, "syncing");
  out.commit();
  st.seconds_sync = t.seconds();
  for (unsigned i = 0; i < kImageCount; ++i) st.launch_size[i] = h.launch_size[i];
  st.seconds_total = total.seconds();
  return st;
}

}  // namespace vmsynth
