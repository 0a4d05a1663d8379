// Content hashes: XXH3-128 for blocks and ids, XXH3-64 for checksums, and
// ISA-L zero detection.
//
// Hash128 holds the canonical (big-endian) bytes of an XXH3-128 digest, so it
// compares, hashes and serialises the same on every machine. Pure functions,
// safe from any thread; StreamHash128 is one object per thread.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>

namespace vmsynth {

struct Hash128 {
  std::array<uint8_t, 16> bytes{};

  friend bool operator==(const Hash128&, const Hash128&) = default;
  friend auto operator<=>(const Hash128&, const Hash128&) = default;

  // The first 8 bytes as an integer: well mixed, good for hash tables.
  uint64_t prefix64() const {
    uint64_t v;
    std::memcpy(&v, bytes.data(), sizeof v);
    return v;
  }
  std::string hex() const;
  // Parses 32 hex digits; returns false on anything else.
  static bool from_hex(std::string_view s, Hash128& out);
};

Hash128 hash128(std::span<const std::byte> data);
uint64_t hash64(std::span<const std::byte> data);

// XXH3-128 of one block; a block shorter than `block_size` (the tail of an
// image) is hashed as if padded with zeros to `block_size`.
Hash128 hash_block(std::span<const std::byte> data, size_t block_size);

// True when every byte is zero (ISA-L isal_zero_detect).
bool is_zero(std::span<const std::byte> data);

// Streaming XXH3-128 over several inputs.
class StreamHash128 {
 public:
  StreamHash128();
  ~StreamHash128();
  StreamHash128(StreamHash128&&) noexcept;
  StreamHash128& operator=(StreamHash128&&) noexcept;
  void update(std::span<const std::byte> data);
  void update(const Hash128& h) { update(std::as_bytes(std::span(h.bytes))); }
  void update_u64(uint64_t v);  // little-endian
  Hash128 digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace vmsynth
