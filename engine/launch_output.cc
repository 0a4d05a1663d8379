#include "engine/launch_output.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/base_id.h"

namespace vmsynth {

using format::kBlockSize;

Hash128 check_base(const VmDir& base, const format::FileHeader& h, bool use_cache) {
  for (unsigned i = 0; i < format::kImageCount; ++i) {
    std::string p = base.image(static_cast<ImageKind>(i));
    if (!io::path_exists(p)) {
      throw Error(ErrorCode::kUsage, "base VM directory '" + base.path + "' has no " +
                                         std::string(image_file_name(static_cast<ImageKind>(i))));
    }
    uint64_t size = io::File::open_read(p).size();
    if (size != h.base_size[i]) {
      throw Error(ErrorCode::kWrongBase,
                  "this overlay was made for another base VM: its base " +
                      std::string(image_file_name(static_cast<ImageKind>(i))) + " has " +
                      std::to_string(h.base_size[i]) + " bytes, '" + p + "' has " + std::to_string(size) +
                      "; use the base VM the overlay was created from");
    }
  }
  BaseIdOptions o;
  o.use_cache = use_cache;
  Hash128 id = compute_base_id(base, o);
  if (id != h.base_id) {
    throw Error(ErrorCode::kWrongBase, "this overlay was made for another base VM (overlay names base " +
                                           h.base_id.hex() + ", '" + base.path + "' is " + id.hex() +
                                           "); use the base VM the overlay was created from");
  }
  return id;
}

namespace {

// Removes staging directories `.<name>.partial-<pid>-<suffix>` beside out_dir
// left by a synthesis that was killed (its pid no longer exists) so they
// neither pile up nor hold disk space. Only directories owned by this user
// whose process is gone are touched; a pid that is alive (even reused by an
// unrelated process) keeps its directory. Best effort: errors are ignored.
void remove_stale_staging(const std::string& out_dir) {
  std::string path = out_dir;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  std::string parent = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  std::string prefix = "." + (slash == std::string::npos ? path : path.substr(slash + 1)) + ".partial-";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(parent.c_str()), ::closedir);
  if (!dir) return;
  std::vector<std::string> stale;
  while (dirent* e = ::readdir(dir.get())) {
    std::string name = e->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    std::string rest = name.substr(prefix.size());
    size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || dash > 9) continue;
    pid_t pid = 0;
    bool digits = true;
    for (size_t i = 0; i < dash; ++i) {
      digits = digits && rest[i] >= '0' && rest[i] <= '9';
      pid = pid * 10 + (rest[i] - '0');
    }
    if (!digits || pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    std::string full = parent + "/" + name;
    struct stat st;
    if (::lstat(full.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) continue;
    stale.push_back(full);
  }
  for (const std::string& p : stale) {
    try {
      io::StagedDirectory::remove_tree(p);
    } catch (const Error&) {
    }
  }
}

io::StagedDirectory make_staging(const std::string& out_dir, bool force) {
  remove_stale_staging(out_dir);
  return io::StagedDirectory(out_dir, force);
}

}  // namespace

LaunchOutput::LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force)
    : base_(base), header_(h), staged_(make_staging(out_dir, force)) {}

std::string LaunchOutput::clone_images(io::CloneMethod method) {
  std::string used;
  for (unsigned i = 0; i < format::kImageCount; ++i) {
    auto kind = static_cast<ImageKind>(i);
    std::string dst = staged_.path() + "/" + std::string(image_file_name(kind));
    io::CloneResult r = io::clone_image(base_.image(kind), dst, header_.launch_size[i], method);
    if (i == 0) used = std::string(io::clone_method_name(r.method));
    images_[i] = io::File::open_rw(dst);
  }
  return used;
}

void LaunchOutput::write_block(format::BlockAddress a, std::span<const std::byte> block) {
  uint64_t off = a.block * kBlockSize;
  uint64_t size = header_.launch_size[a.image];
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - off));
  images_[a.image].pwrite_full(block.first(n), off);
}

void LaunchOutput::read_block(format::BlockAddress a, std::span<std::byte> out) const {
  uint64_t off = a.block * kBlockSize;
  uint64_t size = header_.launch_size[a.image];
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - off));
  images_[a.image].pread_full(out.first(n), off);
  std::memset(out.data() + n, 0, kBlockSize - n);
}

void LaunchOutput::apply_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h,
                                    std::span<const std::byte> table, std::span<const std::byte> payload) {
  format::FileRecord rec = codec.decode_file_table(h, table);
  const std::string name(format::file_id_name(rec.id));
  std::string prefix;
  if (rec.encoding == format::FileEncoding::kZstdBasePrefix) {
    std::string p = base_.file(name);
    if (!io::path_exists(p)) {
      throw Error(ErrorCode::kWrongBase, "the overlay encodes " + name + " against the base VM's " + name +
                                             ", but '" + p + "' does not exist");
    }
    prefix = io::read_small_file(p, format::kMaxOpaqueFileSize);
    if (hash128(std::as_bytes(std::span(prefix))) != rec.prefix_hash) {
      throw Error(ErrorCode::kWrongBase, "the base VM's " + name + " ('" + p +
                                             "') is not the one the overlay was made against");
    }
  }
  std::vector<std::byte> content(rec.size);
  codec.decode_payload(h, payload, std::as_bytes(std::span(prefix)), content);
  if (hash128(content) != rec.hash) throw_corrupt(name + " does not match its recorded hash");
  io::File f = io::File::create(staged_.path() + "/" + name);
  f.pwrite_full(content, 0);
}

void LaunchOutput::commit() {
  for (io::File& f : images_) {
    if (f.valid()) f.close();
  }
  staged_.commit();
}

void throw_hash_mismatch(const format::BlockOp& op) {
  throw_corrupt(std::string(format::op_kind_name(op.kind)) + " op for " +
                (op.target.image == format::kImageMemory ? "memory" : "disk") + " block " +
                std::to_string(op.target.block) + " reconstructs content that does not match its recorded hash");
}

}  // namespace vmsynth
