// Refusing an output path that would overwrite, or write into, an input.
//
// `synthesize --out X --force` with X the base directory, or `overlay create
// -o BASE/disk.img --force`, would destroy the very data the command reads.
// Before a command creates anything it asks refuse_output_over_input() to
// compare its output with each of its inputs by device and inode, after
// resolving symbolic links, so neither a link, a bind mount, a hard link nor
// a spelling such as "base/../base" gets around the check. An output is
// refused when it
//   - is an input (same file or directory),
//   - contains an input (an input lies somewhere below the output), or
//   - lies inside an input (the output would be created below an input
//     directory).
// The refusal is a usage error and does not depend on --force.
//
// Thread safety: a free function; it only stats paths.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace vmsynth::io {

struct NamedInput {
  std::string role;  // how the message names it: "base VM", "overlay", ...
  std::string path;  // need not exist: a missing input cannot be overwritten
};

// Throws Error(kUsage) naming the output option, the output and the input
// when `output` is, contains or lies inside one of `inputs`.
void refuse_output_over_input(std::string_view output_option, const std::string& output,
                              const std::vector<NamedInput>& inputs);

}  // namespace vmsynth::io
