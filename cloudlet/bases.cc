#include "cloudlet/bases.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "vmsynth/vmsynth.h"

namespace vmsynth::cloudlet {

namespace fs = std::filesystem;

namespace {

struct ParamsDeleter {
  void operator()(vmsynth_params* p) const { vmsynth_params_free(p); }
};

}  // namespace

BaseRegistry BaseRegistry::scan(const std::string& dir, const std::string& cache_dir,
                                const std::function<void(const std::string&)>& notice) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(ErrorCode::kUsage, "--bases '" + dir + "' is not a directory");
  std::unique_ptr<vmsynth_params, ParamsDeleter> params(vmsynth_params_new());
  if (!params || vmsynth_params_set(params.get(), "cache_dir", cache_dir.c_str()) != VMSYNTH_OK) {
    throw Error(ErrorCode::kUsage, "cannot use cache directory '" + cache_dir + "'");
  }
  BaseRegistry reg;
  std::vector<fs::path> subdirs;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory() && entry.path().filename().string()[0] != '.') subdirs.push_back(entry.path());
  }
  std::sort(subdirs.begin(), subdirs.end());
  for (const fs::path& p : subdirs) {
    const std::string abs = fs::absolute(p).lexically_normal().string();
    BaseVm b;
    b.name = p.filename().string();
    b.dir = abs;
    struct stat mem {
    }, disk{};
    if (::stat((abs + "/memory.img").c_str(), &mem) != 0 || ::stat((abs + "/disk.img").c_str(), &disk) != 0) {
      notice("skipping '" + abs + "': not a base VM (needs memory.img and disk.img)");
      continue;
    }
    b.memory_bytes = static_cast<uint64_t>(mem.st_size);
    b.disk_bytes = static_cast<uint64_t>(disk.st_size);
    b.allocated_bytes = static_cast<uint64_t>(mem.st_blocks + disk.st_blocks) * 512;
    char* out = nullptr;
    const int rc = vmsynth_base_id(abs.c_str(), params.get(), &out);
    const nlohmann::json j = nlohmann::json::parse(out != nullptr ? out : "{}", nullptr, false);
    vmsynth_free(out);
    if (rc != VMSYNTH_OK || !j.is_object() || !j.contains("base_id")) {
      const std::string why = j.is_object() && j.contains("error") ? j["error"].value("message", "") : "";
      notice("skipping '" + abs + "': its base id cannot be computed: " + why);
      continue;
    }
    b.id = j["base_id"].get<std::string>();
    if (reg.find(b.id) != nullptr) {
      notice("skipping '" + abs + "': same base id as '" + reg.find(b.id)->dir + "'");
      continue;
    }
    reg.bases_.push_back(std::move(b));
  }
  return reg;
}

const BaseVm* BaseRegistry::find(const std::string& id) const {
  for (const BaseVm& b : bases_) {
    if (b.id == id) return &b;
  }
  return nullptr;
}

std::vector<std::string> BaseRegistry::ids() const {
  std::vector<std::string> out;
  for (const BaseVm& b : bases_) out.push_back(b.id);
  return out;
}

}  // namespace vmsynth::cloudlet
