#include "cloudlet/vm_registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/hex.h"

namespace vmsynth::cloudlet {

namespace fs = std::filesystem;

bool valid_id(const std::string& id) {
  return id.size() == 32 &&
         std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

namespace {

std::string random_hex(size_t digits) {
  static thread_local std::random_device rd;
  std::vector<uint8_t> bytes((digits + 1) / 2);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rd());
  return to_hex(bytes).substr(0, digits);
}

uint64_t allocated_under(const fs::path& p) {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(p, fs::directory_options::skip_permission_denied, ec), end; !ec && it != end;
       it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

}  // namespace

VmRegistry::VmRegistry(std::string vms_dir) : vms_dir_(std::move(vms_dir)) {
  std::error_code ec;
  fs::create_directories(vms_dir_, ec);
  if (ec) throw Error(ErrorCode::kIo, "cannot create '" + vms_dir_ + "': " + ec.message());
}

void VmRegistry::recover(const std::function<void(const std::string&)>& notice) {
  std::lock_guard lock(mu_);
  records_.clear();
  std::vector<std::string> dirs, jsons;
  for (const auto& e : fs::directory_iterator(vms_dir_)) {
    const std::string name = e.path().filename().string();
    std::error_code ec;
    if (name.starts_with(".")) {  // staging of a synthesis that never finished; temp records
      fs::remove_all(e.path(), ec);
      notice("removed stale staging '" + e.path().string() + "'");
    } else if (e.is_directory() && valid_id(name)) {
      dirs.push_back(name);
    } else if (name.size() == 37 && name.ends_with(".json") && valid_id(name.substr(0, 32))) {
      jsons.push_back(name.substr(0, 32));
    }
  }
  for (const std::string& id : jsons) {
    const std::string path = vms_dir_ + "/" + id + ".json";
    std::ifstream in(path);
    nlohmann::json r = nlohmann::json::parse(in, nullptr, false);
    if (std::find(dirs.begin(), dirs.end(), id) == dirs.end() || !r.is_object() || r.value("id", "") != id) {
      std::error_code ec;
      fs::remove(path, ec);
      notice("dropped record '" + path + "' (no VM directory, or not a record)");
      continue;
    }
    records_.push_back(std::move(r));
  }
  for (const std::string& id : dirs) {
    if (std::find(jsons.begin(), jsons.end(), id) != jsons.end() && get_locked_exists(id)) continue;
    std::error_code ec;
    fs::remove_all(dir_of(id), ec);
    notice("removed VM directory '" + dir_of(id) + "' without a record");
  }
  std::sort(records_.begin(), records_.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a.value("created_unix_ms", int64_t{0}) < b.value("created_unix_ms", int64_t{0});
  });
}

bool VmRegistry::get_locked_exists(const std::string& id) const {
  return std::any_of(records_.begin(), records_.end(), [&](const nlohmann::json& r) { return r["id"] == id; });
}

std::string VmRegistry::new_id() const {
  for (;;) {
    std::string id = random_hex(32);
    std::error_code ec;
    if (!fs::exists(dir_of(id), ec) && !fs::exists(dir_of(id) + ".json", ec)) return id;
  }
}

void VmRegistry::put(const nlohmann::json& r) {
  const std::string id = r.at("id").get<std::string>();
  if (!valid_id(id)) throw Error(ErrorCode::kUsage, "invalid VM id '" + id + "'");
  const std::string path = dir_of(id) + ".json";
  const std::string tmp = vms_dir_ + "/." + id + ".json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << r.dump(2) << "\n";
    out.flush();
    if (!out) throw Error(ErrorCode::kIo, "cannot write '" + tmp + "'");
  }
  if (int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw io_error("cannot rename the VM record into place", path, err);
  }
  std::lock_guard lock(mu_);
  auto it = std::find_if(records_.begin(), records_.end(), [&](const nlohmann::json& x) { return x["id"] == id; });
  if (it != records_.end()) {
    *it = r;
  } else {
    records_.push_back(r);
  }
}

std::optional<nlohmann::json> VmRegistry::get(const std::string& id) const {
  std::lock_guard lock(mu_);
  for (const auto& r : records_) {
    if (r["id"] == id) return r;
  }
  return std::nullopt;
}

std::vector<nlohmann::json> VmRegistry::list() const {
  std::lock_guard lock(mu_);
  return records_;
}

std::optional<nlohmann::json> VmRegistry::take(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = std::find_if(records_.begin(), records_.end(), [&](const nlohmann::json& x) { return x["id"] == id; });
  if (it == records_.end()) return std::nullopt;
  nlohmann::json r = std::move(*it);
  records_.erase(it);
  std::error_code ec;
  fs::remove(dir_of(id) + ".json", ec);
  return r;
}

void VmRegistry::remove_dir(const std::string& id) const {
  // Out of the way at once (a rename), then removed on a thread of its own:
  // freeing gigabytes of extents can take seconds (tens with `discard`
  // mounts), and nobody needs to wait for it. A removal cut short by a crash
  // is finished by recover(), which removes every '.' entry.
  const std::string doomed = vms_dir_ + "/." + id + ".deleting-" + random_hex(8);
  if (::rename(dir_of(id).c_str(), doomed.c_str()) != 0) {
    if (errno == ENOENT) return;
    throw io_error("cannot remove the VM directory", dir_of(id), errno);
  }
  std::thread([doomed] {
    std::error_code ec;
    fs::remove_all(doomed, ec);
  }).detach();
}

uint64_t VmRegistry::allocated_bytes() const { return allocated_under(vms_dir_); }

}  // namespace vmsynth::cloudlet
