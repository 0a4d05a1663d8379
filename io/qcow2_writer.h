// Qcow2Writer: writes a qcow2 image that holds only the blocks a synthesis
// changes, on top of a raw backing file (the base VM's disk.img).
//
// With it, synthesis never copies the base disk: the launch disk is a qcow2
// file whose backing file is the base's disk.img, which QEMU runs directly.
// The image is qcow2 version 3 with 64 KiB clusters and extended L2 entries
// (QEMU >= 5.2): each cluster is split into 32 subclusters of 2 KiB, each of
// which is either read from the backing file, reads as zeros, or holds data
// in this file. So a 4 KiB block costs 4 KiB of data and no copy-on-write of
// the rest of its cluster, while the image keeps QEMU's default cluster size
// for the guest's own later writes.
//
// Layout, in host clusters:
//   0            header, backing-format extension ("raw"), backing file name
//   1 .. D       data clusters, allocated in the order blocks are written
//                (sparse: unwritten subclusters are holes in the file)
//   after D      written by finish(): L2 tables, the L1 table, the refcount
//                blocks and the refcount table, every cluster with refcount 1
// Until finish() the file is not a valid image (its first cluster is zero),
// so a crash mid-synthesis never leaves something QEMU would open.
//
// Ownership: the writer owns its File. Thread safety: allocate(), set_zero()
// and finish() are for one thread (the writer). lookup() may run on other
// threads at the same time, for blocks whose allocate()/set_zero() call
// happened-before it (the caller orders that, e.g. "this block's write has
// completed"); the mapping is held in atomics so those reads are race-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/file.h"

namespace vmsynth::io {

class Qcow2Writer {
 public:
  static constexpr unsigned kClusterBits = 16;
  static constexpr uint64_t kClusterSize = uint64_t{1} << kClusterBits;
  static constexpr unsigned kSubclusters = 32;
  static constexpr uint64_t kSubclusterSize = kClusterSize / kSubclusters;
  static constexpr size_t kMaxBackingName = 1023;  // QEMU's limit

  // Creates (or truncates) `path` for an image of `virtual_size` bytes backed
  // by the raw image `backing_path` (stored as given: pass an absolute path).
  // Throws kUnsupported unless virtual_size is a multiple of 512 (qcow2 sizes
  // are whole sectors); kUsage if the backing name is longer than 1023 bytes;
  // kIo for OS failures.
  Qcow2Writer(const std::string& path, uint64_t virtual_size, std::string backing_path);
  ~Qcow2Writer();
  Qcow2Writer(const Qcow2Writer&) = delete;
  Qcow2Writer& operator=(const Qcow2Writer&) = delete;

  // Makes guest bytes [offset, offset + len) data held in this file and
  // returns the file offset where they are to be written. The range must lie
  // in one cluster, start on a subcluster boundary, and end on one or at the
  // virtual size (else throws kUsage). The caller writes the bytes (all of
  // them: a subcluster that is only partly written reads back holes as zeros).
  uint64_t allocate(uint64_t offset, uint64_t len);

  // Makes guest bytes [offset, offset + len) read as zeros without storing
  // them. Same range rules as allocate().
  void set_zero(uint64_t offset, uint64_t len);

  enum class Source { kBacking, kZero, kData };
  struct Location {
    Source source = Source::kBacking;
    uint64_t file_offset = 0;  // for kData
  };
  // Where guest byte `offset` is read from.
  Location lookup(uint64_t offset) const;

  File& file() { return file_; }
  const std::string& path() const { return file_.path(); }
  uint64_t virtual_size() const { return virtual_size_; }
  // Data clusters allocated so far.
  uint64_t data_clusters() const { return next_cluster_ - 1; }

  // Writes the L2 tables, L1 table, refcounts and finally the header: the
  // file becomes a complete image. Call once, after every data write has
  // completed. Does not fsync. Returns the file's final size.
  uint64_t finish();

 private:
  // One L2 table's worth of guest clusters; entries as on disk (host offset
  // word, then the subcluster bitmap: allocation bits low, zero bits high).
  struct L2 {
    std::atomic<uint64_t> entry[kClusterSize / 16];
    std::atomic<uint64_t> bitmap[kClusterSize / 16];
  };
  static constexpr uint64_t kL2Entries = kClusterSize / 16;

  // The L2 entry of the cluster holding [offset, offset + len) and the
  // subclusters the range covers (range rules of allocate()).
  struct Entry {
    std::atomic<uint64_t>& entry;
    std::atomic<uint64_t>& bitmap;
    uint32_t mask;
  };
  Entry entry_for(uint64_t offset, uint64_t len, const char* what);
  L2& table_for(uint64_t guest_cluster);
  uint32_t subcluster_mask(uint64_t offset, uint64_t len, const char* what) const;

  File file_;
  uint64_t virtual_size_;
  std::string backing_;
  uint64_t l1_entries_;
  std::vector<std::atomic<L2*>> l2_;  // l1_entries_ slots, filled on first use
  std::vector<std::unique_ptr<L2>> owned_;
  uint64_t next_cluster_ = 1;
  bool finished_ = false;
};

}  // namespace vmsynth::io
