// Statistics of an overlay read from its headers and op tables, without
// decoding any payload: what `vmsynth overlay info` prints.
//
// Reads the whole stream (so a truncated overlay, or damage to a header or an
// op table, is reported as such) but decompresses only op tables. It never
// looks inside a payload: payload checksums and GCM tags, decompression, block
// and file hashes and the op rules (OpValidator) are left to `overlay verify`
// (engine/overlay_verify.h). checked() and not_checked() say exactly what was
// and was not verified, for the output to say so.
//
// An encrypted overlay can be described without its key: the file and frame
// headers are in the clear, so sizes, op counts per kind and frame counts are
// shown, but op tables (per-image counts, file names) and the trailer cannot be
// opened, their checksums are not verified, and nothing is authenticated.
// With the key, the file header, every frame header, op table and file record
// and the trailer are authenticated; payloads still are not. Not thread-safe;
// one call per stream.
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
  // Encrypted and read with its key: the key check and the GCM tags of every
  // frame header (with its op table or file record) and of the trailer were
  // verified. Never covers payloads (their tags are not opened here). False
  // for an unencrypted overlay: checksums detect damage, not tampering.
  bool headers_authenticated = false;
  bool tables_decoded = true;  // false: op tables sealed (by-image counts and file names unknown)
  uint64_t overlay_bytes = 0;
  uint64_t frames = 0;         // all frames before the end frame
  uint64_t block_frames = 0;
  std::array<uint64_t, format::kOpKindCount> kind_count{};
  std::array<std::array<uint64_t, format::kOpKindCount>, kImageCount> kind_count_by_image{};
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

  // What inspect_overlay verified, and what it did not, in words.
  std::string checked() const;
  std::string not_checked() const;
};

OverlayInfo inspect_overlay(io::ByteSource& src, const codec::KeySpec& key = {});

}  // namespace vmsynth
