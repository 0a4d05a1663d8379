#include "codec/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cstring>
#include <memory>
#include <string>

#include "common/error.h"

namespace vmsynth::codec {

namespace {

constexpr size_t kKeyCheckAt = 128;  // offset of the key-check field in the file header
constexpr size_t kHeaderChecksumAt = format::kFileHeaderSize - 8;

[[noreturn]] void throw_crypto(const char* what) {
  // libcrypto failing on valid arguments means the library is broken or out
  // of memory: report it as an I/O-class failure of the machine, not as data.
  throw Error(ErrorCode::kIo, std::string("OpenSSL: ") + what + " failed");
}

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};

std::array<uint8_t, kGcmNonceBytes> make_nonce(uint32_t part, uint64_t index) {
  std::array<uint8_t, kGcmNonceBytes> n{};
  for (int i = 0; i < 4; ++i) n[i] = static_cast<uint8_t>(part >> (8 * i));
  for (int i = 0; i < 8; ++i) n[4 + i] = static_cast<uint8_t>(index >> (8 * i));
  return n;
}

// One AES-256-GCM message. enc: 1 seal, 0 open. For open, `tag` is checked;
// for seal it receives the tag. Returns false when opening fails to authenticate.
bool gcm(int enc, const std::array<uint8_t, kKeyBytes>& key, uint32_t part, uint64_t index,
         std::span<const uint8_t> aad1, std::span<const std::byte> aad2, std::span<const std::byte> in,
         std::span<std::byte> out, uint8_t* tag) {
  std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
  if (!ctx) throw_crypto("EVP_CIPHER_CTX_new");
  auto nonce = make_nonce(part, index);
  if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce.data(), enc) != 1) {
    throw_crypto("AES-256-GCM init");
  }
  int len = 0;
  if (!aad1.empty() && EVP_CipherUpdate(ctx.get(), nullptr, &len, aad1.data(), static_cast<int>(aad1.size())) != 1) {
    throw_crypto("GCM AAD");
  }
  if (!aad2.empty() && EVP_CipherUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad2.data()),
                                        static_cast<int>(aad2.size())) != 1) {
    throw_crypto("GCM AAD");
  }
  // Messages are at most 64 MiB + a bit (format limits), far below INT_MAX.
  if (!in.empty() && EVP_CipherUpdate(ctx.get(), reinterpret_cast<uint8_t*>(out.data()), &len,
                                      reinterpret_cast<const uint8_t*>(in.data()), static_cast<int>(in.size())) != 1) {
    throw_crypto("GCM update");
  }
  if (!enc && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagBytes, tag) != 1) {
    throw_crypto("GCM set tag");
  }
  int fin = 0;
  uint8_t final_out[32];  // GCM writes nothing here; a real buffer keeps pointer arithmetic off null
  if (EVP_CipherFinal_ex(ctx.get(), final_out, &fin) != 1) {
    if (!enc) return false;
    throw_crypto("GCM final");
  }
  if (enc && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagBytes, tag) != 1) {
    throw_crypto("GCM get tag");
  }
  return true;
}

std::array<uint8_t, kKeyBytes> hkdf_sha256(std::span<const std::byte> ikm, std::span<const uint8_t> salt) {
  std::unique_ptr<EVP_PKEY_CTX, CtxFree> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  std::array<uint8_t, kKeyBytes> out{};
  size_t len = out.size();
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), salt.data(), static_cast<int>(salt.size())) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), reinterpret_cast<const uint8_t*>(ikm.data()),
                                 static_cast<int>(ikm.size())) != 1 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), reinterpret_cast<const uint8_t*>(kHkdfInfo.data()),
                                  static_cast<int>(kHkdfInfo.size())) != 1 ||
      EVP_PKEY_derive(ctx.get(), out.data(), &len) != 1 || len != out.size()) {
    throw_crypto("HKDF-SHA256");
  }
  return out;
}

