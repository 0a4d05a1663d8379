// TestTempDir: a fresh directory under $TMPDIR (or /tmp) for one test, removed
// with everything in it when the object goes away. Test-only helper.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/staged_dir.h"

namespace vmsynth::io::testing {

class TestTempDir {
 public:
  TestTempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vmsynth-io-test-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = buf.data();
  }
  ~TestTempDir() {
    try {
      StagedDirectory::remove_tree(path_);
    } catch (...) {
    }
  }
  TestTempDir(const TestTempDir&) = delete;
  TestTempDir& operator=(const TestTempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace vmsynth::io::testing
