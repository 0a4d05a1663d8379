// The launch VM being synthesized: the staged output directory, its images,
// the write path into them, opaque files, and the final sync and commit. What
// both engines write through.
//
// Data flows one way: engine -> LaunchOutput -> sink. An engine hands the
// output runs of verified blocks (write_run); the output cuts an image's tail
// block, orders the run against a clone still copying the base
// (engine/clone_tracker.h), splits it at a qcow2 disk's clusters
// (engine/qcow2_disk.h), and passes the pieces to its sink: pwrite on the
// writer's thread, or an io::WriteQueue (io_uring, or its pwrite backend)
// whose completions come back per run. No engine touches the images' file
// descriptors.
//
// Ownership: a LaunchOutput owns the staging directory (an
// io::StagedDirectory: removed unless commit() runs; creating it removes the
// staging leftovers of killed syntheses), the open image files, the qcow2
// disk and the sink. The sink is closed before the images.
//
// Thread safety: clone_images() / clone_images_beside_writer() may run on
// another thread than the rest (engine/launch_clone.cc); blocks are written
// only once the images exist (clone_images returned, or
// clone_images_beside_writer called `started`). The write path (open_sink,
// write_run, submit_writes, drain_writes, close_sink) belongs to one thread
// at a time, the writer. read_block, write_file and start_writeback may run
// on other threads meanwhile. cancel_clone: any thread. commit: the owner,
// once every other thread is done.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/overlay_format.h"
#include "engine/clone_tracker.h"
#include "engine/frame_decoder.h"
#include "engine/qcow2_disk.h"
#include "engine/synthesis.h"
#include "engine/vm_dir.h"
#include "io/file.h"
#include "io/image_clone.h"
#include "io/staged_dir.h"
#include "io/write_queue.h"

namespace vmsynth {

class LaunchOutput {
 public:
  // Creates the staging directory beside out_dir (kExists if out_dir exists
  // and !force).
  LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force,
               DiskFormat disk_format = DiskFormat::kRaw);
  ~LaunchOutput();
  LaunchOutput(const LaunchOutput&) = delete;
  LaunchOutput& operator=(const LaunchOutput&) = delete;

  // ---- Starting the images from the base (engine/launch_clone.cc) ----------
  // Creates the output images: memory.img (and, for DiskFormat::kRaw,
  // disk.img) as copies of the base images resized to the launch sizes; for
  // DiskFormat::kQcow2 an empty disk.qcow2 backed by the base's disk.img,
  // which is not copied. Returns the method used for the memory image.
  std::string clone_images(io::CloneMethod method);
  // clone_images for an engine whose writer runs at the same time: the images
  // are created and a reflink is tried, then `started` is called (from this
  // or another thread; writes may begin), then the copies proceed region by
  // region, both images at once, skipping blocks already written
  // (engine/clone_tracker.h). Returns when both copies are done. On failure,
  // a write_run waiting for a region gets the error too.
  std::string clone_images_beside_writer(io::CloneMethod method, const std::function<void()>& started);
  // Stops a clone_images_beside_writer at its next region, or before it
  // starts (the synthesis failed). Any thread.
  void cancel_clone();