std::array<uint8_t, kKeyBytes> overlay_key(const format::FileHeader& h, const KeySpec& key) {
  if (h.kdf == format::Kdf::kRawKey) {
    if (key.kind != KeySpec::Kind::kRawKey) {
      throw Error(ErrorCode::kWrongKey, "this overlay is encrypted with a key file, but " + key.origin +
                                            " was given; use --key-file with the overlay's key");
    }
    return hkdf_sha256(key.secret.bytes(), h.salt);
  }
  if (key.kind != KeySpec::Kind::kPassphrase) {
    throw Error(ErrorCode::kWrongKey, "this overlay is protected by a passphrase, but " + key.origin +
                                          " was given; use --passphrase-file");
  }
  ScryptParams p{h.kdf_log2_n, h.kdf_r, h.kdf_p};
  check_scrypt_params(p, false);
  std::array<uint8_t, kKeyBytes> master{};
  const auto pass = key.secret.bytes();
  if (EVP_PBE_scrypt(reinterpret_cast<const char*>(pass.data()), pass.size(), h.salt.data(), h.salt.size(),
                     uint64_t{1} << p.log2_n, p.r, p.p, kMaxScryptMemory + (16u << 20), master.data(),
                     master.size()) != 1) {
    throw_crypto("scrypt");
  }
  auto k = hkdf_sha256(std::as_bytes(std::span(master)), h.salt);
  OPENSSL_cleanse(master.data(), master.size());
  return k;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t without_line_break(std::span<const std::byte> b) {
  size_t n = b.size();
  if (n > 0 && b[n - 1] == std::byte{'\n'}) {
    --n;
    if (n > 0 && b[n - 1] == std::byte{'\r'}) --n;
  }
  return n;
}

}  // namespace

// ---- SecretBytes -----------------------------------------------------------

void SecretBytes::wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}
SecretBytes& SecretBytes::operator=(const SecretBytes& o) {
  if (this != &o) {
    wipe();
    bytes_ = o.bytes_;
  }
  return *this;
}
SecretBytes& SecretBytes::operator=(SecretBytes&& o) noexcept {
  if (this != &o) {
    wipe();
    bytes_ = std::move(o.bytes_);
  }
  return *this;
}
SecretBytes::~SecretBytes() { wipe(); }

// ---- Key specs -------------------------------------------------------------

KeySpec key_from_key_file(std::span<const std::byte> content, std::string origin) {
  KeySpec k;
  k.kind = KeySpec::Kind::kRawKey;
  k.origin = std::move(origin);
  if (content.size() == kKeyBytes) {
    k.secret = SecretBytes(content);
    return k;
  }
  size_t n = without_line_break(content);
  if (n == 2 * kKeyBytes) {
    std::array<std::byte, kKeyBytes> key{};
    bool ok = true;
    for (size_t i = 0; i < kKeyBytes && ok; ++i) {
      int hi = hex_value(static_cast<char>(content[2 * i])), lo = hex_value(static_cast<char>(content[2 * i + 1]));
      ok = hi >= 0 && lo >= 0;
      key[i] = static_cast<std::byte>(ok ? hi * 16 + lo : 0);
    }
    if (ok) {
      k.secret = SecretBytes(key);
      OPENSSL_cleanse(key.data(), key.size());
      return k;
    }
  }
  throw Error(ErrorCode::kUsage, k.origin + " is not a key: a key file holds exactly 32 raw bytes or 64 hexadecimal "
                                            "characters (this one has " + std::to_string(content.size()) +
                                     " bytes); make one with: head -c 32 /dev/urandom > FILE");
}

KeySpec key_from_passphrase_file(std::span<const std::byte> content, std::string origin) {
  KeySpec k;
  k.kind = KeySpec::Kind::kPassphrase;
  k.origin = std::move(origin);
  size_t n = without_line_break(content);
  if (n == 0) throw Error(ErrorCode::kUsage, k.origin + " is empty: a passphrase file must hold the passphrase");
  if (n > kMaxPassphraseBytes) {
    throw Error(ErrorCode::kUsage, k.origin + " holds " + std::to_string(n) + " bytes; a passphrase may have at most " +
                                       std::to_string(kMaxPassphraseBytes));
  }
  k.secret = SecretBytes(content.first(n));
  return k;
}

KeySpec raw_key(std::span<const std::byte, kKeyBytes> key) {
  KeySpec k;
  k.kind = KeySpec::Kind::kRawKey;
  k.secret = SecretBytes(key);
  k.origin = "the given key";
  return k;
}

void check_scrypt_params(const ScryptParams& p, bool for_writing) {
  bool ok = p.log2_n >= 10 && p.log2_n <= 20 && p.r >= 1 && p.r <= 16 && p.p >= 1 && p.p <= 4 &&
            (uint64_t{128} * p.r << p.log2_n) <= kMaxScryptMemory;
  if (ok) return;
  std::string m = "scrypt parameters log2(N)=" + std::to_string(p.log2_n) + " r=" + std::to_string(p.r) +
                  " p=" + std::to_string(p.p) +
                  " are outside the accepted range (log2(N) 10-20, r 1-16, p 1-4, 128*r*N <= 256 MiB)";
  if (for_writing) throw Error(ErrorCode::kUsage, m);
  throw_corrupt("overlay header: " + m);
}

void random_fill(std::span<uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) throw_crypto("RAND_bytes");
}

