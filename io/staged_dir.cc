#include "io/staged_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "common/error.h"
#include "io/file.h"

namespace vmsynth::io {

namespace {

struct SplitPath {
  std::string parent;
  std::string base;
};

SplitPath split_path(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  SplitPath s = slash == std::string::npos
                    ? SplitPath{std::string("."), path}
                    : SplitPath{path.substr(0, std::max<size_t>(slash, 1)), path.substr(slash + 1)};
  if (s.base.empty() || s.base == "." || s.base == ".." || s.base == "/") {
    throw Error(ErrorCode::kUsage, "'" + path + "' cannot be used as an output name");
  }
  return s;
}

std::string join(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

// "<parent>/.<base>.<what>-<pid>-<12 hex digits>"
std::string sibling_name(const SplitPath& p, const char* what) {
  std::random_device rd;
  uint64_t r = (uint64_t{rd()} << 32) ^ rd();
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, "%012llx",
                static_cast<unsigned long long>(r & 0xffffffffffffULL));
  return join(p.parent,
              "." + p.base + "." + what + "-" + std::to_string(::getpid()) + "-" + suffix);
}

File open_dir(int dirfd, const std::string& name, const std::string& path_for_errors) {
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw io_error("cannot open directory", path_for_errors, errno);
  return File(fd, path_for_errors);
}

struct Entry {
  std::string name;
  bool is_dir;
  bool is_reg;
};

// The entries of an open directory (without "." and ".."), listed before the
// caller changes the directory.
std::vector<Entry> list_dir(const File& dir) {
  int fd = ::fcntl(dir.fd(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) throw io_error("cannot list directory", dir.path(), errno);
  DIR* raw = ::fdopendir(fd);
  if (!raw) {
    int err = errno;
    ::close(fd);
    throw io_error("cannot list directory", dir.path(), err);
  }
  std::unique_ptr<DIR, int (*)(DIR*)> d(raw, ::closedir);
  ::rewinddir(raw);  // the dup shares the file position
  std::vector<Entry> out;
  for (;;) {
    errno = 0;
    dirent* e = ::readdir(raw);
    if (!e) {
      if (errno != 0) throw io_error("cannot list directory", dir.path(), errno);
      break;
    }
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (::fstatat(dir.fd(), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        throw io_error("cannot stat", join(dir.path(), name), errno);
      }
      type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
    }
    out.push_back({std::move(name), type == DT_DIR, type == DT_REG});
  }
  return out;
}

// Opens every regular file below `dir` (read-only) into `files` and every
// directory, `dir` included, into `dirs`, each directory after its contents.
void open_tree(File dir, std::vector<File>& files, std::vector<File>& dirs) {
  for (const Entry& e : list_dir(dir)) {
    std::string path = join(dir.path(), e.name);
    if (e.is_dir) {
      open_tree(open_dir(dir.fd(), e.name, path), files, dirs);
    } else if (e.is_reg) {
      int fd = ::openat(dir.fd(), e.name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) throw io_error("cannot open for syncing", path, errno);
      files.emplace_back(fd, std::move(path));
    }
  }
  dirs.push_back(std::move(dir));
}

// fsyncs every regular file and directory below `dir`, then `dir` itself.
// First it starts writeback of every file without waiting for it
// (sync_file_range SYNC_FILE_RANGE_WRITE, best effort: failures show up in the
// fsyncs), so that the fsyncs find the device busy with all of the files, not
// one after the other.
void sync_tree(File dir) {
  std::vector<File> files, dirs;
  open_tree(std::move(dir), files, dirs);
  for (const File& f : files) (void)::sync_file_range(f.fd(), 0, 0, SYNC_FILE_RANGE_WRITE);
  for (const File& f : files) {
    if (::fsync(f.fd()) != 0) throw io_error("cannot sync", f.path(), errno);
  }
  for (const File& d : dirs) {
    if (::fsync(d.fd()) != 0) throw io_error("cannot sync directory", d.path(), errno);
  }
}

void sync_dir(const std::string& path) {
  File d = open_dir(AT_FDCWD, path, path);
  if (::fsync(d.fd()) != 0) throw io_error("cannot sync directory", path, errno);
}

void remove_contents(const File& dir) {
  for (const Entry& e : list_dir(dir)) {
    std::string path = join(dir.path(), e.name);
    int flags = 0;
    if (e.is_dir) {
      remove_contents(open_dir(dir.fd(), e.name, path));
      flags = AT_REMOVEDIR;
    }
    if (::unlinkat(dir.fd(), e.name.c_str(), flags) != 0 && errno != ENOENT) {
      throw io_error("cannot remove", path, errno);
    }
  }
}

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

[[noreturn]] void throw_exists(const std::string& path) {
  throw Error(ErrorCode::kExists,
              "output '" + path + "' already exists; use --force to replace it");
}

// rename(2) that never replaces an existing target. Falls back to a check
// followed by rename where RENAME_NOREPLACE is unsupported.
void rename_noreplace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  int err = errno;
  if (err == EEXIST || err == ENOTEMPTY) throw_exists(to);
  if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) {
    throw io_error("cannot rename '" + from + "' to", to, err);
  }
  if (exists(to)) throw_exists(to);
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw io_error("cannot rename '" + from + "' to", to, errno);
}

// The pid in a staging name "<prefix><pid>-<suffix>", or 0 if `name` is not one.
pid_t staging_pid(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return 0;
  const std::string rest = name.substr(prefix.size());
  const size_t dash = rest.find('-');
  if (dash == 0 || dash == std::string::npos || dash > 9) return 0;
  pid_t pid = 0;
  for (size_t i = 0; i < dash; ++i) {
    if (rest[i] < '0' || rest[i] > '9') return 0;
    pid = pid * 10 + (rest[i] - '0');
  }
  return pid;
}

}  // namespace

