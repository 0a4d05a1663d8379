#include "io/image_clone.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "common/error.h"
#include "io/file.h"

namespace vmsynth::io {

namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;  // read/write buffer
constexpr size_t kZeroBlock = 4096;              // granularity of hole punching by skipping
constexpr size_t kMaxCopyRange = size_t{1} << 30;

// Errors meaning "this filesystem/kernel cannot do that", as opposed to a
// real I/O failure.
bool is_unsupported(int err) {
  return err == EOPNOTSUPP || err == ENOTSUP || err == EXDEV || err == EINVAL || err == ENOSYS ||
         err == ENOTTY;
}

std::string reason(const char* op, int err) { return std::string(op) + ": " + std::strerror(err); }

bool all_zero(std::span<const std::byte> b) {
  return b.empty() ||
         (b[0] == std::byte{0} && std::memcmp(b.data(), b.data() + 1, b.size() - 1) == 0);
}

// Calls fn(offset, length) for each data extent of `f` in [pos, limit). A
// file system without SEEK_DATA support reports everything as data.
template <class Fn>
void for_each_data_extent(const File& f, uint64_t pos, uint64_t limit, Fn&& fn) {
  while (pos < limit) {
    off_t data = ::lseek(f.fd(), static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) return;  // only a hole from here to the end
      if (!is_unsupported(errno)) {
        throw io_error("cannot find data after offset " + std::to_string(pos) + " of", f.path(),
                       errno);
      }
      data = static_cast<off_t>(pos);
    }
    if (static_cast<uint64_t>(data) >= limit) return;
    off_t hole = ::lseek(f.fd(), data, SEEK_HOLE);
    if (hole < 0) {
      if (!is_unsupported(errno)) {
        throw io_error("cannot find a hole after offset " + std::to_string(data) + " of", f.path(),
                       errno);
      }
      hole = static_cast<off_t>(limit);
    }
    uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), limit);
    if (end <= static_cast<uint64_t>(data)) return;  // source changed under us
    fn(static_cast<uint64_t>(data), end - static_cast<uint64_t>(data));
    pos = end;
  }
}

// Copies data extents from src to dst with copy_file_range or read/write.
// With `may_fall_back`, a copy_file_range the kernel refuses turns into
// read/write for the rest.
class ExtentCopier {
 public:
  ExtentCopier(const File& src, File& dst, CloneMethod method, bool may_fall_back, CloneResult& out)
      : src_(src), dst_(dst), method_(method), may_fall_back_(may_fall_back), out_(out) {}

  void copy(uint64_t offset, uint64_t length) {
    uint64_t end = offset + length;
    while (offset < end) {
      uint64_t n = method_ == CloneMethod::kCopyRange ? copy_range(offset, end - offset)
                                                      : read_write(offset, end - offset);
      if (n == 0) return;  // source ended early (it shrank while we copied)
      offset += n;
    }
  }

  CloneMethod method() const { return method_; }

 private:
  // Returns bytes advanced; 0 at end of source. Switches method_ on fallback
  // and returns without advancing, so the caller retries with read/write.
  uint64_t copy_range(uint64_t offset, uint64_t length) {
    loff_t in = static_cast<loff_t>(offset);
    loff_t out = static_cast<loff_t>(offset);
    ssize_t n =
        ::copy_file_range(src_.fd(), &in, dst_.fd(), &out,
                          static_cast<size_t>(std::min<uint64_t>(length, kMaxCopyRange)), 0);
    if (n >= 0) {
      out_.bytes_copied += static_cast<uint64_t>(n);
      return static_cast<uint64_t>(n);
    }
    int err = errno;
    if (err == EINTR) return copy_range(offset, length);
    if (is_unsupported(err)) {
      if (may_fall_back_) {
        if (!out_.fallback_reason.empty()) out_.fallback_reason += "; ";
        out_.fallback_reason += reason("copy_file_range", err);
        method_ = CloneMethod::kReadWrite;
        return read_write(offset, length);
      }
      throw Error(ErrorCode::kUnsupported, "cannot clone '" + src_.path() + "' to '" + dst_.path() +
                                               "' with copy_file_range: " + std::strerror(err) +
                                               "; use the read-write method");
    }
    throw io_error("cannot copy offset " + std::to_string(offset) + " of '" + src_.path() + "' to",
                   dst_.path(), err);
  }

