// VM synthesis: base VM + overlay stream -> launch VM directory.
//
// Two engines read the same format. The serial engine decodes and writes one
// block at a time with pread/pwrite: the correctness reference and the
// benchmark baseline. The parallel engine (engine/parallel_synthesizer.cc)
// runs the same steps as a oneTBB flow graph with io_uring writes.
//
// Both follow one contract: the overlay header is read, an encrypted
// overlay's key checked (kWrongKey) and the base VM's id checked before
// anything is written; the output is built in a staging
// directory beside --out and renamed into place only after every block and
// file has been verified and synced; on any error the staging directory is
// removed and nothing is left at --out. The base is opened read-only.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "codec/block_hash.h"
#include "codec/crypto.h"
#include "codec/overlay_format.h"
#include "common/enum_names.h"
#include "engine/cancel.h"
#include "engine/progress.h"
#include "io/byte_source.h"
#include "io/image_clone.h"

namespace vmsynth {

enum class EngineKind { kSerial, kParallel };
inline constexpr EnumName<EngineKind> kEngineNames[] = {{EngineKind::kParallel, "parallel"},
                                                       {EngineKind::kSerial, "serial"}};
constexpr std::span<const EnumName<EngineKind>> enum_names(EngineKind) { return kEngineNames; }

// The launch disk's output format. kRaw: disk.img, a full copy of the base
// disk with the overlay's blocks written over it. kQcow2: disk.qcow2, holding
// only the overlay's disk blocks, with the base's disk.img (by absolute path)
// as its backing file; nothing is copied, QEMU runs it directly, and the base
// disk must then stay where it is, unchanged, for the launch VM's lifetime.
enum class DiskFormat { kRaw, kQcow2 };
inline constexpr EnumName<DiskFormat> kDiskFormatNames[] = {{DiskFormat::kRaw, "raw"}, {DiskFormat::kQcow2, "qcow2"}};
constexpr std::span<const EnumName<DiskFormat>> enum_names(DiskFormat) { return kDiskFormatNames; }

// How the parallel engine writes blocks: io_uring (falls back to pwrite where
// the kernel refuses it) or pwrite. docs/performance.md compares them.
enum class WriteBackend { kIoUring, kPwrite };
inline constexpr EnumName<WriteBackend> kWriteBackendNames[] = {{WriteBackend::kIoUring, "io_uring"},
                                                                {WriteBackend::kPwrite, "pwrite"}};
constexpr std::span<const EnumName<WriteBackend>> enum_names(WriteBackend) { return kWriteBackendNames; }
std::string_view write_backend_name(WriteBackend b);  // "io_uring", "pwrite"
WriteBackend parse_write_backend(std::string_view name);  // throws kUsage

// "raw", "qcow2".
std::string_view disk_format_name(DiskFormat f);
// Inverse of disk_format_name; throws kUsage naming the valid choices.
DiskFormat parse_disk_format(std::string_view name);

struct SynthesizeOptions {
  std::string base_dir;
  std::string out_dir;
  EngineKind engine = EngineKind::kParallel;
  unsigned threads = 0;  // parallel engine workers; 0 = one per core, at most kMaxThreads
                         // (engine/threads.h); the serial engine runs on one thread whatever this says
  bool force = false;    // replace an existing --out
  io::CloneMethod clone = io::CloneMethod::kAuto;  // how output images start from the base
  DiskFormat disk_format = DiskFormat::kRaw;
  WriteBackend write_backend = WriteBackend::kIoUring;  // parallel engine
  unsigned queue_depth = 64;    // parallel engine: io_uring queue depth, 1..4096
  uint64_t memory_budget = 256u << 20;  // parallel engine: bytes of frames in flight, >= 16 MiB
  bool use_base_id_cache = true;
  std::string cache_dir;  // base-id cache; empty = default_cache_dir() (engine/cache_dir.h)
  const CancelToken* cancel = nullptr;  // polled once per frame (engine/cancel.h); null: not cancellable
  ProgressFn progress;  // overlay bytes consumed (total = source size, or 0 if unknown)
  uint64_t source_size = 0;  // for progress; 0 = unknown
  // The overlay's path when it is a file (empty for a pipe or socket): an
  // output that is, contains or lies inside it is refused like one over the base.
  std::string overlay_path;
  // Key of an encrypted overlay (none: the overlay must not be encrypted; a
  // key given for an unencrypted overlay is refused with kWrongKey).
  codec::KeySpec key;
};

struct SynthesizeStats {
  Hash128 base_id;
  std::array<uint64_t, kImageCount> launch_size{};
  std::array<uint64_t, format::kOpKindCount> kind_count{};
  uint64_t frames = 0;
  uint64_t overlay_bytes = 0;
  uint64_t blocks_written = 0;
  std::string engine;          // "serial" or "parallel"
  std::string write_backend;   // "pwrite" or "io_uring"
  std::string write_fallback;  // why io_uring was not used, if it was wanted
  std::string clone_method;    // how the output images were started
  std::string disk_format;     // "raw" or "qcow2"
  unsigned threads = 1;
  double seconds_base_id = 0;
  double seconds_clone = 0;
  double seconds_apply = 0;    // reading, decoding, verifying, writing blocks
  double seconds_sync = 0;
  double seconds_total = 0;
};

// Runs the engine named in opts over the overlay read from `src`.
SynthesizeStats synthesize(io::ByteSource& src, const SynthesizeOptions& opts);

// What both engines check before reading the overlay: the base VM directory
// (check_vm_dir), the thread count, and that out_dir is not, does not contain
// and does not lie inside the base VM or the overlay file (kUsage, --force or
// not).
void check_synthesize_options(const SynthesizeOptions& opts);

SynthesizeStats synthesize_serial(io::ByteSource& src, const SynthesizeOptions& opts);
SynthesizeStats synthesize_parallel(io::ByteSource& src, const SynthesizeOptions& opts);

}  // namespace vmsynth
