#include "lib/key_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common/error.h"

namespace vmsynth::lib {

namespace {

// Reads a small file, or a pipe such as `--key-file <(cmd)`, to its end.
// A file longer than `max_bytes` is refused (a key file is 32-65 bytes).
codec::SecretBytes read_secret_file(const std::string& path, const std::string& origin, size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorCode::kUsage, io_error("cannot open " + origin, "", errno).message());
  std::vector<std::byte> buf(max_bytes + 1);
  size_t n = 0;
  int err = 0;
  while (n < buf.size()) {
    ssize_t r = ::read(fd, buf.data() + n, buf.size() - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) err = errno;
    if (r <= 0) break;
    n += static_cast<size_t>(r);
  }
  ::close(fd);
  codec::SecretBytes out{std::span<const std::byte>(buf).first(std::min(n, max_bytes))};
  std::fill(buf.begin(), buf.end(), std::byte{0});
  if (err != 0) throw Error(ErrorCode::kUsage, io_error("cannot read " + origin, "", err).message());
  if (n > max_bytes) {
    throw Error(ErrorCode::kUsage, origin + " is longer than " + std::to_string(max_bytes) + " bytes");
  }
  return out;
}

}  // namespace

codec::KeySpec load_key_spec(const std::string& key_file, const std::string& passphrase_file) {
  const bool raw = !key_file.empty();
  const std::string& path = raw ? key_file : passphrase_file;
  if (path.empty()) return {};
  const std::string origin = std::string(raw ? "key file '" : "passphrase file '") + path + "'";
  codec::SecretBytes content = read_secret_file(path, origin, raw ? 128 : codec::kMaxPassphraseBytes + 2);
  return raw ? codec::key_from_key_file(content.bytes(), origin)
             : codec::key_from_passphrase_file(content.bytes(), origin);
}

}  // namespace vmsynth::lib
