#include "engine/vm_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace vmsynth {

namespace {
constexpr uint64_t kPageSize = 4096;
}

void check_vm_dir(const VmDir& d, std::string_view role) {
  const std::string who = std::string(role) + " VM directory '" + d.path + "'";
  struct stat st;
  if (::stat(d.path.c_str(), &st) != 0) {
    throw Error(ErrorCode::kUsage, who + (errno == ENOENT ? " does not exist" : ": " + std::string(std::strerror(errno))));
  }
  if (!S_ISDIR(st.st_mode)) throw Error(ErrorCode::kUsage, who + " is not a directory");
  for (ImageKind k : kImageKinds) {
    const std::string p = d.image(k);
    if (::stat(p.c_str(), &st) != 0) {
      throw Error(ErrorCode::kUsage, who + " has no " + std::string(image_file_name(k)) +
                                         (errno == ENOENT ? "" : ": " + std::string(std::strerror(errno))));
    }
    if (!S_ISREG(st.st_mode)) {
      throw Error(ErrorCode::kUsage, who + ": " + std::string(image_file_name(k)) + " is not a regular file");
    }
  }
}

void check_memory_pages(const VmDir& d, std::string_view role) {
  struct stat st;
  const std::string p = d.image(ImageKind::kMemory);
  if (::stat(p.c_str(), &st) != 0) throw io_error("cannot stat", p, errno);
  if (static_cast<uint64_t>(st.st_size) % kPageSize != 0) {
    throw Error(ErrorCode::kUsage, std::string(role) + " VM directory '" + d.path + "': memory.img has " +
                                       std::to_string(st.st_size) +
                                       " bytes, not a whole number of 4096-byte pages (guest RAM is page-aligned)");
  }
}

std::vector<io::NamedInput> vm_dir_inputs(const VmDir& d, std::string_view role) {
  const std::string r(role);
  std::vector<io::NamedInput> in{{r + " VM directory", d.path}};
  for (ImageKind k : kImageKinds) in.push_back({r + " VM's " + std::string(image_file_name(k)), d.image(k)});
  for (std::string_view f : kOpaqueFileNames) in.push_back({r + " VM's " + std::string(f), d.file(f)});
  return in;
}

}  // namespace vmsynth
