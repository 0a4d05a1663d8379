// The on-disk layout of a VM directory, base or launch.
//
//   disk.img      raw disk image (multiple of 512 bytes, any size)
//   disk.qcow2    instead of disk.img in a launch VM synthesized with
//                 --disk-format qcow2: the changed blocks over the base's disk.img
//   memory.img    raw guest RAM, page-aligned: byte N is guest-physical byte N
//   devstate.bin  optional: QEMU device state (opaque bytes)
//   vm.json       optional: the machine description (opaque to the engine)
//
// VmDir is a plain value type; check_vm_dir() and vm_dir_inputs() stat the
// directory. Thread safety: free functions, no shared state.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "common/image_kind.h"
#include "io/path_alias.h"

namespace vmsynth {

inline constexpr std::string_view kDiskImageName = "disk.img";
inline constexpr std::string_view kMemoryImageName = "memory.img";
// A synthesized launch disk in qcow2 form (synthesize --disk-format qcow2):
// it replaces disk.img and names the base's disk.img as its backing file.
inline constexpr std::string_view kQcow2DiskName = "disk.qcow2";
inline constexpr std::string_view kDevStateName = "devstate.bin";
inline constexpr std::string_view kVmJsonName = "vm.json";

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

// Throws Error(kUsage) naming `role` ("base", "launch") and the path unless
// `d` is an existing directory holding regular files memory.img and disk.img.
void check_vm_dir(const VmDir& d, std::string_view role);

// Throws Error(kUsage) unless memory.img is a whole number of 4096-byte pages.
// Overlay creation requires it (guest RAM is page-aligned); synthesis does
// not, since the format itself describes images of any size and overlays of
// such images exist (tests/golden).
void check_memory_pages(const VmDir& d, std::string_view role);

// The directory and each file of `d` (images, devstate.bin, vm.json; present
// or not), as inputs for io::refuse_output_over_input. The files are listed
// one by one because any of them may be a link to somewhere else.
std::vector<io::NamedInput> vm_dir_inputs(const VmDir& d, std::string_view role);

}  // namespace vmsynth