  // ---- The write path ------------------------------------------------------
  struct SinkOptions {
    // False: every piece is a pwrite on the writer's thread, done before
    // write_run returns (the serial engine). True: pieces go to an
    // io::WriteQueue with the backend and depth below (the parallel engine).
    bool queued = false;
    WriteBackend backend = WriteBackend::kIoUring;  // queued only; io_uring falls back to pwrite
    unsigned queue_depth = 64;                      // queued only: requests in flight, 1..4096 (io::WriteQueueOptions)
  };
  // Called once per write_run with its tag when the sink no longer needs the
  // run's bytes, on the writer's thread (inside write_run, submit_writes or
  // drain_writes). Must not throw or call back into the write path.
  using RunDone = std::function<void(uint64_t tag)>;
  // Opens the sink over the output images. REQUIRES: the images exist; not
  // yet open. Throws kUsage for a bad queue depth, kIo if io_uring fails in a
  // way that is not a missing feature.
  void open_sink(const SinkOptions& opts, RunDone done = {});
  bool sink_open() const { return sink_open_; }
  // True when image i records zero blocks without storing them (a qcow2
  // disk): write_run takes null data for them. A raw image is written zeros.
  bool records_zeros(unsigned i) const {
    return i == image_index(ImageKind::kDisk) && disk_format_ == DiskFormat::kQcow2;
  }
  // Writes `blocks` 4096-byte blocks of image `image`, from block
  // `first_block`, from `data` (an image's tail block is cut at its end);
  // null `data`: the blocks read as zeros (REQUIRES records_zeros(image)).
  // `data` must stay valid and unchanged until done(tag). While
  // clone_images_beside_writer runs it may wait for the region being copied.
  // Throws the sink's first error (kIo naming the file and offset) or the
  // clone's failure.
  void write_run(unsigned image, uint64_t first_block, uint64_t blocks, const std::byte* data, uint64_t tag = 0);
  // Hands held-back requests to the kernel without waiting (a queued sink
  // whose writer is about to wait for input). A no-op otherwise.
  void submit_writes();
  // Waits until every run written so far is done (all done() calls made),
  // then throws the sink's first error, if any.
  void drain_writes();
  // Closes the sink: waits for requests in flight (the kernel may still read
  // their buffers) without calling done() for them and drops any error. For
  // an engine about to free its buffers after a failure.
  void close_sink();
  // The sink's backend, "pwrite" or "io_uring", and why io_uring was not used
  // ("" when it was, or was not asked for).
  std::string_view write_backend() const;
  std::string_view write_fallback() const;

  // Reads back a block this synthesis already wrote (zero-padded at the tail).
  // A qcow2 disk's block that was never written reads from the base disk.
  // Safe on any thread for blocks whose write has completed.
  void read_block(format::BlockAddress a, std::span<std::byte> out) const;

  // Writes a decoded, verified opaque file (decode_file_frame) into the
  // output directory. Any thread.
  void write_file(const DecodedFile& file);

  // Starts writeback of what the output images hold so far without waiting
  // for it (sync_file_range SYNC_FILE_RANGE_WRITE), so that commit()'s fsync
  // finds less to do. May block while the device queue is full: call it from
  // a thread that nothing waits for. Best effort (errors surface in commit()).
  // Any thread, once the images exist (clone_images_beside_writer's `started`).
  void start_writeback();

  // Drains the sink, completes a qcow2 disk, syncs every file, then renames
  // the staging directory to out_dir.
  void commit();

 private:
  void create_qcow2_disk();
  io::File& image(unsigned i) { return records_zeros(i) ? qcow2_->file() : images_[i]; }
  void piece_done(uint32_t run) noexcept;

  VmDir base_;
  format::FileHeader header_;
  DiskFormat disk_format_;
  io::StagedDirectory staged_;
  std::array<io::File, kImageCount> images_;  // raw images (a qcow2 disk's slot stays closed)
  std::unique_ptr<Qcow2Disk> qcow2_;

  std::mutex trackers_mu_;  // trackers_ are created on the clone thread, cancelled from another
  bool clone_cancelled_ = false;
  std::array<std::unique_ptr<CloneTracker>, kImageCount> trackers_;

  // The sink. Runs in flight: each run's tag and its pieces not yet done (+1
  // while write_run is still handing them over); ids are reused.
  struct PendingRun {
    uint64_t tag = 0;
    unsigned pieces = 0;
  };
  bool sink_open_ = false;
  RunDone run_done_;
  std::vector<PendingRun> runs_;
  std::vector<uint32_t> free_runs_;
  std::unique_ptr<io::WriteQueue> queue_;  // null: pwrite on the writer's thread
  bool queue_wanted_uring_ = false;
};

}  // namespace vmsynth