void refuse_existing_output(const std::string& final_path, bool force) {
  if (!force && exists(final_path)) throw_exists(final_path);
}

namespace {

// Removes the staging entries beside final_path whose pid `remove(pid)` selects.
template <class Select>
unsigned remove_staging(const std::string& final_path, Select remove) {
  SplitPath p;
  try {
    p = split_path(final_path);
  } catch (const Error&) {
    return 0;
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(p.parent.c_str()), ::closedir);
  if (!dir) return 0;
  const std::string prefixes[] = {"." + p.base + ".partial-", "." + p.base + ".old-"};
  std::vector<std::string> found;
  while (dirent* e = ::readdir(dir.get())) {
    const std::string name = e->d_name;
    for (const std::string& prefix : prefixes) {
      const pid_t pid = staging_pid(name, prefix);
      if (pid <= 0 || !remove(pid)) continue;
      const std::string full = join(p.parent, name);
      struct stat st;
      if (::lstat(full.c_str(), &st) != 0 || st.st_uid != ::geteuid()) continue;
      if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) continue;
      found.push_back(full);
    }
  }
  unsigned removed = 0;
  for (const std::string& path : found) {
    try {
      StagedDirectory::remove_tree(path);
      ++removed;
    } catch (const Error&) {
    }
  }
  return removed;
}

}  // namespace

unsigned StagedDirectory::remove_stale(const std::string& final_path) {
  const pid_t self = ::getpid();
  // Not this process, and gone: alive (even reused by another process) or not ours to judge stays.
  return remove_staging(final_path, [self](pid_t pid) { return pid != self && ::kill(pid, 0) != 0 && errno == ESRCH; });
}

unsigned StagedDirectory::remove_own(const std::string& final_path) {
  const pid_t self = ::getpid();
  return remove_staging(final_path, [self](pid_t pid) { return pid == self; });
}

StagedDirectory::StagedDirectory(std::string final_path, bool force)
    : final_path_(std::move(final_path)), force_(force) {
  // "out/" names the same thing as "out", but lstat("out/") fails on a file.
  while (final_path_.size() > 1 && final_path_.back() == '/') final_path_.pop_back();
  SplitPath p = split_path(final_path_);
  if (!force_ && exists(final_path_)) throw_exists(final_path_);
  remove_stale(final_path_);
  for (int attempt = 0;; ++attempt) {
    std::string candidate = sibling_name(p, "partial");
    if (::mkdir(candidate.c_str(), 0777) == 0) {
      staging_path_ = std::move(candidate);
      return;
    }
    if (errno != EEXIST || attempt >= 16) {
      throw io_error("cannot create staging directory", candidate, errno);
    }
  }
}

StagedDirectory::~StagedDirectory() {
  if (committed_ || staging_path_.empty()) return;
  try {
    remove_tree(staging_path_);
  } catch (...) {
    // Nothing better to do in a destructor; the name says it is a leftover.
  }
}

