// The pieces of synthesis both engines share: checking the base against the
// overlay header, the staged output directory and its images, opaque files,
// and the final sync and commit.
//
// A LaunchOutput owns the staging directory (removed unless commit() runs)
// and the open output image files (io::StagedDirectory removes the staging
// leftovers of killed syntheses). clone_images() may run on another thread
// than the rest, but must finish before blocks are written. Otherwise one
// owner thread; image files may be written from several threads at distinct
// offsets.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "codec/frame_codec.h"
#include "codec/overlay_format.h"
#include "engine/base_id.h"
#include "engine/clone_tracker.h"
#include "engine/frame_decoder.h"  // throw_hash_mismatch, for both engines
#include "engine/synthesis.h"
#include "engine/vm_dir.h"
#include "io/file.h"
#include "io/qcow2_writer.h"
#include "io/staged_dir.h"

namespace vmsynth {

// Throws kWrongBase unless the base at `base_dir` is the one the overlay
// names (sizes, then content id). Returns the id.
Hash128 check_base(const VmDir& base, const format::FileHeader& h, const BaseIdOptions& id_opts);

class LaunchOutput {
 public:
  LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force,
               DiskFormat disk_format = DiskFormat::kRaw);

  // Creates the output images: memory.img (and, for DiskFormat::kRaw,
  // disk.img) as copies of the base images resized to the launch sizes; for
  // DiskFormat::kQcow2 an empty disk.qcow2 backed by the base's disk.img,
  // which is not copied. Returns the method used for the memory image.
  std::string clone_images(io::CloneMethod method);
  // clone_images for an engine whose writer runs at the same time: the images
  // are created and a reflink is tried, then `started` is called (from this
  // or another thread; writes may begin, each announced with before_write),
  // then the copies proceed region by region, both images at once, skipping
  // blocks already written (engine/clone_tracker.h). Returns when both copies
  // are done. On failure, writers waiting in before_write get the error too.
  std::string clone_images_beside_writer(io::CloneMethod method, const std::function<void()>& started);
  // Before writing image bytes [offset, offset + len) while
  // clone_images_beside_writer runs: may wait for the region being copied.
  void before_write(unsigned i, uint64_t offset, uint64_t len) {
    if (trackers_[i]) trackers_[i]->before_write(offset, len);
  }
  // Stops a clone_images_beside_writer at its next region, or before it
  // starts (the synthesis failed). Any thread.
  void cancel_clone();
  io::File& image(unsigned i) { return i == image_index(ImageKind::kDisk) && qcow2_ ? qcow2_->file() : images_[i]; }
  uint64_t image_size(unsigned i) const { return header_.launch_size[i]; }
  DiskFormat disk_format() const { return disk_format_; }
  // True when writes to image i need place(): a qcow2 disk.
  bool mapped(unsigned i) const { return i == image_index(ImageKind::kDisk) && disk_format_ == DiskFormat::kQcow2; }

  // Writes one reconstructed 4096-byte block; the tail block of an image is
  // cut at the image's end.
  void write_block(format::BlockAddress a, std::span<const std::byte> block);
  // Makes a block read as zeros: writes zeros into a raw image, marks a qcow2
  // disk's block as zero without storing data.
  void zero_block(format::BlockAddress a);
  // Reads back a block this synthesis already wrote (zero-padded at the tail).
  // A qcow2 disk's block that was never written reads from the base disk.
  // Safe on any thread for blocks whose write has completed.
  void read_block(format::BlockAddress a, std::span<std::byte> out) const;

  // For a writer that issues its own I/O on image(i).fd(): calls
  // fn(file_offset, run_offset, length) for each piece of image bytes
  // [offset, offset + len), where run_offset counts from `offset`. A raw image
  // is one piece at the same offset; a qcow2 disk is split at its clusters,
  // which are allocated here (one thread only, like write_block).
  template <class Fn>
  void place(unsigned i, uint64_t offset, uint64_t len, Fn&& fn) {
    if (!mapped(i)) {
      fn(offset, uint64_t{0}, len);
      return;
    }
    for_each_cluster_piece(offset, len,
                           [&](uint64_t at, uint64_t done, uint64_t n) { fn(qcow2_->allocate(at, n), done, n); });
  }
  // Marks image bytes [offset, offset + len) of a qcow2 disk as zeros.
  void zero_range(unsigned i, uint64_t offset, uint64_t len);

  // Decodes a file frame (decode_file_frame against this base, which verifies
  // its hash) and writes the file.
  void apply_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> table,
                        std::span<const std::byte> payload);

  // Starts writeback of what the output images hold so far without waiting
  // for it (sync_file_range SYNC_FILE_RANGE_WRITE), so that commit()'s fsync
  // finds less to do. May block while the device queue is full: call it from
  // a thread that nothing waits for. Best effort (errors surface in commit()).
  // Any thread, once the images exist (clone_images_beside_writer's `started`).
  void start_writeback();

  // Completes a qcow2 disk, syncs every file, then renames the staging
  // directory to out_dir.
  void commit();

 private:
  VmDir base_;
  format::FileHeader header_;
  DiskFormat disk_format_;
  io::StagedDirectory staged_;
  std::array<io::File, kImageCount> images_;
  void create_qcow2_disk();
  // Calls fn(image_offset, run_offset, length) for the pieces of
  // [offset, offset + len) that lie in one qcow2 cluster each.
  template <class Fn>
  static void for_each_cluster_piece(uint64_t offset, uint64_t len, Fn&& fn) {
    for (uint64_t done = 0; done < len;) {
      const uint64_t at = offset + done;
      const uint64_t n = std::min(len - done, io::Qcow2Writer::kClusterSize - at % io::Qcow2Writer::kClusterSize);
      fn(at, done, n);
      done += n;
    }
  }

  std::unique_ptr<io::Qcow2Writer> qcow2_;
  std::mutex trackers_mu_;  // trackers_ are created on the clone thread, cancelled from another
  bool clone_cancelled_ = false;
  std::array<std::unique_ptr<CloneTracker>, kImageCount> trackers_;
  io::File base_disk_;  // qcow2: read for blocks the disk does not hold
};

}  // namespace vmsynth
