#include "io/path_alias.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "common/error.h"

namespace vmsynth::io {

namespace {

namespace fs = std::filesystem;

struct FileId {
  dev_t dev;
  ino_t ino;
  bool operator==(const FileId&) const = default;
};

std::optional<FileId> id_of(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino};
}

// The ids of `path` (resolved) and of every directory above it up to "/".
// A path that does not exist yet contributes its nearest existing ancestor's
// chain: that is where it would be created.
std::vector<FileId> ancestry(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec).lexically_normal();
  if (ec) return {};
  while (!p.empty() && !id_of(p.string())) {
    if (p == p.root_path()) return {};
    p = p.parent_path();
  }
  char* resolved = ::realpath(p.c_str(), nullptr);
  if (resolved == nullptr) return {};
  fs::path r(resolved);
  std::free(resolved);
  std::vector<FileId> out;
  for (;;) {
    if (auto id = id_of(r.string())) out.push_back(*id);
    if (r == r.root_path() || r.empty()) break;
    r = r.parent_path();
  }
  return out;
}

bool contains(const std::vector<FileId>& chain, const FileId& id) {
  for (const FileId& c : chain) {
    if (c == id) return true;
  }
  return false;
}

}  // namespace

void refuse_output_over_input(std::string_view output_option, const std::string& output,
                              const std::vector<NamedInput>& inputs) {
  const std::optional<FileId> out_id = id_of(output);
  const std::vector<FileId> out_chain = ancestry(output);
  // The most specific relation wins: "-o BASE/disk.img" is the base's disk
  // image before it is something inside the base directory.
  enum Relation { kIs, kContains, kLiesInside };
  for (Relation r : {kIs, kContains, kLiesInside}) {
    for (const NamedInput& in : inputs) {
      const std::optional<FileId> in_id = id_of(in.path);
      if (!in_id) continue;
      const bool hit = r == kIs         ? out_id && *out_id == *in_id
                       : r == kContains ? out_id && *out_id != *in_id && contains(ancestry(in.path), *out_id)
                                        : contains(out_chain, *in_id);
      if (!hit) continue;
      const char* relation = r == kIs ? "is" : r == kContains ? "contains" : "lies inside";
      throw Error(ErrorCode::kUsage, std::string(output_option) + " '" + output + "' " + relation + " the " +
                                         in.role + " '" + in.path +
                                         "': an output may not be, contain or lie inside an input, and --force "
                                         "does not change that; choose another output path");
    }
  }
}

}  // namespace vmsynth::io
