// Overlay encryption: key material, key derivation and the per-frame
// AES-256-GCM seal, through OpenSSL's libcrypto (EVP). The construction is
// specified in docs/overlay-format.md ("Encryption"); the reasoning and the
// limits are in docs/security.md.
//
//   master secret  = a 32-byte raw key, or scrypt(passphrase, salt, N, r, p)
//   overlay key    = HKDF-SHA256(master, salt, "vmsynth overlay v1")
//   nonce          = u32 part || u64 frame index (little-endian), unique per key
//   frame AAD      = SHA-256(file header as stored) || frame header bytes 0-55
//   key check      = GCM tag (part 2, index 0) over the file header with its
//                    key-check field zeroed
//
// The salt is fresh and random for every overlay, so a key file reused across
// overlays still gives every overlay its own key, and a frame index is used
// once per part, so no nonce repeats under a key.
//
// Ownership and thread safety: KeySpec and SecretBytes are values (their bytes
// are wiped when destroyed). FrameKeys is immutable once built and is shared
// (std::shared_ptr<const FrameKeys>) by every FrameCodec of one overlay, on
// any number of threads: seal() and open() create their own EVP context per
// call. No I/O: reading key files is the caller's business.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "codec/overlay_format.h"

namespace vmsynth::codec {

inline constexpr size_t kKeyBytes = 32;     // AES-256
inline constexpr size_t kGcmTagBytes = 16;  // full-length GCM tags only
inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kDigestBytes = 32;  // SHA-256
inline constexpr std::string_view kHkdfInfo = "vmsynth overlay v1";

// Bytes that are wiped (OPENSSL_cleanse) when destroyed or overwritten.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::span<const std::byte> b) : bytes_(b.begin(), b.end()) {}
  SecretBytes(const SecretBytes& o) : bytes_(o.bytes_) {}
  SecretBytes(SecretBytes&& o) noexcept : bytes_(std::move(o.bytes_)) {}
  SecretBytes& operator=(const SecretBytes& o);
  SecretBytes& operator=(SecretBytes&& o) noexcept;
  ~SecretBytes();

  std::span<const std::byte> bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }

 private:
  void wipe();
  std::vector<std::byte> bytes_;
};

// What the user gave to create or open an encrypted overlay.
struct KeySpec {
  enum class Kind : uint8_t { kNone, kRawKey, kPassphrase };
  Kind kind = Kind::kNone;
  SecretBytes secret;  // kRawKey: exactly 32 bytes; kPassphrase: the passphrase
  std::string origin;  // for messages, e.g. "key file 'app.key'"

  bool present() const { return kind != Kind::kNone; }
};

// Parses a key file's content: exactly 32 raw bytes, or 64 hexadecimal
// characters optionally followed by one line break. Anything else is a kUsage
// error naming `origin` and saying how to make a key.
KeySpec key_from_key_file(std::span<const std::byte> content, std::string origin);
// A passphrase file's content: its bytes without one trailing line break.
// Empty is a kUsage error. Longer than kMaxPassphraseBytes is refused.
inline constexpr size_t kMaxPassphraseBytes = 4096;
KeySpec key_from_passphrase_file(std::span<const std::byte> content, std::string origin);
// A raw key given directly (tests, fuzz targets). REQUIRES: 32 bytes.
KeySpec raw_key(std::span<const std::byte, kKeyBytes> key);

// scrypt cost parameters of a passphrase-protected overlay, stored in its
// header. Default N = 2^15, r = 8, p = 1 (32 MiB, ~0.1 s on one core).
// Range a reader accepts: log2_n 10..20, r 1..16, p 1..4 and 128·r·N at most
// kMaxScryptMemory, so a hostile header cannot make a reader spend more.
struct ScryptParams {
  uint8_t log2_n = 15;
  uint8_t r = 8;
  uint8_t p = 1;
};
inline constexpr uint64_t kMaxScryptMemory = 256ull << 20;  // bytes
// Throws kCorrupt (or kUsage when `for_writing`) if the parameters are out of range.
void check_scrypt_params(const ScryptParams& p, bool for_writing);

// Fills `out` with cryptographically secure random bytes (RAND_bytes).
void random_fill(std::span<uint8_t> out);

// The key material of one encrypted overlay.
class FrameKeys {
 public:
  // Which message of a frame a nonce is for; part and frame index make the
  // nonce, so each pair must be used once per overlay key.
  enum Part : uint32_t { kTablePart = 0, kPayloadPart = 1, kKeyCheckPart = 2 };

  // Writer: fills the header's encryption fields (flags, cipher, KDF, scrypt
  // parameters, a fresh random salt) and derives the overlay key. The caller
  // then encodes the header and calls seal_header() on the encoded bytes.
  static std::shared_ptr<FrameKeys> create(format::FileHeader& h, const KeySpec& key,
                                           const ScryptParams& scrypt = {});
  // Writer: computes the key check of an encoded header (whose key-check field
  // is still zero), stores it in the header's bytes and checksum, and records
  // the header digest that every frame's AAD carries.
  void seal_header(std::array<std::byte, format::kFileHeaderSize>& encoded);

  // Reader: derives the overlay key from `key` and the header's KDF fields and
  // checks the header's key check. `encoded` are the header bytes as read.
  // Throws kWrongKey if the key does not open this overlay (or the header was
  // altered), kUsage if `key` is absent.
  static std::shared_ptr<const FrameKeys> open(const format::FileHeader& h,
                                               std::span<const std::byte, format::kFileHeaderSize> encoded,
                                               const KeySpec& key);

  // Encrypts `plain` into `out` (same size) and returns the tag. The AAD is
  // the header digest followed by `frame_aad`.
  std::array<uint8_t, kGcmTagBytes> seal(Part part, uint64_t index, std::span<const std::byte> frame_aad,
                                         std::span<const std::byte> plain, std::span<std::byte> out) const;
  // Decrypts `cipher` into `out` (same size); false if the tag does not
  // authenticate it (then `out` holds nothing usable).
  [[nodiscard]] bool open(Part part, uint64_t index, std::span<const std::byte> frame_aad,
                          std::span<const std::byte> cipher, std::span<std::byte> out,
                          std::span<const uint8_t, kGcmTagBytes> tag) const;

  ~FrameKeys();
  FrameKeys(const FrameKeys&) = delete;
  FrameKeys& operator=(const FrameKeys&) = delete;

 private:
  FrameKeys() = default;
  std::array<uint8_t, kKeyBytes> key_{};
  std::array<uint8_t, kDigestBytes> header_digest_{};
};

}  // namespace vmsynth::codec
