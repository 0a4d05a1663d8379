// Hash table from block content hash (XXH3-128) to the first block address
// holding that content: the dedup index for base blocks (any offset, memory
// and disk) and for blocks the overlay already carries.
//
// Open addressing with linear probing; keeps the first address inserted for a
// hash, so insertion order decides which copy is canonical (memory before
// disk, lower offsets first). Memory: 32 bytes per slot, at most 2 slots per
// entry.
//
// Thread safety: find() may run concurrently with other find() calls;
// insert() needs exclusive access.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "codec/block_hash.h"
#include "codec/overlay_format.h"

namespace vmsynth {

class BlockIndex {
 public:
  explicit BlockIndex(size_t expected_entries = 0);

  // Inserts unless the hash is present; returns true if inserted.
  bool insert(const Hash128& h, format::BlockAddress a);
  std::optional<format::BlockAddress> find(const Hash128& h) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    Hash128 key;
    uint64_t addr = kEmpty;  // image << 63 | block
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  void grow();

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace vmsynth
