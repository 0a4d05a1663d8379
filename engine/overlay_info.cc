#include "engine/overlay_info.h"

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/overlay_reader.h"

namespace vmsynth {

OverlayInfo inspect_overlay(io::ByteSource& src) {
  OverlayReader reader(src);
  OverlayInfo info;
  info.header = reader.header();
  codec::FrameCodec codec;
  RawFrame f;
  while (reader.next(f)) {
    ++info.frames;
    try {
      if (f.header.type == format::FrameType::kFile) {
        format::FileRecord r = codec.decode_file_table(f.header, f.table());
        info.files.push_back({std::string(format::file_id_name(r.id)), r.size, f.header.payload_stored,
                              r.encoding == format::FileEncoding::kZstdBasePrefix});
        continue;
      }
      ++info.block_frames;
      for (const format::BlockOp& op : codec.decode_blocks_table(f.header, f.table())) {
        ++info.kind_count[static_cast<unsigned>(op.kind)];
        ++info.kind_count_by_image[op.target.image][static_cast<unsigned>(op.kind)];
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

}  // namespace vmsynth
