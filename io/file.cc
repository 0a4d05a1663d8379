#include "io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "common/error.h"

namespace vmsynth::io {

namespace {
File open_flags(const std::string& path, int flags, const char* what) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) throw io_error(what, path, errno);
  return File(fd, path);
}
}  // namespace

File::~File() { close(); }

File::File(File&& o) noexcept : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)) {}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
  }
  return *this;
}

File File::open_read(const std::string& path) { return open_flags(path, O_RDONLY, "cannot open"); }
File File::open_rw(const std::string& path) { return open_flags(path, O_RDWR, "cannot open for writing"); }
File File::create(const std::string& path) {
  return open_flags(path, O_RDWR | O_CREAT | O_TRUNC, "cannot create");
}

void File::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

uint64_t File::size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw io_error("cannot stat", path_, errno);
  return static_cast<uint64_t>(st.st_size);
}

void File::truncate(uint64_t size) {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw io_error("cannot resize", path_, errno);
}

void File::sync() {
  if (::fdatasync(fd_) != 0) throw io_error("cannot sync", path_, errno);
}

size_t File::pread_some(std::span<std::byte> buf, uint64_t offset) const {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error("cannot read at offset " + std::to_string(offset + done) + " of", path_, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

void File::pread_full(std::span<std::byte> buf, uint64_t offset) const {
  size_t n = pread_some(buf, offset);
  if (n != buf.size()) {
    throw Error(ErrorCode::kIo, "unexpected end of file '" + path_ + "' at offset " +
                                    std::to_string(offset + n));
  }
}

void File::pwrite_full(std::span<const std::byte> buf, uint64_t offset) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error("cannot write at offset " + std::to_string(offset + done) + " of", path_, errno);
    }
    done += static_cast<size_t>(n);
  }
}

size_t File::read_some(std::span<std::byte> buf) {
  for (;;) {
    ssize_t n = ::read(fd_, buf.data(), buf.size());
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) throw io_error("cannot read", path_, errno);
  }
}

void File::write_all(std::span<const std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::write(fd_, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error("cannot write", path_, errno);
    }
    done += static_cast<size_t>(n);
  }
}

Mapping::Mapping(const File& f) {
  size_ = f.size();
  if (size_ == 0) return;
  addr_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, f.fd(), 0);
  if (addr_ == MAP_FAILED) {
    addr_ = nullptr;
    size_ = 0;
    throw io_error("cannot map", f.path(), errno);
  }
}

Mapping::~Mapping() {
  if (addr_) ::munmap(addr_, size_);
}

Mapping::Mapping(Mapping&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (addr_) ::munmap(addr_, size_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

std::string read_small_file(const std::string& path, size_t max_bytes) {
  File f = File::open_read(path);
  uint64_t sz = f.size();
  if (sz > max_bytes) {
    throw Error(ErrorCode::kUnsupported, "file '" + path + "' is " + std::to_string(sz) +
                                             " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::string s(sz, '\0');
  f.pread_full(std::as_writable_bytes(std::span(s)), 0);
  return s;
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace vmsynth::io