StagedDirectory::StagedDirectory(StagedDirectory&& o) noexcept
    : final_path_(std::move(o.final_path_)),
      staging_path_(std::exchange(o.staging_path_, {})),
      force_(o.force_),
      committed_(o.committed_) {}

StagedDirectory& StagedDirectory::operator=(StagedDirectory&& o) noexcept {
  if (this != &o) {
    StagedDirectory tmp(std::move(*this));  // its destructor cleans up our old staging dir
    final_path_ = std::move(o.final_path_);
    staging_path_ = std::exchange(o.staging_path_, {});
    force_ = o.force_;
    committed_ = o.committed_;
  }
  return *this;
}

void StagedDirectory::commit() {
  if (committed_ || staging_path_.empty()) {
    throw Error(ErrorCode::kUsage, "output directory '" + final_path_ + "' committed twice");
  }
  SplitPath p = split_path(final_path_);
  sync_tree(open_dir(AT_FDCWD, staging_path_, staging_path_));

  std::string old_tree;  // a replaced final directory, to be removed
  if (!force_ || !exists(final_path_)) {
    rename_noreplace(staging_path_, final_path_);
  } else if (::renameat2(AT_FDCWD, staging_path_.c_str(), AT_FDCWD, final_path_.c_str(),
                         RENAME_EXCHANGE) == 0) {
    old_tree = staging_path_;  // the exchange left the old tree under our staging name
  } else if (int err = errno; err == ENOENT) {
    rename_noreplace(staging_path_, final_path_);  // the old output vanished meanwhile
  } else if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) {
    throw io_error("cannot exchange '" + staging_path_ + "' with", final_path_, err);
  } else {
    // No atomic exchange here: move the old one aside, then the new one in.
    old_tree = sibling_name(p, "old");
    if (::rename(final_path_.c_str(), old_tree.c_str()) != 0) {
      throw io_error("cannot move the old output aside to '" + old_tree + "' from", final_path_,
                     errno);
    }
    if (::rename(staging_path_.c_str(), final_path_.c_str()) != 0) {
      int rename_err = errno;
      ::rename(old_tree.c_str(), final_path_.c_str());  // best effort: put the old one back
      throw io_error("cannot rename '" + staging_path_ + "' to", final_path_, rename_err);
    }
  }
  committed_ = true;
  sync_dir(p.parent);
  if (!old_tree.empty()) {
    try {
      remove_tree(old_tree);
    } catch (Error& e) {
      throw e.with("the new output is in place; remove the old copy '" + old_tree + "' by hand");
    }
  }
}

void StagedDirectory::remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw io_error("cannot stat", path, errno);
  }
  if (S_ISDIR(st.st_mode)) {
    remove_contents(open_dir(AT_FDCWD, path, path));
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) throw io_error("cannot remove", path, errno);
  } else if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw io_error("cannot remove", path, errno);
  }
}

StagedFile::StagedFile(std::string final_path, bool force)
    : final_path_(std::move(final_path)), force_(force) {
  SplitPath p = split_path(final_path_);
  if (!force_ && exists(final_path_)) throw_exists(final_path_);
  StagedDirectory::remove_stale(final_path_);
  for (int attempt = 0;; ++attempt) {
    std::string candidate = sibling_name(p, "partial");
    int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      staging_path_ = candidate;
      file_ = File(fd, std::move(candidate));
      return;
    }
    if (errno != EEXIST || attempt >= 16) throw io_error("cannot create temporary output file", candidate, errno);
  }
}

StagedFile::~StagedFile() {
  if (staging_path_.empty()) return;
  file_ = File();
  ::unlink(staging_path_.c_str());
}

StagedFile::StagedFile(StagedFile&& o) noexcept
    : final_path_(std::move(o.final_path_)),
      staging_path_(std::exchange(o.staging_path_, {})),
      force_(o.force_),
      file_(std::move(o.file_)) {}

void StagedFile::commit() {
  if (staging_path_.empty()) throw Error(ErrorCode::kUsage, "output file '" + final_path_ + "' committed twice");
  file_.sync();
  file_.close();
  if (force_) {
    if (::rename(staging_path_.c_str(), final_path_.c_str()) != 0) {
      throw io_error("cannot rename '" + staging_path_ + "' to", final_path_, errno);
    }
  } else {
    rename_noreplace(staging_path_, final_path_);
  }
  staging_path_.clear();
  sync_dir(split_path(final_path_).parent);
}

}  // namespace vmsynth::io
