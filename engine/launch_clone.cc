// LaunchOutput: starting the output images from the base VM's, either before
// any block is written (clone_images, the serial engine) or beside a writer
// that is already writing (clone_images_beside_writer, the parallel engine:
// the clone threads and engine/clone_tracker.h). The rest of the class is in
// engine/launch_output.cc.
#include <atomic>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "engine/launch_output.h"

namespace vmsynth {

void LaunchOutput::create_qcow2_disk() {
  qcow2_ =
      std::make_unique<Qcow2Disk>(base_.image(ImageKind::kDisk), staged_.path() + "/" + std::string(kQcow2DiskName),
                                  header_.launch_size[image_index(ImageKind::kDisk)]);
}

std::string LaunchOutput::clone_images(io::CloneMethod method) {
  std::string used;
  for (unsigned i = 0; i < kImageCount; ++i) {
    auto kind = static_cast<ImageKind>(i);
    if (kind == ImageKind::kDisk && disk_format_ == DiskFormat::kQcow2) {
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
  if (disk_format_ == DiskFormat::kQcow2) create_qcow2_disk();
  std::vector<unsigned> raw;
  for (unsigned i = 0; i < kImageCount; ++i) {
    if (!records_zeros(i)) raw.push_back(i);
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

}  // namespace vmsynth
