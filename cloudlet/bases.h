// The base VMs a cloudlet holds: each subdirectory of `--bases DIR` that is a
// VM directory (memory.img + disk.img). Their ids are computed once at start
// through the library (vmsynth_base_id, cached in the daemon's cache
// directory, so a restart rereads nothing).
//
// Thread safety: immutable after scan(); lookups from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vmsynth::cloudlet {

struct BaseVm {
  std::string id;    // 32 hex digits
  std::string name;  // the subdirectory's name
  std::string dir;   // absolute path
  uint64_t memory_bytes = 0;
  uint64_t disk_bytes = 0;
  uint64_t allocated_bytes = 0;  // blocks both images occupy (sparse images: less than their size)
};

class BaseRegistry {
 public:
  // Scans `dir`. A subdirectory that is not a base VM (no memory.img or
  // disk.img, or its id cannot be computed) is skipped with a notice through
  // `notice`. Throws vmsynth::Error kUsage when `dir` is not a directory.
  static BaseRegistry scan(const std::string& dir, const std::string& cache_dir,
                           const std::function<void(const std::string&)>& notice);

  const std::vector<BaseVm>& all() const { return bases_; }
  const BaseVm* find(const std::string& id) const;
  std::vector<std::string> ids() const;

 private:
  std::vector<BaseVm> bases_;
};

}  // namespace vmsynth::cloudlet
