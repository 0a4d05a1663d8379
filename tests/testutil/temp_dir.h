// TempDir: a fresh directory for one test, removed with everything in it when
// the object goes away. The one temporary-directory helper every test uses.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace vmsynth::testutil {

class TempDir {
 public:
  // Creates <root>/<tag>-XXXXXX; root defaults to $TMPDIR, else /tmp.
  explicit TempDir(std::string_view tag = "vmsynth-test", std::string root = "") {
    if (root.empty()) {
      const char* t = std::getenv("TMPDIR");
      root = t && *t ? t : "/tmp";
    }
    std::string tmpl = root + "/" + std::string(tag) + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string sub(std::string_view name) const { return path_ + "/" + std::string(name); }
  std::string operator/(std::string_view name) const { return sub(name); }

 private:
  std::string path_;
};

}  // namespace vmsynth::testutil
