// The VMs a daemon synthesized, kept under `--state DIR`/vms:
//
//   vms/<id>/        the VM directory (engine/vm_dir.h layout), renamed into
//                    place by the library when its synthesis succeeded
//   vms/<id>.json    the daemon's record of it (base, state, sizes, timings),
//                    outside the VM directory because QEMU, which may write
//                    its own directory, must not be able to edit it
//   vms/.<id>.partial-*  a synthesis in flight (the library's staging)
//
// A record is written (temp file + rename) after its directory is complete
// and removed before its directory, so after a crash at any point recover()
// can tell what is whole: staging and directories without a record are
// removed, records without a directory are dropped.
//
// Ids are 32 random hex digits; every id that reaches a path is checked with
// valid_id() first. Thread safety: all members may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace vmsynth::cloudlet {

bool valid_id(const std::string& id);

class VmRegistry {
 public:
  // Creates `vms_dir` if needed. Throws vmsynth::Error kIo if it cannot.
  explicit VmRegistry(std::string vms_dir);

  // Removes what a killed daemon left half done and loads the records.
  // Reports each removal through `notice`.
  void recover(const std::function<void(const std::string&)>& notice);

  // A fresh id, not used by any record or directory.
  std::string new_id() const;
  std::string dir_of(const std::string& id) const { return vms_dir_ + "/" + id; }
  const std::string& vms_dir() const { return vms_dir_; }

  // Adds or replaces the record `r` (needs "id"), on disk first.
  void put(const nlohmann::json& r);
  std::optional<nlohmann::json> get(const std::string& id) const;
  std::vector<nlohmann::json> list() const;
  // Removes the record (memory and disk) and returns it; nullopt when there
  // is none (so of two concurrent deletes, one gets the record).
  std::optional<nlohmann::json> take(const std::string& id);
  // Removes a VM directory whose record was taken: renamed aside now, its
  // files freed in the background. Throws kIo when it cannot be renamed.
  void remove_dir(const std::string& id) const;

  // Bytes the state directory's VMs occupy on disk (allocated blocks).
  uint64_t allocated_bytes() const;

 private:
  bool get_locked_exists(const std::string& id) const;  // REQUIRES: mu_ held

  std::string vms_dir_;
  mutable std::mutex mu_;
  std::vector<nlohmann::json> records_;  // few; order of creation
};

}  // namespace vmsynth::cloudlet
