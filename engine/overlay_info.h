// Statistics of an overlay read from its headers and op tables, without
// decoding any payload: what `vmsynth overlay info` prints.
//
// Reads the whole stream (so a truncated or damaged overlay is reported as
// such) but decompresses only op tables. An encrypted overlay can be described
// without its key: the file and frame headers are in the clear, so sizes, op
// counts per kind and frame counts are shown, but op tables (per-image counts,
// file names) cannot be opened and nothing is authenticated (authenticated =
// false). With the key, everything is decoded and authenticated. Not
// thread-safe; one call per stream.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "codec/crypto.h"
#include "codec/overlay_format.h"
#include "io/byte_source.h"

namespace vmsynth {

struct OverlayInfo {
  format::FileHeader header;
  bool authenticated = true;  // false: encrypted and read without its key
  bool tables_decoded = true;  // false: op tables sealed (by-image counts and file names unknown)
  uint64_t overlay_bytes = 0;
  uint64_t frames = 0;         // all frames before the end frame
  uint64_t block_frames = 0;
  std::array<uint64_t, format::kOpKindCount> kind_count{};
  std::array<std::array<uint64_t, format::kOpKindCount>, format::kImageCount> kind_count_by_image{};
  uint64_t table_stored_bytes = 0;
  uint64_t payload_raw_bytes = 0;     // DELTA + LITERAL blocks before compression
  uint64_t payload_stored_bytes = 0;  // after compression
  struct File {
    std::string name;  // "(encrypted)" when the table could not be opened
    uint64_t size = 0;
    uint64_t stored = 0;
    bool base_prefix = false;  // delta-encoded against the base VM's file
  };
  std::vector<File> files;
};

OverlayInfo inspect_overlay(io::ByteSource& src, const codec::KeySpec& key = {});

}  // namespace vmsynth
