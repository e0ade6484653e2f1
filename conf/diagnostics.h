// Where a problem is (FILE:LINE:COL), how it is collected (every one, not
// the first: HAProxy's cfgerr in src/proxy.c) and the wording the readers
// share. Internal to conf/.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "conf/load.h"

namespace tandem::conf {

struct Position {
  uint32_t line = 0;
  uint32_t column = 0;
};

Position Where(const toml::source_region& region);

// One load of one file: where relative paths start, and every error and
// warning found so far.
class LoadContext {
 public:
  explicit LoadContext(std::string_view file);

  const std::string& file() const { return file_; }
  void Error(Position at, std::string key, std::string message);
  void Warning(Position at, std::string key, std::string message);
  // `path` against the file's directory, unless it is absolute.
  std::string ResolvePath(std::string_view path) const;
  // The diagnostics sorted by position (stable: at one position, in the
  // order found), with `config` only when there is no error.
  LoadResult Finish(Config config);

 private:
  std::string file_;
  std::string base_dir_;
  std::vector<Diagnostic> errors_;
  std::vector<Diagnostic> warnings_;
};

// The candidate nearest to `name` (case-insensitive edit distance), if near
// enough to be a likely typo; the first of equally near ones.
std::optional<std::string> Nearest(
    std::string_view name, std::span<const std::string_view> candidates);
// "a, b or c" with `last_separator` " or ".
std::string Join(const std::vector<std::string>& items,
                 std::string_view last_separator);
std::string TypeName(toml::node_type type);
// In the largest unit that divides it whole: "2m", "90s", "250ms".
std::string FormatDuration(Duration d);
std::string FormatNumber(double value);

}  // namespace tandem::conf
