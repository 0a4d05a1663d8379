#include "engine/overlay_creator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cstring>
#include <vector>

#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_pipeline.h>
#include <tbb/task_arena.h>

#include "codec/frame_codec.h"
#include "codec/zstd_codec.h"
#include "common/error.h"
#include "engine/base_id.h"
#include "engine/block_index.h"
#include "engine/cancel.h"
#include "engine/image_view.h"
#include "engine/stopwatch.h"
#include "engine/threads.h"
#include "engine/vm_dir.h"
#include "io/file.h"
#include "io/path_alias.h"
#include "io/staged_dir.h"

namespace vmsynth {

using format::BlockAddress;
using format::BlockOp;
using format::kBlockSize;
using format::OpKind;

namespace {

constexpr uint64_t kClassifyChunkBlocks = 4096;  // 16 MiB of launch image per task
constexpr int kTrialLevel = 1;                    // zstd level of the DELTA-vs-LITERAL trial

// A launch block that differs from the base block at the same address.
struct Changed {
  BlockOp op;          // kind is kZero, kBaseCopy or (provisionally) kLiteral
};

using Block = std::array<std::byte, kBlockSize>;

BlockIndex build_base_index(const ImageView& base) {
  std::vector<std::vector<Hash128>> hashes(kImageCount);
  for (unsigned img = 0; img < kImageCount; ++img) {
    uint64_t n = base.blocks(img);
    hashes[img].resize(n);
    tbb::parallel_for(tbb::blocked_range<uint64_t>(0, n, 1024), [&](const tbb::blocked_range<uint64_t>& r) {
      Block scratch;
      for (uint64_t b = r.begin(); b != r.end(); ++b) {
        auto blk = base.block(img, b, scratch);
        hashes[img][b] = is_zero(blk) ? Hash128{} : hash128(blk);
      }
    });
  }
  size_t total = hashes[0].size() + hashes[1].size();
  BlockIndex index(total);
  const Hash128 none{};
  for (unsigned img = 0; img < kImageCount; ++img) {
    for (uint64_t b = 0; b < hashes[img].size(); ++b) {
      if (hashes[img][b] != none) index.insert(hashes[img][b], {static_cast<uint8_t>(img), b});
    }
  }
  return index;
}

// Finds the launch blocks that differ from the base at the same address and
// gives each a provisional op. Output order: memory then disk, ascending.
std::vector<Changed> classify(const ImageView& base, const ImageView& launch, const BlockIndex& index,
                              const ProgressFn& progress, const CancelToken* cancel) {
  struct Chunk {
    unsigned image;
    uint64_t first, last;
  };
  std::vector<Chunk> chunks;
  uint64_t total_blocks = 0;
  for (unsigned img = 0; img < kImageCount; ++img) {
    uint64_t n = launch.blocks(img);
    total_blocks += n;
    for (uint64_t b = 0; b < n; b += kClassifyChunkBlocks) chunks.push_back({img, b, std::min(n, b + kClassifyChunkBlocks)});
  }
  std::vector<std::vector<Changed>> results(chunks.size());
  std::atomic<uint64_t> done{0};
  std::mutex progress_mu;
  report(progress, "comparing images", 0, total_blocks * kBlockSize);
  tbb::parallel_for(size_t{0}, chunks.size(), [&](size_t ci) {
    throw_if_cancelled(cancel);
    const Chunk& c = chunks[ci];
    Block s1, s2, s3;
    auto& out = results[ci];
    for (uint64_t b = c.first; b < c.last; ++b) {
      auto lb = launch.block(c.image, b, s1);
      auto bb = base.block(c.image, b, s2);
      if (std::memcmp(lb.data(), bb.data(), kBlockSize) == 0) continue;
      Changed ch;
      ch.op.target = {static_cast<uint8_t>(c.image), b};
      ch.op.hash = hash128(lb);
      if (is_zero(lb)) {
        ch.op.kind = OpKind::kZero;
      } else if (auto src = index.find(ch.op.hash);
                 src && std::memcmp(base.block(src->image, src->block, s3).data(), lb.data(), kBlockSize) == 0) {
        ch.op.kind = OpKind::kBaseCopy;
        ch.op.source = *src;
      } else {
        ch.op.kind = OpKind::kLiteral;
      }
      out.push_back(ch);
    }
    uint64_t d = done.fetch_add(c.last - c.first) + (c.last - c.first);
    if (progress) {
      std::lock_guard lock(progress_mu);
      report(progress, "comparing images", d * kBlockSize, total_blocks * kBlockSize);
    }
  });
  std::vector<Changed> all;
  for (auto& r : results) all.insert(all.end(), r.begin(), r.end());
  return all;
}

// Self-dedup: the first payload block with a given content is canonical; later
// ones become SELF_COPY of it. Serial, so the choice is deterministic.
void dedup_self(const ImageView& launch, std::vector<Changed>& changed) {
  size_t payload = 0;
  for (const Changed& c : changed) payload += c.op.kind == OpKind::kLiteral;
  BlockIndex self(payload);
  Block s1, s2;
  for (Changed& c : changed) {
    if (c.op.kind != OpKind::kLiteral) continue;
    if (self.insert(c.op.hash, c.op.target)) continue;
    BlockAddress src = *self.find(c.op.hash);
    if (std::memcmp(launch.block(src.image, src.block, s1).data(),
                    launch.block(c.op.target.image, c.op.target.block, s2).data(), kBlockSize) == 0) {
      c.op.kind = OpKind::kSelfCopy;
      c.op.source = src;
    }
  }
}

// Marks LITERAL blocks as DELTA where compressing against the base block at
// the same address is smaller than compressing alone.
void choose_deltas(const ImageView& base, const ImageView& launch, std::vector<Changed>& changed) {
  tbb::enumerable_thread_specific<codec::ZstdCompressor> trial([] { return codec::ZstdCompressor(kTrialLevel); });
  tbb::parallel_for(tbb::blocked_range<size_t>(0, changed.size(), 256), [&](const tbb::blocked_range<size_t>& r) {
    auto& cz = trial.local();
    Block s1, s2;
    std::vector<std::byte> out;
    for (size_t i = r.begin(); i != r.end(); ++i) {
      BlockOp& op = changed[i].op;
      if (op.kind != OpKind::kLiteral) continue;
      if (op.target.block >= base.blocks(op.target.image)) continue;
      auto ref = base.block(op.target.image, op.target.block, s1);
      if (is_zero(ref)) continue;
      auto blk = launch.block(op.target.image, op.target.block, s2);
      cz.compress(blk, {}, out);
      size_t literal = out.size();
      cz.compress(blk, ref, out);
      if (out.size() < literal) op.kind = OpKind::kDelta;
    }
  });
}

struct FramePlan {
  std::vector<BlockOp> ops;
};

std::vector<FramePlan> plan_frames(const std::vector<Changed>& changed) {
  std::vector<FramePlan> frames;
  auto group = [&](auto pred) {
    FramePlan cur;
    for (const Changed& c : changed) {
      if (!pred(c.op.kind)) continue;
      cur.ops.push_back(c.op);
      if (cur.ops.size() == format::kMaxFrameBlocks) {
        frames.push_back(std::move(cur));
        cur = {};
      }
    }
    if (!cur.ops.empty()) frames.push_back(std::move(cur));
  };
  group([](OpKind k) { return k == OpKind::kZero || k == OpKind::kBaseCopy; });
  group([](OpKind k) { return k == OpKind::kDelta || k == OpKind::kLiteral; });
  group([](OpKind k) { return k == OpKind::kSelfCopy; });
  return frames;
}

// The opaque files of the launch VM, each delta-encoded against the base's
// file of the same name when that is smaller (FrameCodec::encode_file chooses).
std::vector<codec::EncodedFrame> encode_files(const VmDir& base, const VmDir& launch, codec::FrameCodec& codec,
                                              uint64_t& next_index, uint64_t& raw_bytes) {
  std::vector<codec::EncodedFrame> out;
  for (unsigned id = 0; id < format::kFileIdCount; ++id) {
    auto fid = static_cast<format::FileId>(id);
    std::string name(format::file_id_name(fid));
    std::string path = launch.file(name);
    if (!io::path_exists(path)) continue;
    std::string content = io::read_small_file(path, format::kMaxOpaqueFileSize);
    raw_bytes += content.size();
    format::FileRecord rec;
    rec.id = fid;
    rec.hash = hash128(std::as_bytes(std::span(content)));
    std::string base_path = base.file(name);
    std::string prefix;
    if (io::path_exists(base_path)) prefix = io::read_small_file(base_path, format::kMaxOpaqueFileSize);
    auto prefix_bytes = std::as_bytes(std::span(prefix));
    out.push_back(codec.encode_file(next_index++, rec, std::as_bytes(std::span(content)),
                                    prefix.empty() ? nullptr : &prefix_bytes));
  }
  return out;
}

}  // namespace

CreateStats create_overlay(const CreateOptions& opts) {
  if (opts.level < 1 || opts.level > kMaxLevel) {
    throw Error(ErrorCode::kUsage, "compression level " + std::to_string(opts.level) + " is out of range 1.." +
                                       std::to_string(kMaxLevel));
  }
  const VmDir base_dir{opts.base_dir}, launch_dir{opts.launch_dir};
  check_vm_dir(base_dir, "base");
  check_vm_dir(launch_dir, "launch");
  if (opts.require_page_aligned_memory) {
    check_memory_pages(base_dir, "base");
    check_memory_pages(launch_dir, "launch");
  }
  std::vector<io::NamedInput> inputs = vm_dir_inputs(base_dir, "base");
  for (auto& in : vm_dir_inputs(launch_dir, "launch")) inputs.push_back(std::move(in));
  io::refuse_output_over_input("output", opts.output, inputs);
  check_thread_count(opts.threads);
  if (!opts.force && io::path_exists(opts.output)) {
    throw Error(ErrorCode::kExists, "output '" + opts.output + "' already exists; use --force to replace it");
  }

  CreateStats st;
  const Stopwatch total;
  // The job's own arena, sized by --threads (engine/threads.h: at most what
  // oneTBB may run in this process). An arena only caps how many of oneTBB's
  // process-wide workers (by default one fewer than the cores) may join it;
  // it creates none, and the calling thread runs its tasks too. So more
  // threads than cores need the application to raise the pool with
  // tbb::global_control (the CLI's business: a library must not change a
  // whole-process setting), and several jobs in one process share the pool.
  // Nothing here blocks on other tasks, so an arena that gets fewer workers
  // than it asked for, or none, is only slower.
  tbb::task_arena arena(opts.threads == 0 ? tbb::task_arena::automatic : arena_slots(opts.threads));

  Stopwatch t;
  report(opts.progress, "hashing base");
  st.base_id = arena.execute([&] { return compute_base_id(base_dir, {true, opts.cache_dir}); });
  st.seconds_base_id = t.seconds();

  ImageView base(base_dir), launch(launch_dir);
  format::FileHeader header;
  header.base_id = st.base_id;
  for (unsigned i = 0; i < kImageCount; ++i) {
    header.base_size[i] = base.size(i);
    header.launch_size[i] = st.launch_size[i] = launch.size(i);
  }

  t.restart();
  report(opts.progress, "indexing base");
  BlockIndex index = arena.execute([&] { return build_base_index(base); });
  st.seconds_index = t.seconds();

  t.restart();
  std::vector<Changed> changed = arena.execute([&] { return classify(base, launch, index, opts.progress, opts.cancel); });
  dedup_self(launch, changed);
  arena.execute([&] { choose_deltas(base, launch, changed); });
  std::vector<FramePlan> plans = plan_frames(changed);
  changed.clear();
  changed.shrink_to_fit();
  uint64_t encode_total = 0;  // bytes of launch blocks the frames carry ops for
  for (const FramePlan& p : plans) encode_total += p.ops.size() * kBlockSize;
  st.seconds_classify = t.seconds();

  t.restart();
  for (const FramePlan& p : plans) header.max_frame_blocks = std::max<uint32_t>(header.max_frame_blocks, p.ops.size());
  io::StagedFile staged(opts.output, opts.force);
  io::File& out = staged.file();
  uint64_t offset = 0;
  auto emit = [&](std::span<const std::byte> bytes) {
    out.pwrite_full(bytes, offset);
    offset += bytes.size();
  };
  std::shared_ptr<codec::FrameKeys> sealing;
  if (opts.key.present()) sealing = codec::FrameKeys::create(header, opts.key, opts.scrypt);
  auto head = format::encode_file_header(header);
  if (sealing) sealing->seal_header(head);  // key check, and the digest every frame's AAD carries
  const std::shared_ptr<const codec::FrameKeys> keys = sealing;
  emit(head);

  codec::FrameChain chain;
  uint64_t next_index = 0;
  auto emit_frame = [&](const codec::EncodedFrame& f) {
    chain.add(format::frame_header_checksum(
        std::span<const std::byte, format::kFrameHeaderSize>(f.bytes.data(), format::kFrameHeaderSize)));
    emit(f.bytes);
    ++st.frames;
    for (unsigned k = 0; k < format::kOpKindCount; ++k) st.kind_count[k] += f.header.kind_count[k];
  };
  {
    codec::FrameCodec fc(keys, opts.level);
    for (const auto& f : encode_files(base_dir, launch_dir, fc, next_index, st.file_bytes)) emit_frame(f);
  }

  // Encode frames in parallel, write them in order. The token count bounds
  // memory: at most that many frames (<= 4 MiB payload each) are in flight.
  const uint64_t first_block_frame = next_index;
  tbb::enumerable_thread_specific<codec::FrameCodec> codecs([&] { return codec::FrameCodec(keys, opts.level); });
  size_t next_plan = 0;
  uint64_t encoded = 0;
  report(opts.progress, "encoding frames", 0, encode_total);
  arena.execute([&] {
    tbb::parallel_pipeline(
        static_cast<size_t>(2 * arena.max_concurrency() + 2),
        tbb::make_filter<void, size_t>(tbb::filter_mode::serial_in_order,
                                       [&](tbb::flow_control& fc) -> size_t {
                                         throw_if_cancelled(opts.cancel);
                                         if (next_plan == plans.size()) {
                                           fc.stop();
                                           return 0;
                                         }
                                         return next_plan++;
                                       }) &
            tbb::make_filter<size_t, std::pair<size_t, codec::EncodedFrame>>(
                tbb::filter_mode::parallel,
                [&](size_t i) {
                  const FramePlan& p = plans[i];
                  std::vector<std::byte> payload, prefix;
                  Block scratch;
                  for (const BlockOp& op : p.ops) {
                    if (op.kind != OpKind::kDelta && op.kind != OpKind::kLiteral) continue;
                    auto blk = launch.block(op.target.image, op.target.block, scratch);
                    payload.insert(payload.end(), blk.begin(), blk.end());
                    if (op.kind == OpKind::kDelta) {
                      auto ref = base.block(op.target.image, op.target.block, scratch);
                      prefix.insert(prefix.end(), ref.begin(), ref.end());
                    }
                  }
                  return std::pair{i, codecs.local().encode_blocks(first_block_frame + i, p.ops, payload, prefix)};
                }) &
            tbb::make_filter<std::pair<size_t, codec::EncodedFrame>, void>(
                tbb::filter_mode::serial_in_order, [&](const std::pair<size_t, codec::EncodedFrame>& f) {
                  emit_frame(f.second);
                  st.payload_raw_bytes += f.second.header.payload_raw;
                  encoded += plans[f.first].ops.size() * kBlockSize;
                  report(opts.progress, "encoding frames", encoded, encode_total);
                }));
  });
  next_index += plans.size();

  format::Trailer trailer;
  trailer.frame_count = next_index;
  for (unsigned k = 0; k < format::kOpKindCount; ++k) trailer.kind_count[k] = st.kind_count[k];
  trailer.frame_chain = chain.digest();
  auto end = codec::FrameCodec::encode_end(next_index, trailer, keys.get());
  emit(end.bytes);
  report(opts.progress, "syncing");
  staged.commit();
  st.overlay_bytes = offset;
  st.seconds_encode = t.seconds();
  st.seconds_total = total.seconds();
  return st;
}

}  // namespace vmsynth
