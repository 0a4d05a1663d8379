// libFuzzer target: the overlay parser. Feeds arbitrary bytes through
// OverlayReader (file header, frame headers, limits, chain, trailer),
// FrameCodec (op tables, file records, payloads, the AES-GCM seal with the
// seed key) and OpValidator, exactly as `overlay info` and the engines do,
// but without a base VM. Every input must end in success or vmsynth::Error;
// anything else (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/frame_codec.h"
#include "common/error.h"
#include "engine/op_validator.h"
#include "engine/overlay_info.h"
#include "engine/overlay_reader.h"
#include "fuzz_vm.h"
#include "io/byte_source.h"

namespace {

using namespace vmsynth;

void parse(const std::vector<std::byte>& bytes, const codec::KeySpec& key) {
  auto src = io::memory_source(bytes, 4096);
  OverlayReader reader(*src, key, KeyUse::kHeadersOnly);
  RawFrame f;
  if (!reader.authenticated()) {
    while (reader.next(f)) {
    }
    return;
  }
  codec::FrameCodec codec(reader.keys());
  OpValidator validator(reader.header());
  std::vector<std::byte> payload;
  while (reader.next(f)) {
    if (f.header.type == format::FrameType::kFile) {
      format::FileRecord r = codec.decode_file_table(f.header, f.table());
      validator.check_file(r.id);
      payload.resize(f.header.payload_raw);
      if (r.encoding == format::FileEncoding::kZstd) codec.decode_payload(f.header, f.payload(), {}, payload);
      continue;
    }
    validator.check_blocks_frame(codec.decode_blocks_table(f.header, f.table()));
    payload.resize(f.header.payload_raw);
    codec.decode_payload(f.header, f.payload(), {}, payload);  // DELTA ops without their prefix may fail: fine
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const vmsynth::codec::KeySpec key = vmsynth::fuzz::fuzz_key();
  const auto* b = reinterpret_cast<const std::byte*>(data);
  std::vector<std::byte> bytes(b, b + size);
  for (const vmsynth::codec::KeySpec* k : {&key, static_cast<const vmsynth::codec::KeySpec*>(nullptr)}) {
    try {
      parse(bytes, k ? *k : vmsynth::codec::KeySpec{});
    } catch (const vmsynth::Error&) {
    }
  }
  try {
    auto src = vmsynth::io::memory_source(bytes);
    vmsynth::inspect_overlay(*src);
  } catch (const vmsynth::Error&) {
  }
  return 0;
}
