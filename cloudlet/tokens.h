// Bearer tokens for vmsynthd (`--token-file`).
//
// The file has one token a line: `NAME TOKEN`, or `NAME sha256:HEX` so that
// the file need not hold the secret itself (HEX is the SHA-256 of TOKEN, 64
// hex digits). Blank lines and lines starting with '#' are skipped. Names are
// for logs and metrics; tokens must be at least 16 characters of printable
// ASCII without spaces. Only SHA-256 digests are kept in memory, and a
// presented token is hashed and compared with every entry in constant time
// (CRYPTO_memcmp, no early exit across entries), so the time taken tells an
// attacker nothing about how close a guess was or which entry it matched.
//
// Thread safety: a TokenStore is immutable after load(); check() may run on
// any number of threads.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vmsynth::cloudlet {

enum class AuthResult { kOk, kMissing, kWrong };

struct AuthDecision {
  AuthResult result = AuthResult::kMissing;
  std::string name;  // the matching entry's name (kOk)
};

class TokenStore {
 public:
  // No tokens: check() always succeeds (loopback-only daemons).
  TokenStore() = default;
  // Reads FILE. Throws vmsynth::Error kUsage naming the file and line for a
  // malformed line, a duplicate name, a token that is too short, or an empty
  // file; kIo when it cannot be read.
  static TokenStore load(const std::string& path);

  bool enabled() const { return !entries_.empty(); }
  size_t size() const { return entries_.size(); }
  // `authorization` is the Authorization header's value ("" when absent).
  AuthDecision check(std::string_view authorization) const;

 private:
  struct Entry {
    std::string name;
    std::array<uint8_t, 32> digest{};
  };
  std::vector<Entry> entries_;
};

// First token of a client's token file: the TOKEN of the first `NAME TOKEN`
// line (what `vmsynth push --token-file` sends). Throws kUsage if the file
// has none (a `sha256:` line is a server-side entry, not a token).
std::string read_client_token(const std::string& path);

}  // namespace vmsynth::cloudlet
