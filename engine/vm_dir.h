// The on-disk layout of a VM directory, base or launch.
//
//   disk.img      raw disk image (multiple of 512 bytes, any size)
//   disk.qcow2    instead of disk.img in a launch VM synthesized with
//                 --disk-format qcow2: the changed blocks over the base's disk.img
//   memory.img    raw guest RAM, page-aligned: byte N is guest-physical byte N
//   devstate.bin  optional: QEMU device state (opaque bytes)
//   vm.json       optional: the machine description (opaque to the engine)
//
// Plain value type; no I/O.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace vmsynth {

inline constexpr std::string_view kDiskImageName = "disk.img";
inline constexpr std::string_view kMemoryImageName = "memory.img";
// A synthesized launch disk in qcow2 form (synthesize --disk-format qcow2):
// it replaces disk.img and names the base's disk.img as its backing file.
inline constexpr std::string_view kQcow2DiskName = "disk.qcow2";
inline constexpr std::string_view kDevStateName = "devstate.bin";
inline constexpr std::string_view kVmJsonName = "vm.json";

// The two block images, in the order the overlay numbers them (image 0, 1).
enum class ImageKind : unsigned { kMemory = 0, kDisk = 1 };
inline constexpr std::array<ImageKind, 2> kImageKinds = {ImageKind::kMemory, ImageKind::kDisk};

inline std::string_view image_file_name(ImageKind k) {
  return k == ImageKind::kMemory ? kMemoryImageName : kDiskImageName;
}

// The opaque files an overlay carries, in a fixed order.
inline constexpr std::array<std::string_view, 2> kOpaqueFileNames = {kDevStateName, kVmJsonName};

struct VmDir {
  std::string path;
  std::string file(std::string_view name) const { return path + "/" + std::string(name); }
  std::string image(ImageKind k) const { return file(image_file_name(k)); }
};

}  // namespace vmsynth
