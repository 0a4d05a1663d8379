#include "engine/qcow2_disk.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace vmsynth {

namespace {

std::string absolute_path(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) throw io_error("cannot resolve the base disk", path, errno);
  std::string s(real);
  std::free(real);
  return s;
}

}  // namespace

Qcow2Disk::Qcow2Disk(const std::string& base_disk, const std::string& path, uint64_t size) {
  const std::string backing = absolute_path(base_disk);
  base_disk_ = io::File::open_read(backing);
  writer_ = std::make_unique<io::Qcow2Writer>(path, size, backing);
}

void Qcow2Disk::set_zero(uint64_t offset, uint64_t len) {
  for_each_cluster_piece(offset, len, [&](uint64_t at, uint64_t, uint64_t n) { writer_->set_zero(at, n); });
}

void Qcow2Disk::read(uint64_t offset, std::span<std::byte> out) const {
  // A block lies inside one cluster, but its subclusters may differ.
  for (uint64_t at = 0; at < out.size(); at += io::Qcow2Writer::kSubclusterSize) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(io::Qcow2Writer::kSubclusterSize, out.size() - at));
    std::span<std::byte> piece = out.subspan(at, len);
    io::Qcow2Writer::Location l = writer_->lookup(offset + at);
    if (l.source == io::Qcow2Writer::Source::kData) {
      writer_->file().pread_full(piece, l.file_offset);
    } else if (l.source == io::Qcow2Writer::Source::kZero) {
      std::memset(piece.data(), 0, len);
    } else {
      size_t got = base_disk_.pread_some(piece, offset + at);  // past the base's end: zeros
      std::memset(piece.data() + got, 0, len - got);
    }
  }
}

void Qcow2Disk::finish() {
  writer_->finish();
  writer_->file().close();
}

}  // namespace vmsynth
