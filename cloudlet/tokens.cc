#include "cloudlet/tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/hex.h"

namespace vmsynth::cloudlet {

namespace {

constexpr size_t kMinTokenChars = 16;

std::array<uint8_t, 32> sha256(std::string_view s) {
  std::array<uint8_t, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

bool printable_token(std::string_view t) {
  for (char c : t) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// The file's non-comment lines as (line number, name, value).
struct Line {
  int number;
  std::string name, value;
};

std::vector<Line> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::kUsage, io_error("cannot open token file '" + path + "'", "", errno).message());
  std::vector<Line> lines;
  std::string text;
  for (int n = 1; std::getline(in, text); ++n) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    const size_t first = text.find_first_not_of(" \t");
    if (first == std::string::npos || text[first] == '#') continue;
    std::istringstream fields(text);
    Line l{n, {}, {}};
    std::string extra;
    fields >> l.name >> l.value >> extra;
    if (l.value.empty() || !extra.empty()) {
      throw Error(ErrorCode::kUsage, "token file '" + path + "' line " + std::to_string(n) +
                                         ": expected 'NAME TOKEN' or 'NAME sha256:HEX'");
    }
    lines.push_back(std::move(l));
  }
  if (in.bad()) throw Error(ErrorCode::kIo, "cannot read token file '" + path + "'");
  return lines;
}

}  // namespace

TokenStore TokenStore::load(const std::string& path) {
  TokenStore store;
  std::set<std::string> names;
  for (const Line& l : read_lines(path)) {
    const std::string where = "token file '" + path + "' line " + std::to_string(l.number);
    if (!names.insert(l.name).second) throw Error(ErrorCode::kUsage, where + ": duplicate name '" + l.name + "'");
    Entry e{l.name, {}};
    if (l.value.starts_with("sha256:")) {
      if (!from_hex(std::string_view(l.value).substr(7), e.digest)) {
        throw Error(ErrorCode::kUsage, where + ": 'sha256:' must be followed by 64 hex digits");
      }
    } else {
      if (l.value.size() < kMinTokenChars || !printable_token(l.value)) {
        throw Error(ErrorCode::kUsage, where + ": a token must be at least " + std::to_string(kMinTokenChars) +
                                           " printable characters (e.g. `openssl rand -hex 32`)");
      }
      e.digest = sha256(l.value);
    }
    store.entries_.push_back(std::move(e));
  }
  if (store.entries_.empty()) throw Error(ErrorCode::kUsage, "token file '" + path + "' holds no token");
  return store;
}

AuthDecision TokenStore::check(std::string_view authorization) const {
  if (entries_.empty()) return {AuthResult::kOk, ""};
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() <= kScheme.size() ||
      strncasecmp(authorization.data(), kScheme.data(), kScheme.size()) != 0) {
    return {AuthResult::kMissing, ""};
  }
  const std::array<uint8_t, 32> presented = sha256(authorization.substr(kScheme.size()));
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {  // every entry, always: no early exit
    const bool equal = CRYPTO_memcmp(presented.data(), e.digest.data(), presented.size()) == 0;
    if (equal && match == nullptr) match = &e;
  }
  if (match == nullptr) return {AuthResult::kWrong, ""};
  return {AuthResult::kOk, match->name};
}

std::string read_client_token(const std::string& path) {
  for (const Line& l : read_lines(path)) {
    if (!l.value.starts_with("sha256:")) return l.value;
  }
  throw Error(ErrorCode::kUsage, "token file '" + path + "' holds no token (only sha256: digests, which servers use)");
}

}  // namespace vmsynth::cloudlet
