// The synthesis entry point shared by both engines: the checks made before
// anything is read, the choice of engine, and the names of its options.
#include "engine/synthesis.h"

#include "common/error.h"
#include "engine/threads.h"
#include "engine/vm_dir.h"
#include "io/path_alias.h"

namespace vmsynth {

void check_synthesize_options(const SynthesizeOptions& opts) {
  const VmDir base{opts.base_dir};
  check_vm_dir(base, "base");
  std::vector<io::NamedInput> inputs = vm_dir_inputs(base, "base");
  if (!opts.overlay_path.empty()) inputs.push_back({"overlay", opts.overlay_path});
  io::refuse_output_over_input("--out", opts.out_dir, inputs);
  check_thread_count(opts.threads);
}

std::string_view disk_format_name(DiskFormat f) { return name_of(f); }

DiskFormat parse_disk_format(std::string_view name) { return parse_enum<DiskFormat>(name, "disk format"); }

std::string_view write_backend_name(WriteBackend b) { return name_of(b); }

WriteBackend parse_write_backend(std::string_view name) { return parse_enum<WriteBackend>(name, "write backend"); }

SynthesizeStats synthesize(io::ByteSource& src, const SynthesizeOptions& opts) {
  return opts.engine == EngineKind::kSerial ? synthesize_serial(src, opts) : synthesize_parallel(src, opts);
}

}  // namespace vmsynth
