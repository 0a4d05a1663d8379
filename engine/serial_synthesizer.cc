// The serial engine: one thread, plain pread/pwrite, frame after frame. It is
// the reference the parallel engine is tested against and the baseline the
// benchmarks compare with, so it stays simple rather than fast.
#include <cstring>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/cancel.h"
#include "engine/launch_output.h"
#include "engine/op_validator.h"
#include "engine/overlay_reader.h"
#include "engine/stopwatch.h"
#include "engine/synthesis.h"

namespace vmsynth {

using format::BlockOp;
using format::kBlockSize;
using format::OpKind;

SynthesizeStats synthesize_serial(io::ByteSource& src, const SynthesizeOptions& opts) {
  const Stopwatch total;
  check_synthesize_options(opts);
  SynthesizeStats st;
  st.engine = "serial";
  st.write_backend = "pwrite";
  OverlayReader reader(src, opts.key);
  const format::FileHeader& h = reader.header();
  const VmDir base{opts.base_dir};

  Stopwatch t;
  report(opts.progress, "checking base");
  st.base_id = check_base(base, h, opts.use_base_id_cache);
  st.seconds_base_id = t.seconds();

  LaunchOutput out(base, h, opts.out_dir, opts.force, opts.disk_format);
  st.disk_format = disk_format_name(opts.disk_format);
  t.restart();
  report(opts.progress, "copying base");
  st.clone_method = out.clone_images(opts.clone);
  st.seconds_clone = t.seconds();

  t.restart();
  std::vector<io::File> base_images;
  for (ImageKind k : kImageKinds) base_images.push_back(io::File::open_read(base.image(k)));
  auto read_base = [&](format::BlockAddress a, std::span<std::byte> buf) {
    size_t n = base_images[a.image].pread_some(buf.first(kBlockSize), a.block * kBlockSize);
    std::memset(buf.data() + n, 0, kBlockSize - n);
  };

  OpValidator validator(h);
  codec::FrameCodec codec(reader.keys());
  RawFrame frame;
  std::vector<std::byte> prefix, payload;
  std::array<std::byte, kBlockSize> block;
  static const std::array<std::byte, kBlockSize> kZeros{};
  report(opts.progress, "applying", 0, opts.source_size);
  while (reader.next(frame)) {
    try {
      throw_if_cancelled();  // SIGINT (engine/cancel.h), polled once per frame
      ++st.frames;
      if (frame.header.type == format::FrameType::kFile) {
        format::FileRecord rec = codec.decode_file_table(frame.header, frame.table());
        validator.check_file(rec.id);
        out.apply_file_frame(codec, frame.header, frame.table(), frame.payload());
        continue;
      }
      std::vector<BlockOp> ops = codec.decode_blocks_table(frame.header, frame.table());
      validator.check_blocks_frame(ops);
      prefix.clear();
      for (const BlockOp& op : ops) {
        if (op.kind != OpKind::kDelta) continue;
        prefix.resize(prefix.size() + kBlockSize);
        read_base(op.target, std::span(prefix).last(kBlockSize));
      }
      payload.resize(frame.header.payload_raw);
      codec.decode_payload(frame.header, frame.payload(), prefix, payload);
      size_t payload_at = 0;
      for (const BlockOp& op : ops) {
        std::span<const std::byte> content;
        switch (op.kind) {
          case OpKind::kZero:
            content = kZeros;
            break;
          case OpKind::kBaseCopy:
            read_base(op.source, block);
            content = block;
            break;
          case OpKind::kSelfCopy:
            out.read_block(op.source, block);
            content = block;
            break;
          case OpKind::kDelta:
          case OpKind::kLiteral:
            content = std::span(payload).subspan(payload_at, kBlockSize);
            payload_at += kBlockSize;
            break;
        }
        if (hash128(content) != op.hash) throw_hash_mismatch(op);
        if (op.kind == OpKind::kZero) {
          out.zero_block(op.target);
        } else {
          out.write_block(op.target, content);
        }
        ++st.kind_count[static_cast<unsigned>(op.kind)];
        ++st.blocks_written;
      }
    } catch (Error& e) {
      throw e.with(frame.where());
    }
    report(opts.progress, "applying", reader.bytes_read(), opts.source_size);
  }
  st.overlay_bytes = reader.bytes_read();
  st.seconds_apply = t.seconds();

  throw_if_cancelled();  // a signal during the last frame: do not commit
  t.restart();
  report(opts.progress, "syncing");
  out.commit();
  st.seconds_sync = t.seconds();
  for (unsigned i = 0; i < format::kImageCount; ++i) st.launch_size[i] = h.launch_size[i];
  st.seconds_total = total.seconds();
  return st;
}

}  // namespace vmsynth
