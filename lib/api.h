// The C API's handle types, for the library's own files and for the command
// line tool, which runs on the same front door but also reaches the engine
// (gen-pair, overlay verify) with the same cancel token. Not installed.
#pragma once

#include <cstdint>
#include <string>

#include "engine/cancel.h"
#include "engine/overlay_creator.h"
#include "engine/progress.h"
#include "engine/synthesis.h"
#include "vmsynth/vmsynth.h"

struct vmsynth_cancel {
  vmsynth::CancelToken token;
};

struct vmsynth_params {
  vmsynth::EngineKind engine = vmsynth::EngineKind::kParallel;
  unsigned threads = 0;
  vmsynth::DiskFormat disk_format = vmsynth::DiskFormat::kRaw;
  vmsynth::io::CloneMethod clone = vmsynth::io::CloneMethod::kAuto;
  vmsynth::WriteBackend write_backend = vmsynth::WriteBackend::kIoUring;
  unsigned queue_depth = 64;
  uint64_t memory_budget = 256u << 20;
  uint64_t overlay_size = 0;
  int level = vmsynth::kDefaultLevel;
  std::string key_file, passphrase_file, cache_dir;
  vmsynth::codec::KeySpec key;  // from the key or passphrase parameter (excludes the files)
  bool base_id_cache = true;
  bool force = false;
  vmsynth::ProgressFn progress;  // built by vmsynth_params_set_(phase_)progress
  vmsynth_cancel* cancel = nullptr;
  std::string error;  // why the last vmsynth_params_set failed
};

namespace vmsynth::lib {

// The defaults of a NULL vmsynth_params*.
const vmsynth_params& params_or_defaults(const vmsynth_params* p);

// Parses one vmsynth_params_set name/value into p; throws Error(kUsage)
// naming the parameter and the accepted values.
void set_param(vmsynth_params& p, std::string_view name, std::string_view value);

// The engine's options for a job described by p (key files are read here).
// The key the parameters give: the key/passphrase value, else the file's (read now).
codec::KeySpec key_spec(const vmsynth_params& p);

SynthesizeOptions synthesize_options(const vmsynth_params& p, const std::string& base_dir, const std::string& out_dir);
CreateOptions create_options(const vmsynth_params& p, const std::string& base_dir, const std::string& launch_dir,
                             const std::string& overlay_path);

}  // namespace vmsynth::lib
