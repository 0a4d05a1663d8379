// Qcow2Disk: the launch disk as qcow2 (DiskFormat::kQcow2), as the
// LaunchOutput writes and reads it: an io::Qcow2Writer backed by the base
// VM's disk.img, plus the base disk itself for the blocks the qcow2 file does
// not hold.
//
// The backing file is named by absolute path: the output directory is
// renamed into place later and may be moved, the base is not.
//
// Ownership: owns the qcow2 writer (and its file) and a read-only descriptor
// of the base disk. Thread safety: place(), set_zero() and finish() on one
// thread (the LaunchOutput's writer); read_block() on any thread, for blocks
// whose place()/set_zero() happened-before it (Qcow2Writer::lookup).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "io/file.h"
#include "io/qcow2_writer.h"

namespace vmsynth {

class Qcow2Disk {
 public:
  // Creates `path`, an empty qcow2 image of `size` bytes backed by the raw
  // `base_disk` (resolved to an absolute path; kIo if it cannot be).
  Qcow2Disk(const std::string& base_disk, const std::string& path, uint64_t size);

  // Calls fn(file_offset, run_offset, length) for each piece of guest bytes
  // [offset, offset + len) that lies in one cluster, allocating it in the
  // file; run_offset counts from `offset`.
  template <class Fn>
  void place(uint64_t offset, uint64_t len, Fn&& fn) {
    for_each_cluster_piece(offset, len,
                           [&](uint64_t at, uint64_t done, uint64_t n) { fn(writer_->allocate(at, n), done, n); });
  }
  // Marks guest bytes [offset, offset + len) as zeros, storing nothing.
  void set_zero(uint64_t offset, uint64_t len);
  // Reads guest bytes [offset, offset + out.size()), which lie in one cluster,
  // as the image would: data from the file, zeros, or the base disk (zeros
  // past its end).
  void read(uint64_t offset, std::span<std::byte> out) const;

  io::File& file() { return writer_->file(); }
  // Writes the image's tables (it is not a valid image before) and closes it.
  void finish();

 private:
  template <class Fn>
  static void for_each_cluster_piece(uint64_t offset, uint64_t len, Fn&& fn) {
    for (uint64_t done = 0; done < len;) {
      const uint64_t at = offset + done;
      const uint64_t n = std::min(len - done, io::Qcow2Writer::kClusterSize - at % io::Qcow2Writer::kClusterSize);
      fn(at, done, n);
      done += n;
    }
  }

  io::File base_disk_;
  std::unique_ptr<io::Qcow2Writer> writer_;
};

}  // namespace vmsynth
