#include "engine/launch_output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "engine/base_id.h"

namespace vmsynth {

using format::kBlockSize;

Hash128 check_base(const VmDir& base, const format::FileHeader& h, const BaseIdOptions& id_opts) {
  for (unsigned i = 0; i < kImageCount; ++i) {
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
  Hash128 id = compute_base_id(base, id_opts);
  if (id != h.base_id) {
    throw Error(ErrorCode::kWrongBase, "this overlay was made for another base VM (overlay names base " +
                                           h.base_id.hex() + ", '" + base.path + "' is " + id.hex() +
                                           "); use the base VM the overlay was created from");
  }
  return id;
}


std::string_view disk_format_name(DiskFormat f) { return name_of(f); }

DiskFormat parse_disk_format(std::string_view name) { return parse_enum<DiskFormat>(name, "disk format"); }

LaunchOutput::LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force,
                           DiskFormat disk_format)
    : base_(base), header_(h), disk_format_(disk_format), staged_(out_dir, force) {}

void LaunchOutput::create_qcow2_disk() {
  // The backing file is named by absolute path: the output directory is
  // renamed into place later and may be moved, the base is not.
  const std::string disk = base_.image(ImageKind::kDisk);
  char* real = ::realpath(disk.c_str(), nullptr);
  if (real == nullptr) throw io_error("cannot resolve the base disk", disk, errno);
  std::string backing(real);
  std::free(real);
  base_disk_ = io::File::open_read(backing);
  qcow2_ = std::make_unique<io::Qcow2Writer>(staged_.path() + "/" + std::string(kQcow2DiskName),
                                             header_.launch_size[image_index(ImageKind::kDisk)], backing);
}

std::string LaunchOutput::clone_images(io::CloneMethod method) {
  std::string used;
  for (unsigned i = 0; i < kImageCount; ++i) {
    auto kind = static_cast<ImageKind>(i);
    if (mapped(i)) {
      create_qcow2_disk();
      continue;
    }
    std::string dst = staged_.path() + "/" + std::string(image_file_name(kind));
    io::CloneResult r = io::clone_image(base_.image(kind), dst, header_.launch_size[i], method);
    if (i == 0) used = std::string(io::clone_method_name(r.method));
    images_[i] = io::File::open_rw(dst);
  }
  return used;
}

std::string LaunchOutput::clone_images_beside_writer(io::CloneMethod method, const std::function<void()>& started) {
  if (mapped(image_index(ImageKind::kDisk))) create_qcow2_disk();
  std::vector<unsigned> raw;
  for (unsigned i = 0; i < kImageCount; ++i) {
    if (!mapped(i)) raw.push_back(i);
  }
  {
    std::lock_guard lock(trackers_mu_);
    for (unsigned i : raw) {
      trackers_[i] = std::make_unique<CloneTracker>(header_.launch_size[i]);
      if (clone_cancelled_) trackers_[i]->cancel();
    }
  }
  std::atomic<unsigned> waiting{static_cast<unsigned>(raw.size())};
  std::string used;
  auto clone_one = [&](unsigned i) {
    try {
      const auto kind = static_cast<ImageKind>(i);
      const std::string dst = staged_.path() + "/" + std::string(image_file_name(kind));
      io::CloneHooks hooks = trackers_[i]->hooks();
      hooks.started = [&, i, dst] {
        images_[i] = io::File::open_rw(dst);
        if (waiting.fetch_sub(1) == 1) started();
      };
      io::CloneResult r = io::clone_image(base_.image(kind), dst, header_.launch_size[i], method, &hooks);
      if (i == 0) used = std::string(io::clone_method_name(r.method));
    } catch (...) {
      for (unsigned j : raw) trackers_[j]->fail(std::current_exception());
      throw;
    }
  };
  if (raw.empty()) {
    started();
    return used;
  }
  // The other image on its own thread; both copies are limited by the disk,
  // and running them together lets the writer start on either at once.
  std::exception_ptr other_error;
  {
    std::jthread other;
    if (raw.size() > 1) {
      other = std::jthread([&] {
        try {
          clone_one(raw[1]);
        } catch (...) {
          other_error = std::current_exception();
        }
      });
    }
    clone_one(raw[0]);
  }
  if (other_error) std::rethrow_exception(other_error);
  return used;
}

void LaunchOutput::cancel_clone() {
  std::lock_guard lock(trackers_mu_);
  clone_cancelled_ = true;
  for (auto& t : trackers_) {
    if (t) t->cancel();
  }
}

void LaunchOutput::write_block(format::BlockAddress a, std::span<const std::byte> block) {
  uint64_t off = a.block * kBlockSize;
  uint64_t size = header_.launch_size[a.image];
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - off));
  place(a.image, off, n, [&](uint64_t file_offset, uint64_t from, uint64_t len) {
    image(a.image).pwrite_full(block.subspan(from, len), file_offset);
  });
}

void LaunchOutput::zero_block(format::BlockAddress a) {
  static const std::array<std::byte, kBlockSize> kZeros{};
  if (!mapped(a.image)) return write_block(a, kZeros);
  uint64_t off = a.block * kBlockSize;
  zero_range(a.image, off, std::min<uint64_t>(kBlockSize, header_.launch_size[a.image] - off));
}

void LaunchOutput::zero_range(unsigned i, uint64_t offset, uint64_t len) {
  if (!mapped(i)) throw Error(ErrorCode::kUsage, "zero_range is for a qcow2 disk");
  for_each_cluster_piece(offset, len, [&](uint64_t at, uint64_t, uint64_t n) { qcow2_->set_zero(at, n); });
}

void LaunchOutput::read_block(format::BlockAddress a, std::span<std::byte> out) const {
  uint64_t off = a.block * kBlockSize;
  uint64_t size = header_.launch_size[a.image];
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - off));
  std::memset(out.data() + n, 0, kBlockSize - n);
  if (!mapped(a.image)) return images_[a.image].pread_full(out.first(n), off);
  // A block lies inside one cluster, but its two subclusters may differ.
  for (uint64_t at = 0; at < n; at += io::Qcow2Writer::kSubclusterSize) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(io::Qcow2Writer::kSubclusterSize, n - at));
    std::span<std::byte> piece = out.subspan(at, len);
    io::Qcow2Writer::Location l = qcow2_->lookup(off + at);
    if (l.source == io::Qcow2Writer::Source::kData) {
      qcow2_->file().pread_full(piece, l.file_offset);
    } else if (l.source == io::Qcow2Writer::Source::kZero) {
      std::memset(piece.data(), 0, len);
    } else {
      size_t got = base_disk_.pread_some(piece, off + at);  // past the base's end: zeros
      std::memset(piece.data() + got, 0, len - got);
    }
  }
}

void LaunchOutput::apply_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h,
                                    std::span<const std::byte> table, std::span<const std::byte> payload) {
  DecodedFile file = decode_file_frame(codec, h, table, payload, &base_);
  io::File f = io::File::create(staged_.path() + "/" + std::string(format::file_id_name(file.record.id)));
  f.pwrite_full(file.content, 0);
}

void LaunchOutput::start_writeback() {
  for (unsigned i = 0; i < kImageCount; ++i) {
    const io::File& f = image(i);
    if (f.valid()) (void)::sync_file_range(f.fd(), 0, 0, SYNC_FILE_RANGE_WRITE);
  }
}

void LaunchOutput::commit() {
  if (qcow2_) {
    qcow2_->finish();
    qcow2_->file().close();
  }
  for (io::File& f : images_) {
    if (f.valid()) f.close();
  }
  staged_.commit();
}

}  // namespace vmsynth
