// A request's priority for the queue (docs/retries.md, "Priorities"): 0 is
// the highest, 7 the lowest; "high", "normal" and "low" are 0, 4 and 7. As a
// header's value (priority_header) and as a listener's `priority`.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tandem::conf {

inline constexpr uint8_t kHighPriority = 0;
inline constexpr uint8_t kNormalPriority = 4;
inline constexpr uint8_t kLowPriority = 7;

// The priority a header value names; nullopt for anything else (the
// request is then "normal").
inline std::optional<uint8_t> ParsePriority(std::string_view value) {
  const auto is = [value](std::string_view word) {
    if (value.size() != word.size()) return false;
    for (size_t i = 0; i < value.size(); ++i) {
      char c = value[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != word[i]) return false;
    }
    return true;
  };
  if (value.size() == 1 && value[0] >= '0' && value[0] <= '7')
    return static_cast<uint8_t>(value[0] - '0');
  if (is("high")) return kHighPriority;
  if (is("normal")) return kNormalPriority;
  if (is("low")) return kLowPriority;
  return std::nullopt;
}

}  // namespace tandem::conf
