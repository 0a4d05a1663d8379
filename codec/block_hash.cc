#include "codec/block_hash.h"

#include <isa-l/mem_routines.h>
#include <xxhash.h>

#include <cstdlib>
#include <vector>

#include "common/hex.h"

namespace vmsynth {

namespace {
Hash128 from_xxh(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  Hash128 out;
  std::memcpy(out.bytes.data(), c.digest, 16);
  return out;
}
}  // namespace

std::string Hash128::hex() const { return to_hex(bytes); }

bool Hash128::from_hex(std::string_view s, Hash128& out) { return vmsynth::from_hex(s, out.bytes); }

Hash128 hash128(std::span<const std::byte> data) { return from_xxh(XXH3_128bits(data.data(), data.size())); }

uint64_t hash64(std::span<const std::byte> data) { return XXH3_64bits(data.data(), data.size()); }

Hash128 hash_block(std::span<const std::byte> data, size_t block_size) {
  if (data.size() >= block_size) return hash128(data.first(block_size));
  std::vector<std::byte> padded(block_size);
  std::memcpy(padded.data(), data.data(), data.size());
  return hash128(padded);
}

bool is_zero(std::span<const std::byte> data) {
  if (data.empty()) return true;
  // isal_zero_detect takes a non-const pointer but only reads.
  return isal_zero_detect(const_cast<std::byte*>(data.data()), data.size()) == 0;
}

struct StreamHash128::State {
  XXH3_state_t* st;
  State() : st(XXH3_createState()) {
    if (!st) std::abort();
    XXH3_128bits_reset(st);
  }
  ~State() { XXH3_freeState(st); }
};

StreamHash128::StreamHash128() : state_(std::make_unique<State>()) {}
StreamHash128::~StreamHash128() = default;
StreamHash128::StreamHash128(StreamHash128&&) noexcept = default;
StreamHash128& StreamHash128::operator=(StreamHash128&&) noexcept = default;

void StreamHash128::update(std::span<const std::byte> data) {
  XXH3_128bits_update(state_->st, data.data(), data.size());
}

void StreamHash128::update_u64(uint64_t v) {
  std::byte b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>(v >> (8 * i));
  update(b);
}

Hash128 StreamHash128::digest() const { return from_xxh(XXH3_128bits_digest(state_->st)); }

}  // namespace vmsynth
