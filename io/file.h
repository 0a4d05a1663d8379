// Files and read-only mappings with RAII ownership.
//
// File owns one file descriptor; Mapping owns one read-only mmap. Both are
// move-only. Every call that fails throws vmsynth::Error (kIo) naming the path
// and, where it matters, the offset. Short reads/writes and EINTR are retried
// internally, so callers see whole transfers or an error.
//
// Thread safety: distinct objects are independent. pread/pwrite on one File
// from several threads is safe (they take explicit offsets).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace vmsynth::io {

class File {
 public:
  File() = default;
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~File();
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Opens an existing file read-only (O_CLOEXEC).
  static File open_read(const std::string& path);
  // Opens an existing file read-write.
  static File open_rw(const std::string& path);
  // Creates (or truncates) a file for writing, mode 0644.
  static File create(const std::string& path);

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool valid() const { return fd_ >= 0; }

  uint64_t size() const;
  void truncate(uint64_t size);
  void sync();  // fdatasync

  // Reads exactly buf.size() bytes at offset; throws kCorrupt-free kIo on error
  // and on end of file (naming the offset).
  void pread_full(std::span<std::byte> buf, uint64_t offset) const;
  // Reads up to buf.size() bytes at offset, stopping early only at end of file.
  size_t pread_some(std::span<std::byte> buf, uint64_t offset) const;
  void pwrite_full(std::span<const std::byte> buf, uint64_t offset);
  // Reads up to buf.size() bytes from the current position (pipes, sockets);
  // returns 0 only at end of stream.
  size_t read_some(std::span<std::byte> buf);
  void write_all(std::span<const std::byte> buf);

  void close();

 private:
  int fd_ = -1;
  std::string path_;
};

// A read-only shared mapping of a whole file. An empty file maps to an empty span.
class Mapping {
 public:
  Mapping() = default;
  explicit Mapping(const File& f);
  ~Mapping();
  Mapping(Mapping&& o) noexcept;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(addr_), size_}; }
  size_t size() const { return size_; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// Whole-file helpers for small files (vm.json, devstate.bin, keys).
std::string read_small_file(const std::string& path, size_t max_bytes);
bool path_exists(const std::string& path);

}  // namespace vmsynth::io
