// The pieces of synthesis both engines share: checking the base against the
// overlay header, the staged output directory and its images, opaque files,
// and the final sync and commit.
//
// A LaunchOutput owns the staging directory (removed unless commit() runs)
// and the open output image files. Creating one first removes staging
// directories of the same output left by killed syntheses (their pid is gone),
// so a crash never blocks or litters a rerun. clone_images() may run on another thread
// than the rest, but must finish before blocks are written. Otherwise one
// owner thread; image files may be written from several threads at distinct
// offsets.
#pragma once

#include <array>
#include <span>
#include <string>

#include "codec/frame_codec.h"
#include "codec/overlay_format.h"
#include "engine/synthesis.h"
#include "engine/vm_dir.h"
#include "io/file.h"
#include "io/staged_dir.h"

namespace vmsynth {

// Throws kWrongBase unless the base at `base_dir` is the one the overlay
// names (sizes, then content id). Returns the id.
Hash128 check_base(const VmDir& base, const format::FileHeader& h, bool use_cache);

class LaunchOutput {
 public:
  LaunchOutput(const VmDir& base, const format::FileHeader& h, const std::string& out_dir, bool force);

  // Creates the output images as copies of the base images resized to the
  // launch sizes. Returns the method used (of the memory image).
  std::string clone_images(io::CloneMethod method);
  io::File& image(unsigned i) { return images_[i]; }
  uint64_t image_size(unsigned i) const { return header_.launch_size[i]; }

  // Writes one reconstructed 4096-byte block; the tail block of an image is
  // cut at the image's end.
  void write_block(format::BlockAddress a, std::span<const std::byte> block);
  // Reads back a block this synthesis already wrote (zero-padded at the tail).
  void read_block(format::BlockAddress a, std::span<std::byte> out) const;

  // Decodes a file frame (verifying its hash) and writes the file.
  void apply_file_frame(codec::FrameCodec& codec, const format::FrameHeader& h, std::span<const std::byte> table,
                        std::span<const std::byte> payload);

  // Syncs every file, then renames the staging directory to out_dir.
  void commit();

 private:
  VmDir base_;
  format::FileHeader header_;
  io::StagedDirectory staged_;
  std::array<io::File, format::kImageCount> images_;
};

// Reports a block whose reconstructed content does not hash to the recorded value.
[[noreturn]] void throw_hash_mismatch(const format::BlockOp& op);

}  // namespace vmsynth
