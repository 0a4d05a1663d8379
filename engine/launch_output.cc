#include "engine/launch_output.h"

#include <fcntl.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/error.h"

namespace vmsynth {

using format::kBlockSize;

LaunchOutput::LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force,
                           DiskFormat disk_format)
    : base_(base), header_(h), disk_format_(disk_format), staged_(out_dir, force) {}

LaunchOutput::~LaunchOutput() {
  // The kernel may still read buffers of requests in flight: wait for them
  // before anything else goes.
  queue_.reset();
}

// ---- The write path ----------------------------------------------------------

void LaunchOutput::open_sink(const SinkOptions& opts, RunDone done) {
  if (sink_open_) throw Error(ErrorCode::kUsage, "the output's sink is already open");
  run_done_ = std::move(done);
  if (opts.queued) {
    io::WriteQueueOptions qo;
    qo.queue_depth = opts.queue_depth;
    qo.force_pwrite = opts.backend == WriteBackend::kPwrite;
    std::vector<int> fds;
    std::vector<std::string> names;
    for (unsigned i = 0; i < kImageCount; ++i) {
      fds.push_back(image(i).fd());
      names.push_back(image(i).path());
    }
    queue_ = io::WriteQueue::open(
        std::move(fds), qo, [this](uint64_t run) { piece_done(static_cast<uint32_t>(run)); }, std::move(names));
    queue_wanted_uring_ = opts.backend != WriteBackend::kPwrite;
  }
  sink_open_ = true;
}

void LaunchOutput::write_run(unsigned image_i, uint64_t first_block, uint64_t blocks, const std::byte* data,
                             uint64_t tag) {
  const uint64_t offset = first_block * kBlockSize;
  const uint64_t size = std::min(blocks * kBlockSize, header_.launch_size[image_i] - offset);
  if (trackers_[image_i]) trackers_[image_i]->before_write(offset, size);  // the base clone copies around it
  if (data == nullptr) {
    if (!records_zeros(image_i)) throw Error(ErrorCode::kUsage, "zeros without data are for a qcow2 disk");
    qcow2_->set_zero(offset, size);
    if (run_done_) run_done_(tag);
    return;
  }
  uint32_t run = 0;
  if (free_runs_.empty()) {
    run = static_cast<uint32_t>(runs_.size());
    runs_.emplace_back();
  } else {
    run = free_runs_.back();
    free_runs_.pop_back();
  }
  runs_[run] = {tag, 1};  // held until every piece is handed over
  auto write_piece = [&](uint64_t file_offset, uint64_t from, uint64_t len) {
    const std::span<const std::byte> piece(data + from, static_cast<size_t>(len));
    ++runs_[run].pieces;
    if (queue_) {
      queue_->write(image_i, file_offset, piece, run);
    } else {
      image(image_i).pwrite_full(piece, file_offset);
      piece_done(run);
    }
  };
  if (records_zeros(image_i)) {
    qcow2_->place(offset, size, write_piece);  // split at its clusters, allocated here
  } else {
    write_piece(offset, 0, size);
  }
  piece_done(run);
}

void LaunchOutput::piece_done(uint32_t run) noexcept {
  if (--runs_[run].pieces > 0) return;
  free_runs_.push_back(run);
  if (run_done_) run_done_(runs_[run].tag);
}

void LaunchOutput::submit_writes() {
  if (queue_) queue_->submit();
}

void LaunchOutput::drain_writes() {
  if (queue_) queue_->drain();
}

void LaunchOutput::close_sink() {
  queue_.reset();
  sink_open_ = false;
  runs_.clear();
  free_runs_.clear();
}

std::string_view LaunchOutput::write_backend() const { return queue_ ? queue_->backend() : "pwrite"; }

std::string_view LaunchOutput::write_fallback() const {
  return queue_ && queue_wanted_uring_ ? queue_->fallback_reason() : std::string_view();
}

// ---- Reading back, files, durability -------------------------------------------

void LaunchOutput::read_block(format::BlockAddress a, std::span<std::byte> out) const {
  uint64_t off = a.block * kBlockSize;
  uint64_t size = header_.launch_size[a.image];
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - off));
  std::memset(out.data() + n, 0, kBlockSize - n);
  if (records_zeros(a.image)) return qcow2_->read(off, out.first(n));
  images_[a.image].pread_full(out.first(n), off);
}

void LaunchOutput::write_file(const DecodedFile& file) {
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
  drain_writes();
  close_sink();
  if (qcow2_) qcow2_->finish();
  for (io::File& f : images_) {
    if (f.valid()) f.close();
  }
  staged_.commit();
}

}  // namespace vmsynth
