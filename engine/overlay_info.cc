#include "engine/overlay_info.h"

#include <string>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/overlay_reader.h"

namespace vmsynth {

OverlayInfo inspect_overlay(io::ByteSource& src, const codec::KeySpec& key) {
  OverlayReader reader(src, key, KeyUse::kHeadersOnly);
  OverlayInfo info;
  info.header = reader.header();
  info.headers_authenticated = reader.header().encrypted() && reader.keys() != nullptr;
  info.tables_decoded = reader.authenticated();
  codec::FrameCodec codec(reader.keys());
  RawFrame f;
  while (reader.next(f)) {
    ++info.frames;
    try {
      if (f.header.type == format::FrameType::kFile) {
        if (!info.tables_decoded) {
          info.files.push_back({"(encrypted)", f.header.payload_raw, f.header.payload_stored, false});
          continue;
        }
        format::FileRecord r = codec.decode_file_table(f.header, f.table());
        info.files.push_back({std::string(format::file_id_name(r.id)), r.size, f.header.payload_stored,
                              r.encoding == format::FileEncoding::kZstdBasePrefix});
        continue;
      }
      ++info.block_frames;
      if (info.tables_decoded) {
        for (const format::BlockOp& op : codec.decode_blocks_table(f.header, f.table())) {
          ++info.kind_count[static_cast<unsigned>(op.kind)];
          ++info.kind_count_by_image[op.target.image][static_cast<unsigned>(op.kind)];
        }
      } else {
        for (unsigned k = 0; k < format::kOpKindCount; ++k) info.kind_count[k] += f.header.kind_count[k];
      }
      info.table_stored_bytes += f.header.table_stored;
      info.payload_raw_bytes += f.header.payload_raw;
      info.payload_stored_bytes += f.header.payload_stored;
    } catch (Error& e) {
      throw e.with(f.where());
    }
  }
  info.overlay_bytes = reader.bytes_read();
  return info;
}

std::string OverlayInfo::checked() const {
  std::string s = "file header (checksum, fields); frame headers (checksums, limits, order)";
  if (!tables_decoded) return s + "; end frame present, nothing after it";
  s += "; op tables and file records (checksums, decoding, op kind counts); end frame (trailer checksum, "
       "frame count, op totals, frame chain, nothing after it)";
  if (headers_authenticated) {
    s += "; authenticated with the key: file header (key check), frame headers with their op tables and file "
         "records, trailer";
  }
  return s;
}

std::string OverlayInfo::not_checked() const {
  std::string s;
  if (!tables_decoded) {
    s = "op tables, file records and trailer (sealed, no key given; their checksums neither), nothing "
        "authenticated; ";
  }
  return s + "payloads (checksums" + (header.encrypted() ? ", GCM tags" : "") +
         ", decompression), block and file contents against their hashes, op rules (targets, copy sources, "
         "overlaps)";
}

}  // namespace vmsynth
