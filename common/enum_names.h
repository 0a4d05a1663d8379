// One table per enum of its values and their command-line / JSON names, and the
// two lookups every such enum needs: `name_of(v)` and `parse_enum<E>(text, what)`.
//
// An enum opts in by declaring, in its own namespace (found by argument-
// dependent lookup), a function returning its table:
//
//   enum class DiskFormat { kRaw, kQcow2 };
//   inline constexpr EnumName<DiskFormat> kDiskFormatNames[] = {
//       {DiskFormat::kRaw, "raw"}, {DiskFormat::kQcow2, "qcow2"}};
//   constexpr std::span<const EnumName<DiskFormat>> enum_names(DiskFormat) { return kDiskFormatNames; }
//
// The table is the one definition of the names: the parser's error message
// lists them in table order ("use raw or qcow2"). Names are string literals, so
// `name_of(v).data()` is NUL-terminated.
//
// Header-only, no state: the tables are constexpr and every function is safe
// from any thread.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vmsynth {

template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

// The name of `v` in its table, or "unknown" for a value the table lacks (a
// cast from an out-of-range integer).
template <typename E>
constexpr std::string_view name_of(E v) {
  for (const EnumName<E>& e : enum_names(E{})) {
    if (e.value == v) return e.name;
  }
  return "unknown";
}

// The value named `text`, or nothing.
template <typename E>
constexpr std::optional<E> find_enum(std::string_view text) {
  for (const EnumName<E>& e : enum_names(E{})) {
    if (e.name == text) return e.value;
  }
  return std::nullopt;
}

// The valid names in table order, e.g. for a command-line parser's choice check.
template <typename E>
std::vector<std::string> enum_name_list() {
  std::vector<std::string> names;
  for (const EnumName<E>& e : enum_names(E{})) names.emplace_back(e.name);
  return names;
}

// The valid names in table order, as a sentence: "a", "a or b", "a, b or c".
template <typename E>
std::string enum_choices() {
  const auto table = enum_names(E{});
  std::string s;
  for (size_t i = 0; i < table.size(); ++i) {
    if (i > 0) s += i + 1 == table.size() ? " or " : ", ";
    s += table[i].name;
  }
  return s;
}

// The value named `text`; otherwise throws Error(kUsage) "unknown <what>
// '<text>'; use <the valid names>". `what` names the setting, e.g. "disk format".
template <typename E>
E parse_enum(std::string_view text, std::string_view what) {
  if (std::optional<E> v = find_enum<E>(text)) return *v;
  throw Error(ErrorCode::kUsage, "unknown " + std::string(what) + " '" + std::string(text) + "'; use " +
                                     enum_choices<E>());
}

}  // namespace vmsynth
