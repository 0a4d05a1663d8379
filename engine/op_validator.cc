#include "engine/op_validator.h"

#include <string>

#include "common/error.h"

namespace vmsynth {

using format::BlockOp;
using format::OpKind;

namespace {
const char* image_name(unsigned image) { return image == image_index(ImageKind::kMemory) ? "memory" : "disk"; }
}  // namespace

OpValidator::OpValidator(const format::FileHeader& h) {
  for (unsigned i = 0; i < kImageCount; ++i) {
    base_blocks_[i] = format::blocks_in(h.base_size[i]);
    launch_blocks_[i] = format::blocks_in(h.launch_size[i]);
  }
}

uint64_t* OpValidator::Coverage::word(uint64_t block, bool create) {
  auto it = leaves.find(block / kLeafBlocks);
  if (it == leaves.end()) {
    if (!create) return nullptr;
    it = leaves.emplace(block / kLeafBlocks, std::make_unique<Leaf>()).first;
  }
  return &(*it->second)[(block % kLeafBlocks) / 64];
}

bool OpValidator::covered(format::BlockAddress a) {
  const uint64_t* w = covered_[a.image].word(a.block, false);
  return w && ((*w >> (a.block % 64)) & 1);
}

void OpValidator::check_blocks_frame(std::span<const BlockOp> ops) {
  auto fail = [](size_t i, const BlockOp& op, const std::string& what) {
    throw_corrupt("op " + std::to_string(i) + " (" + std::string(format::op_kind_name(op.kind)) + " of " +
                  image_name(op.target.image) + " block " + std::to_string(op.target.block) + ") " + what);
  };
  // Sources are checked against what earlier frames produced, before this
  // frame's own targets are marked.
  for (size_t i = 0; i < ops.size(); ++i) {
    const BlockOp& op = ops[i];
    if (op.target.block >= launch_blocks_[op.target.image]) {
      fail(i, op, "is past the end of the launch " + std::string(image_name(op.target.image)) + " image (" +
                      std::to_string(launch_blocks_[op.target.image]) + " blocks)");
    }
    if (op.kind == OpKind::kBaseCopy && op.source.block >= base_blocks_[op.source.image]) {
      fail(i, op, "copies base " + std::string(image_name(op.source.image)) + " block " +
                      std::to_string(op.source.block) + ", past the end of the base image");
    }
    if (op.kind == OpKind::kSelfCopy) {
      if (op.source.block >= launch_blocks_[op.source.image] || !covered(op.source)) {
        fail(i, op, "copies launch " + std::string(image_name(op.source.image)) + " block " +
                        std::to_string(op.source.block) + ", which no earlier frame produced");
      }
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    const BlockOp& op = ops[i];
    uint64_t& word = *covered_[op.target.image].word(op.target.block, true);
    uint64_t bit = uint64_t{1} << (op.target.block % 64);
    if (word & bit) fail(i, op, "targets a block that another op already covers");
    word |= bit;
  }
}

void OpValidator::check_file(format::FileId id) {
  auto i = static_cast<unsigned>(id);
  if (files_seen_[i]) throw_corrupt("the overlay carries " + std::string(format::file_id_name(id)) + " twice");
  files_seen_[i] = true;
}

}  // namespace vmsynth