// ---- FrameKeys -------------------------------------------------------------

FrameKeys::~FrameKeys() {
  OPENSSL_cleanse(key_.data(), key_.size());
}

std::shared_ptr<FrameKeys> FrameKeys::create(format::FileHeader& h, const KeySpec& key, const ScryptParams& scrypt) {
  if (!key.present()) throw Error(ErrorCode::kUsage, "encryption needs a key file or a passphrase file");
  h.flags |= format::kFlagEncrypted;
  h.cipher = format::Cipher::kAes256Gcm;
  random_fill(h.salt);
  h.nonce_prefix = {};
  h.key_check = {};
  if (key.kind == KeySpec::Kind::kPassphrase) {
    check_scrypt_params(scrypt, true);
    h.kdf = format::Kdf::kScrypt;
    h.kdf_log2_n = scrypt.log2_n;
    h.kdf_r = scrypt.r;
    h.kdf_p = scrypt.p;
  } else {
    h.kdf = format::Kdf::kRawKey;
    h.kdf_log2_n = h.kdf_r = h.kdf_p = 0;
  }
  std::shared_ptr<FrameKeys> k(new FrameKeys());
  k->key_ = overlay_key(h, key);
  return k;
}

void FrameKeys::seal_header(std::array<std::byte, format::kFileHeaderSize>& encoded) {
  std::array<uint8_t, kGcmTagBytes> tag{};
  std::memset(encoded.data() + kKeyCheckAt, 0, kGcmTagBytes);
  gcm(1, key_, kKeyCheckPart, 0, {}, std::span(encoded).first(kHeaderChecksumAt), {}, {}, tag.data());
  std::memcpy(encoded.data() + kKeyCheckAt, tag.data(), tag.size());
  uint64_t sum = hash64(std::span(encoded).first(kHeaderChecksumAt));
  for (int i = 0; i < 8; ++i) encoded[kHeaderChecksumAt + i] = static_cast<std::byte>(sum >> (8 * i));
  unsigned len = 0;
  if (EVP_Digest(encoded.data(), encoded.size(), header_digest_.data(), &len, EVP_sha256(), nullptr) != 1) {
    throw_crypto("SHA-256");
  }
}

std::shared_ptr<const FrameKeys> FrameKeys::open(const format::FileHeader& h,
                                                 std::span<const std::byte, format::kFileHeaderSize> encoded,
                                                 const KeySpec& key) {
  if (!key.present()) {
    throw Error(ErrorCode::kWrongKey, "this overlay is encrypted: give its key with --key-file or --passphrase-file");
  }
  std::shared_ptr<FrameKeys> k(new FrameKeys());
  k->key_ = overlay_key(h, key);
  std::array<std::byte, format::kFileHeaderSize> copy;
  std::memcpy(copy.data(), encoded.data(), copy.size());
  std::memset(copy.data() + kKeyCheckAt, 0, kGcmTagBytes);
  std::array<uint8_t, kGcmTagBytes> expect{};
  gcm(1, k->key_, kKeyCheckPart, 0, {}, std::span(copy).first(kHeaderChecksumAt), {}, {}, expect.data());
  if (CRYPTO_memcmp(expect.data(), h.key_check.data(), kGcmTagBytes) != 0) {
    throw Error(ErrorCode::kWrongKey, key.origin + " does not open this overlay: wrong " +
                                          (key.kind == KeySpec::Kind::kPassphrase ? "passphrase" : "key") +
                                          " (or the overlay header was altered)");
  }
  unsigned len = 0;
  if (EVP_Digest(encoded.data(), encoded.size(), k->header_digest_.data(), &len, EVP_sha256(), nullptr) != 1) {
    throw_crypto("SHA-256");
  }
  return k;
}

std::array<uint8_t, kGcmTagBytes> FrameKeys::seal(Part part, uint64_t index, std::span<const std::byte> frame_aad,
                                                  std::span<const std::byte> plain, std::span<std::byte> out) const {
  std::array<uint8_t, kGcmTagBytes> tag{};
  gcm(1, key_, part, index, header_digest_, frame_aad, plain, out.first(plain.size()), tag.data());
  return tag;
}

bool FrameKeys::open(Part part, uint64_t index, std::span<const std::byte> frame_aad, std::span<const std::byte> cipher,
                     std::span<std::byte> out, std::span<const uint8_t, kGcmTagBytes> tag) const {
  std::array<uint8_t, kGcmTagBytes> t;
  std::memcpy(t.data(), tag.data(), t.size());
  return gcm(0, key_, part, index, header_digest_, frame_aad, cipher, out.first(cipher.size()), t.data());
}

}  // namespace vmsynth::codec