  uint64_t read_write(uint64_t offset, uint64_t length) {
    if (buf_.empty()) buf_.resize(kChunkBytes);
    size_t want = static_cast<size_t>(std::min<uint64_t>(length, buf_.size()));
    size_t got = src_.pread_some(std::span(buf_.data(), want), offset);
    std::span<const std::byte> chunk(buf_.data(), got);
    // Write maximal runs of non-zero 4 KiB blocks; zero blocks stay holes.
    size_t run = 0;
    for (size_t pos = 0; pos < chunk.size(); pos += kZeroBlock) {
      auto block = chunk.subspan(pos, std::min(kZeroBlock, chunk.size() - pos));
      if (all_zero(block)) {
        write_run(chunk.subspan(run, pos - run), offset + run);
        run = pos + block.size();
      }
    }
    write_run(chunk.subspan(run), offset + run);
    return got;
  }

  void write_run(std::span<const std::byte> run, uint64_t offset) {
    if (run.empty()) return;
    dst_.pwrite_full(run, offset);
    out_.bytes_copied += run.size();
  }

  const File& src_;
  File& dst_;
  CloneMethod method_;
  bool may_fall_back_;
  CloneResult& out_;
  std::vector<std::byte> buf_;
};

// Opens src read-only; nullopt when it does not exist.
std::optional<File> open_source_image(const std::string& src, struct stat& st) {
  int fd = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw io_error("cannot open base image", src, errno);
  }
  File f(fd, src);
  if (::fstat(fd, &st) != 0) throw io_error("cannot stat", src, errno);
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kUnsupported, "base image '" + src + "' is not a regular file");
  }
  return f;
}

}  // namespace

CloneResult clone_image(const std::string& src, const std::string& dst, uint64_t dst_size,
                        CloneMethod method, const CloneHooks* hooks) {
  struct stat src_st {};
  std::optional<File> in = open_source_image(src, src_st);
  uint64_t src_size = in ? static_cast<uint64_t>(src_st.st_size) : 0;

  struct stat dst_st {};
  if (in && ::stat(dst.c_str(), &dst_st) == 0 && dst_st.st_dev == src_st.st_dev &&
      dst_st.st_ino == src_st.st_ino) {
    throw Error(ErrorCode::kUsage, "cannot clone '" + src + "' onto itself ('" + dst + "')");
  }
  File out = File::create(dst);
  auto started = [&] {
    if (hooks != nullptr && hooks->started) hooks->started();
  };

  CloneResult result;
  result.method = method;
  uint64_t limit = std::min(src_size, dst_size);
  if (limit == 0) {
    out.truncate(dst_size);
    started();
    return result;
  }

  if (method == CloneMethod::kReflink || method == CloneMethod::kAuto) {
    if (::ioctl(out.fd(), FICLONE, in->fd()) == 0) {
      out.truncate(dst_size);
      result.method = CloneMethod::kReflink;
      result.bytes_shared = limit;
      started();
      return result;
    }
    int err = errno;
    if (!is_unsupported(err)) {
      throw io_error("cannot reflink '" + src + "' to", dst, err);
    }
    if (method == CloneMethod::kReflink) {
      throw Error(ErrorCode::kUnsupported,
                  "cannot reflink '" + src + "' to '" + dst + "': " + std::strerror(err) +
                      " (the filesystem may not support it); use the auto or "
                      "copy-range method");
    }
    result.fallback_reason = reason("FICLONE", err);
  }

  out.truncate(dst_size);  // the whole file is a hole; copy the data into it
  started();
  CloneMethod copy_method =
      method == CloneMethod::kReadWrite ? CloneMethod::kReadWrite : CloneMethod::kCopyRange;
  ExtentCopier copier(*in, out, copy_method, method == CloneMethod::kAuto, result);
  if (hooks == nullptr || !hooks->claim) {
    for_each_data_extent(*in, 0, limit, [&](uint64_t off, uint64_t len) { copier.copy(off, len); });
  } else {
    const uint64_t step = std::max<uint64_t>(hooks->region_bytes, 4096);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (uint64_t begin = 0; begin < limit; begin += step) {
      const uint64_t end = std::min(limit, begin + step);
      ranges.clear();
      if (!hooks->claim(begin, end, ranges)) break;
      for (auto [b, e] : ranges) {
        for_each_data_extent(*in, b, std::min(e, end), [&](uint64_t off, uint64_t len) { copier.copy(off, len); });
      }
      if (hooks->done) hooks->done(begin, end);
    }
  }
  result.method = copier.method();
  return result;
}

std::string_view clone_method_name(CloneMethod method) { return name_of(method); }

CloneMethod parse_clone_method(std::string_view name) { return parse_enum<CloneMethod>(name, "clone method"); }

}  // namespace vmsynth::io
