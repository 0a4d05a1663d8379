// The JSON documents of the C API's results, which are also what the
// command line tool prints with --json: one writer for both.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "engine/overlay_creator.h"
#include "engine/overlay_info.h"
#include "engine/synthesis.h"

namespace vmsynth::lib {

// {"ok": true, "out", "engine", "threads", ..., "seconds": {...}}
nlohmann::json synthesize_json(const SynthesizeStats& s, const std::string& out_dir);
// {"ok": true, "overlay", "overlay_bytes", "encrypted", ...}
nlohmann::json create_json(const CreateStats& s, const CreateOptions& o);
// {"ok": true, "version", "base_id", ...}
// The file header alone (vmsynth_overlay_header); info_json starts from it.
nlohmann::json header_json(const format::FileHeader& h);
nlohmann::json info_json(const OverlayInfo& info);
// {"ok": false, "error": {"code", "message", "context"}}
nlohmann::json error_json(const Error& e);

}  // namespace vmsynth::lib
