// Little-endian field writer and bounds-checked reader for on-disk records.
//
// ByteReader never reads past its span: a short record is reported as a
// kCorrupt error naming the record and the field. Value types; no sharing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vmsynth::codec {

class ByteWriter {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  template <size_t N>
  void bytes(const std::array<uint8_t, N>& a) { bytes(std::as_bytes(std::span(a))); }
  void zeros(size_t n) { out_.insert(out_.end(), n, std::byte{0}); }
  // LEB128 unsigned varint.
  void varint(uint64_t v) {
    while (v >= 0x80) {
      u8(static_cast<uint8_t>(v) | 0x80);
      v >>= 7;
    }
    u8(static_cast<uint8_t>(v));
  }
  size_t size() const { return out_.size(); }
  std::vector<std::byte>& buffer() { return out_; }
  std::vector<std::byte> take() { return std::move(out_); }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  std::vector<std::byte> out_;
};

class ByteReader {
 public:
  ByteReader(std::span<const std::byte> in, std::string_view what) : in_(in), what_(what) {}
  uint8_t u8() { return static_cast<uint8_t>(get(1)); }
  uint16_t u16() { return static_cast<uint16_t>(get(2)); }
  uint32_t u32() { return static_cast<uint32_t>(get(4)); }
  uint64_t u64() { return get(8); }
  std::span<const std::byte> bytes(size_t n) {
    need(n);
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  template <size_t N>
  void bytes_into(std::array<uint8_t, N>& a) {
    auto s = bytes(N);
    std::memcpy(a.data(), s.data(), N);
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = u8();
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
    }
    throw_corrupt(std::string(what_) + ": varint longer than 10 bytes at byte " + std::to_string(pos_));
  }
  size_t position() const { return pos_; }
  size_t remaining() const { return in_.size() - pos_; }

 private:
  void need(size_t n) const {
    if (in_.size() - pos_ < n) {
      throw_corrupt(std::string(what_) + " is truncated: needed " + std::to_string(n) +
                    " more bytes at byte " + std::to_string(pos_) + " of " + std::to_string(in_.size()));
    }
  }
  uint64_t get(int n) {
    need(static_cast<size_t>(n));
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(in_[pos_ + i])} << (8 * i);
    pos_ += static_cast<size_t>(n);
    return v;
  }
  std::span<const std::byte> in_;
  std::string_view what_;
  size_t pos_ = 0;
};

inline uint64_t zigzag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
inline int64_t unzigzag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

}  // namespace vmsynth::codec
