// The serial engine: one thread, plain pread/pwrite, frame after frame. It is
// the reference the parallel engine is tested against and the baseline the
// benchmarks compare with, so it stays simple rather than fast.
#include <span>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/base_check.h"
#include "engine/cancel.h"
#include "engine/frame_decoder.h"
#include "engine/launch_output.h"
#include "engine/op_validator.h"
#include "engine/overlay_reader.h"
#include "engine/stopwatch.h"
#include "engine/synthesis.h"

namespace vmsynth {

using format::BlockOp;
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
  st.base_id = check_base(base, h, {opts.use_base_id_cache, opts.cache_dir});
  st.seconds_base_id = t.seconds();

  LaunchOutput out(base, h, opts.out_dir, opts.force, opts.disk_format);
  st.disk_format = disk_format_name(opts.disk_format);
  t.restart();
  report(opts.progress, "copying base");
  st.clone_method = out.clone_images(opts.clone);
  st.seconds_clone = t.seconds();
  out.open_sink({});  // pwrite on this thread: each block is written before the next is decoded

  t.restart();
  const BaseBlockReader base_blocks(base);
  BlockFrameDecoder decoder;
  const BlockFrameDecoder::Sources sources{
      .base = [&](format::BlockAddress a, std::span<std::byte> b) { base_blocks.read(a, b); },
      .launch = [&](format::BlockAddress a, std::span<std::byte> b) { out.read_block(a, b); },
  };
  const BlockFrameDecoder::Emit write = [&](const BlockOp& op, std::span<const std::byte> content) {
    // A qcow2 disk records zeros instead of storing them.
    const bool zeros = op.kind == OpKind::kZero && out.records_zeros(op.target.image);
    out.write_run(op.target.image, op.target.block, 1, zeros ? nullptr : content.data());
    ++st.kind_count[static_cast<unsigned>(op.kind)];
    ++st.blocks_written;
  };

  OpValidator validator(h);
  codec::FrameCodec codec(reader.keys());
  RawFrame frame;
  report(opts.progress, "applying", 0, opts.source_size);
  while (reader.next(frame)) {
    try {
      throw_if_cancelled(opts.cancel);  // polled once per frame
      ++st.frames;
      if (frame.header.type == format::FrameType::kFile) {
        format::FileRecord rec = codec.decode_file_table(frame.header, frame.table());
        validator.check_file(rec.id);
        out.write_file(decode_file_frame(codec, frame.header, frame.table(), frame.payload(), &base));
        continue;
      }
      std::vector<BlockOp> ops = codec.decode_blocks_table(frame.header, frame.table());
      validator.check_blocks_frame(ops);
      decoder.decode(codec, frame.header, frame.payload(), ops, sources, write);
    } catch (Error& e) {
      throw e.with(frame.where());
    }
    report(opts.progress, "applying", reader.bytes_read(), opts.source_size);
  }
  st.overlay_bytes = reader.bytes_read();
  st.seconds_apply = t.seconds();

  throw_if_cancelled(opts.cancel);  // a cancel during the last frame: do not commit
  t.restart();
  report(opts.progress, "syncing");
  out.commit();
  st.seconds_sync = t.seconds();
  for (unsigned i = 0; i < kImageCount; ++i) st.launch_size[i] = h.launch_size[i];
  st.seconds_total = total.seconds();
  return st;
}

}  // namespace vmsynth
