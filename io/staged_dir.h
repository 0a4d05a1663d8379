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
// Creating a StagedDirectory (or a StagedFile) first removes the staging
// leftovers of the same output that killed processes left behind
// (remove_stale), so a crash neither blocks nor litters a rerun.
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

#include "io/file.h"

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

  // Removes the staging leftovers `.<name>.partial-<pid>-*` and
  // `.<name>.old-<pid>-*` beside final_path (directories or files) whose
  // process no longer exists. Entries of a live pid (even one reused by an
  // unrelated process), of this process, or owned by another user are kept.
  // Best effort: errors are ignored. Returns how many entries were removed.
  static unsigned remove_stale(const std::string& final_path);

  // Removes this process's own staging entries beside final_path. For a
  // process that is about to die without unwinding (std::terminate), where no
  // destructor will run. Best effort, like remove_stale.
  static unsigned remove_own(const std::string& final_path);

 private:
  std::string final_path_;
  std::string staging_path_;  // empty once moved from
  bool force_ = false;
  bool committed_ = false;
};

// Throws what StagedDirectory and StagedFile throw for an existing output
// (kExists, "... use --force to replace it") when final_path exists (even as
// a dangling symlink) and !force: for a caller that wants that answer before
// it starts the work that ends in staging.
void refuse_existing_output(const std::string& final_path, bool force);

// StagedFile: one output file built under a temporary sibling name
// (`.<name>.partial-<pid>-<random>`, the StagedDirectory scheme) and renamed
// into place by commit() after an fsync, so a half-written output never sits
// under its final name. The destructor removes the temporary file unless
// commit() succeeded. With `force` commit() replaces an existing file
// atomically (rename); without it an existing final path is kExists, both at
// construction and at commit. Thread safety: none; one owner. Move-only.
class StagedFile {
 public:
  StagedFile(std::string final_path, bool force);
  ~StagedFile();
  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&&) = delete;
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  // The temporary file, open for writing (created empty, mode 0666 - umask).
  File& file() { return file_; }
  const std::string& path() const { return staging_path_; }
  const std::string& final_path() const { return final_path_; }

  // fsyncs and closes the file, renames it to final_path and fsyncs the
  // parent directory. REQUIRES: not yet committed.
  void commit();

 private:
  std::string final_path_;
  std::string staging_path_;  // empty once moved from or committed
  bool force_ = false;
  File file_;
};

}  // namespace vmsynth::io
