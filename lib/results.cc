#include "lib/results.h"

#include <array>

namespace vmsynth::lib {

namespace {

nlohmann::json kinds_json(const std::array<uint64_t, format::kOpKindCount>& counts) {
  nlohmann::json j;
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    j[std::string(format::op_kind_name(static_cast<format::OpKind>(k)))] = {{"count", counts[k]},
                                                                            {"bytes", counts[k] * format::kBlockSize}};
  }
  return j;
}

}  // namespace

nlohmann::json synthesize_json(const SynthesizeStats& s, const std::string& out_dir) {
  nlohmann::json ops;
  for (unsigned k = 0; k < format::kOpKindCount; ++k) {
    ops[std::string(format::op_kind_name(static_cast<format::OpKind>(k)))] = s.kind_count[k];
  }
  return {{"ok", true},
          {"out", out_dir},
          {"engine", s.engine},
          {"threads", s.threads},
          {"write_backend", s.write_backend},
          {"write_backend_reason", s.write_fallback},
          {"clone_method", s.clone_method},
          {"disk_format", s.disk_format},
          {"base_id", s.base_id.hex()},
          {"overlay_bytes", s.overlay_bytes},
          {"frames", s.frames},
          {"blocks_written", s.blocks_written},
          {"launch_memory_bytes", s.launch_size[0]},
          {"launch_disk_bytes", s.launch_size[1]},
          {"ops", ops},
          {"seconds",
           {{"base_id", s.seconds_base_id},
            {"clone", s.seconds_clone},
            {"apply", s.seconds_apply},
            {"sync", s.seconds_sync},
            {"total", s.seconds_total}}}};
}

nlohmann::json create_json(const CreateStats& s, const CreateOptions& o) {
  return {{"ok", true},
          {"overlay", o.output},
          {"overlay_bytes", s.overlay_bytes},
          {"encrypted", o.key.present()},
          {"base_id", s.base_id.hex()},
          {"launch_memory_bytes", s.launch_size[0]},
          {"launch_disk_bytes", s.launch_size[1]},
          {"level", o.level},
          {"frames", s.frames},
          {"ops", kinds_json(s.kind_count)},
          {"payload_raw_bytes", s.payload_raw_bytes},
          {"file_bytes", s.file_bytes},
          {"seconds",
           {{"base_id", s.seconds_base_id},
            {"index", s.seconds_index},
            {"classify", s.seconds_classify},
            {"encode", s.seconds_encode},
            {"total", s.seconds_total}}}};
}

nlohmann::json header_json(const format::FileHeader& h) {
  return {{"ok", true},
          {"version", std::to_string(h.version_major) + "." + std::to_string(h.version_minor)},
          {"base_id", h.base_id.hex()},
          {"base_memory_bytes", h.base_size[0]},
          {"base_disk_bytes", h.base_size[1]},
          {"launch_memory_bytes", h.launch_size[0]},
          {"launch_disk_bytes", h.launch_size[1]},
          {"encrypted", h.encrypted()}};
}

nlohmann::json info_json(const OverlayInfo& info) {
  const auto& h = info.header;
  const char* kdf = h.kdf == format::Kdf::kScrypt ? "scrypt" : h.kdf == format::Kdf::kRawKey ? "raw-key" : "none";
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : info.files) {
    files.push_back({{"name", f.name}, {"bytes", f.size}, {"stored_bytes", f.stored}, {"base_delta", f.base_prefix}});
  }
  nlohmann::json j = header_json(h);
  j.update(nlohmann::json{{"cipher", h.encrypted() ? "aes-256-gcm" : "none"},
                          {"key_derivation", kdf},
                          // Headers, op tables, file records and trailer only (see the footer).
                          {"authenticated", info.headers_authenticated},
                          {"payloads_authenticated", false},
                          {"payloads_checked", false},
                          {"checked", info.checked()},
                          {"not_checked", info.not_checked()},
                          {"tables_decoded", info.tables_decoded},
                          {"overlay_bytes", info.overlay_bytes},
                          {"frames", info.frames},
                          {"block_frames", info.block_frames},
                          {"ops", kinds_json(info.kind_count)},
                          {"ops_memory", kinds_json(info.kind_count_by_image[0])},
                          {"ops_disk", kinds_json(info.kind_count_by_image[1])},
                          {"table_stored_bytes", info.table_stored_bytes},
                          {"payload_raw_bytes", info.payload_raw_bytes},
                          {"payload_stored_bytes", info.payload_stored_bytes},
                          {"files", files}});
  if (h.kdf == format::Kdf::kScrypt) j["scrypt"] = {{"log2_n", h.kdf_log2_n}, {"r", h.kdf_r}, {"p", h.kdf_p}};
  return j;
}

nlohmann::json error_json(const Error& e) {
  return {{"ok", false},
          {"error",
           {{"code", std::string(error_code_name(e.code()))}, {"message", e.message()}, {"context", e.context()}}}};
}

}  // namespace vmsynth::lib
