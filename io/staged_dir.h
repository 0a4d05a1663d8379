// StagedDirectory: build an output directory under a temporary name and move
// it into place atomically, so a crash or an error never leaves a half-written
// launch VM where a complete one is expected.
//
// The staging directory is a sibling of the final path (same parent, hence the
// same filesystem, so rename is atomic): `<parent>/.<basename>.partial-<pid>-<random>`.
// commit() fsyncs every regular file and directory inside it, renames it to the
// final path and fsyncs the parent. With `force` an existing final path (a
// directory or anything else) is replaced: exchanged atomically with
// renameat2(RENAME_EXCHANGE) where supported, else renamed aside first; the old
// tree is then removed.
//
// Ownership: the object owns the staging directory. Until commit() succeeds
// the destructor removes it with everything in it (errors ignored). After
// commit() the final directory belongs to nobody; the object only remembers
// its path. Move-only.
//
// Thread safety: none; one owner. Other threads may write files inside path()
// but must be done before commit().
#pragma once

#include <string>

namespace vmsynth::io {

class StagedDirectory {
 public:
  // Creates the staging directory (mode 0777 minus umask).
  // Throws kExists if final_path exists and !force ("... use --force to
  // replace it"), kIo if the staging directory cannot be created (naming it).
  StagedDirectory(std::string final_path, bool force);
  ~StagedDirectory();
  StagedDirectory(StagedDirectory&& other) noexcept;
  StagedDirectory& operator=(StagedDirectory&& other) noexcept;
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  // Where to write the output: the staging directory before commit(), the
  // final path after it.
  const std::string& path() const { return committed_ ? final_path_ : staging_path_; }
  const std::string& final_path() const { return final_path_; }
  bool committed() const { return committed_; }

  // Makes the staged contents durable and visible under final_path.
  // REQUIRES: not yet committed. Throws kExists if final_path appeared in the
  // meantime and !force; kIo for OS failures. If only the removal of a
  // replaced old tree fails, the commit has happened (committed() is true) and
  // the kIo error names the leftover path.
  void commit();

  // Removes `path` and everything below it without following symbolic links.
  // A missing path is not an error. Throws kIo naming the entry that could not
  // be removed.
  static void remove_tree(const std::string& path);

 private:
  std::string final_path_;
  std::string staging_path_;  // empty once moved from
  bool force_ = false;
  bool committed_ = false;
};

}  // namespace vmsynth::io
