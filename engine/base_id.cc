#include "engine/base_id.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>

#include "common/error.h"
#include "engine/cache_dir.h"
#include "io/file.h"

namespace vmsynth {

namespace {

constexpr std::string_view kDomain = "vmsynth base id v1";

std::string cache_key(const VmDir& base) {
  std::string key;
  for (ImageKind k : kImageKinds) {
    struct stat st;
    std::string p = base.image(k);
    if (::stat(p.c_str(), &st) != 0) throw io_error("cannot stat base image", p, errno);
    key += std::to_string(st.st_dev) + "-" + std::to_string(st.st_ino) + "-" + std::to_string(st.st_size) + "-" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "-" +
           std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec) + "_";
  }
  return key;
}

Hash128 hash_images(const VmDir& base) {
  StreamHash128 id;
  id.update(std::as_bytes(std::span(kDomain)));
  std::vector<io::File> files;
  for (ImageKind k : kImageKinds) {
    files.push_back(io::File::open_read(base.image(k)));
    id.update_u64(files.back().size());
  }
  tbb::enumerable_thread_specific<std::vector<std::byte>> buffers(
      [] { return std::vector<std::byte>(kBaseIdChunkSize); });
  for (const io::File& f : files) {
    uint64_t size = f.size();
    uint64_t chunks = (size + kBaseIdChunkSize - 1) / kBaseIdChunkSize;
    std::vector<Hash128> digests(chunks);
    tbb::parallel_for(uint64_t{0}, chunks, [&](uint64_t c) {
      auto& buf = buffers.local();
      uint64_t off = c * kBaseIdChunkSize;
      size_t n = static_cast<size_t>(std::min<uint64_t>(kBaseIdChunkSize, size - off));
      f.pread_full(std::span(buf).first(n), off);
      digests[c] = hash128(std::span(buf).first(n));
    });
    for (const Hash128& d : digests) id.update(d);
  }
  return id.digest();
}

}  // namespace

Hash128 compute_base_id(const VmDir& base, const BaseIdOptions& opts) {
  if (!opts.use_cache) return hash_images(base);
  const std::string dir = opts.cache_dir.empty() ? default_cache_dir() : opts.cache_dir;
  const std::string key = cache_key(base);
  const std::string entry = dir + "/base-id-" + hash128(std::as_bytes(std::span(key))).hex();
  try {
    std::string text = io::read_small_file(entry, 4096);
    // Entry: "<key>\n<hex id>\n"; the key is repeated to rule out a digest collision.
    auto nl = text.find('\n');
    Hash128 cached;
    if (nl != std::string::npos && text.substr(0, nl) == key && text.size() >= nl + 33 &&
        Hash128::from_hex(std::string_view(text).substr(nl + 1, 32), cached)) {
      (void)::utimensat(AT_FDCWD, entry.c_str(), nullptr, 0);  // recently used: kept longest by the pruning
      return cached;
    }
  } catch (const Error&) {
    // No entry, or unreadable: compute.
  }
  Hash128 id = hash_images(base);
  // The cache is an optimisation: failing to write it is not an error.
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!ec) {
    std::string tmp = entry + ".tmp-" + std::to_string(::getpid());
    try {
      io::File f = io::File::create(tmp);
      std::string text = key + "\n" + id.hex() + "\n";
      f.write_all(std::as_bytes(std::span(text)));
      f.close();
      if (::rename(tmp.c_str(), entry.c_str()) != 0) ::unlink(tmp.c_str());
      prune_base_id_cache(dir);
    } catch (const Error&) {
      ::unlink(tmp.c_str());
    }
  }
  return id;
}

}  // namespace vmsynth
