#include "codec/zstd_codec.h"

#include <zstd.h>

#include <new>
#include <string>

#include "common/error.h"

namespace vmsynth::codec {

namespace {
void check(size_t rc, const char* what) {
  if (ZSTD_isError(rc)) {
    // Parameter errors are programming errors, but report them rather than abort.
    throw Error(ErrorCode::kUnsupported, std::string("zstd ") + what + ": " + ZSTD_getErrorName(rc));
  }
}
}  // namespace

struct ZstdCompressor::Ctx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ~Ctx() { ZSTD_freeCCtx(c); }
};

ZstdCompressor::ZstdCompressor(int level, int window_log)
    : ctx_(std::make_unique<Ctx>()), level_(level), window_log_(window_log) {
  if (!ctx_->c) throw std::bad_alloc();
}
ZstdCompressor::~ZstdCompressor() = default;
ZstdCompressor::ZstdCompressor(ZstdCompressor&&) noexcept = default;
ZstdCompressor& ZstdCompressor::operator=(ZstdCompressor&&) noexcept = default;

void ZstdCompressor::compress(std::span<const std::byte> src, std::span<const std::byte> prefix,
                              std::vector<std::byte>& out) {
  ZSTD_CCtx* c = ctx_->c;
  check(ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters), "reset");
  check(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level_), "level");
  if (window_log_ != 0) check(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log_), "windowLog");
  check(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0), "checksumFlag");
  check(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1), "contentSizeFlag");
  if (!prefix.empty()) check(ZSTD_CCtx_refPrefix(c, prefix.data(), prefix.size()), "refPrefix");
  out.resize(ZSTD_compressBound(src.size()));
  size_t n = ZSTD_compress2(c, out.data(), out.size(), src.data(), src.size());
  check(n, "compress");
  out.resize(n);
}

std::vector<std::byte> ZstdCompressor::compress(std::span<const std::byte> src, std::span<const std::byte> prefix) {
  std::vector<std::byte> out;
  compress(src, prefix, out);
  return out;
}

struct ZstdDecompressor::Ctx {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~Ctx() { ZSTD_freeDCtx(d); }
};

ZstdDecompressor::ZstdDecompressor() : ctx_(std::make_unique<Ctx>()) {
  if (!ctx_->d) throw std::bad_alloc();
}
ZstdDecompressor::~ZstdDecompressor() = default;
ZstdDecompressor::ZstdDecompressor(ZstdDecompressor&&) noexcept = default;
ZstdDecompressor& ZstdDecompressor::operator=(ZstdDecompressor&&) noexcept = default;

void ZstdDecompressor::decompress(std::span<const std::byte> src, std::span<const std::byte> prefix,
                                  std::span<std::byte> dst, const char* what) {
  ZSTD_DCtx* d = ctx_->d;
  ZSTD_DCtx_reset(d, ZSTD_reset_session_and_parameters);
  unsigned long long declared = ZSTD_getFrameContentSize(src.data(), src.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    throw_corrupt(std::string(what) + " is not a valid zstd frame");
  }
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN || declared != dst.size()) {
    throw_corrupt(std::string(what) + " declares " + std::to_string(declared) + " bytes, expected " +
                  std::to_string(dst.size()));
  }
  if (!prefix.empty()) {
    size_t rc = ZSTD_DCtx_refPrefix(d, prefix.data(), prefix.size());
    if (ZSTD_isError(rc)) throw_corrupt(std::string(what) + ": cannot use reference prefix");
  }
  // One-shot decode straight into dst: the declared size was checked above,
  // and zstd never writes past dst.size().
  size_t n = ZSTD_decompressDCtx(d, dst.data(), dst.size(), src.data(), src.size());
  if (ZSTD_isError(n)) {
    throw_corrupt(std::string(what) + " does not decompress: " + ZSTD_getErrorName(n));
  }
  if (n != dst.size()) {
    throw_corrupt(std::string(what) + " decompressed to " + std::to_string(n) + " bytes, expected " +
                  std::to_string(dst.size()));
  }
}

}  // namespace vmsynth::codec
