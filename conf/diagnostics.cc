// Locating, collecting and wording diagnostics; see diagnostics.h.
#include "conf/diagnostics.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <limits>
#include <tuple>

namespace tandem::conf {

Position Where(const toml::source_region& region) {
  return {region.begin.line, region.begin.column};
}

LoadContext::LoadContext(std::string_view file) : file_(file) {
  const size_t slash = file_.rfind('/');
  if (slash != std::string::npos) base_dir_ = file_.substr(0, slash + 1);
}

void LoadContext::Error(Position at, std::string key, std::string message) {
  errors_.push_back(
      {file_, at.line, at.column, std::move(key), std::move(message)});
}

void LoadContext::Warning(Position at, std::string key, std::string message) {
  warnings_.push_back(
      {file_, at.line, at.column, std::move(key), std::move(message)});
}

std::string LoadContext::ResolvePath(std::string_view path) const {
  if (path.empty() || path.front() == '/' || base_dir_.empty()) {
    return std::string(path);
  }
  return base_dir_ + std::string(path);
}

LoadResult LoadContext::Finish(Config config) {
  const auto by_position = [](const Diagnostic& a, const Diagnostic& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  };
  std::stable_sort(errors_.begin(), errors_.end(), by_position);
  std::stable_sort(warnings_.begin(), warnings_.end(), by_position);
  LoadResult result;
  if (errors_.empty()) {
    result.config = std::make_shared<const Config>(std::move(config));
  }
  result.errors = std::move(errors_);
  result.warnings = std::move(warnings_);
  return result;
}

namespace {

char Lower(char c) {
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

// Levenshtein distance, case-insensitive.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const size_t substitution =
          diagonal + (Lower(a[i - 1]) == Lower(b[j - 1]) ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::optional<std::string> Nearest(
    std::string_view name, std::span<const std::string_view> candidates) {
  std::optional<std::string> best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (std::string_view candidate : candidates) {
    const size_t distance = EditDistance(name, candidate);
    if (distance < best_distance &&
        distance <= std::max<size_t>(2, candidate.size() / 3)) {
      best = std::string(candidate);
      best_distance = distance;
    }
  }
  return best;
}

std::string Join(const std::vector<std::string>& items,
                 std::string_view last_separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) {
      out += i + 1 == items.size() ? std::string(last_separator) : ", ";
    }
    out += items[i];
  }
  return out;
}

std::string TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string FormatDuration(Duration d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
  if (ms != 0 && ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::string FormatNumber(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

}  // namespace tandem::conf
