// Reading a TOML file into a validated Config, reporting every error with its
// position (HAProxy's cfgerr accumulation, not stop-at-first).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace tandem::conf {

struct Diagnostic {
  std::string file;
  uint32_t line = 0;    // 1-based; 0 when the problem has no position
  uint32_t column = 0;  // 1-based
  std::string key;      // dotted key path, e.g. "clusters.compute.retries"
  std::string message;

  // "FILE:LINE:COL: key: message" (position and key left out when unknown).
  std::string ToString() const;
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // null when there is any error
  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;

  bool ok() const { return config != nullptr; }
};

// Reads and validates `path`. Never throws; a missing or unreadable file is an
// error in the result. `text`, when given, gets the bytes read (it is left
// alone when the file could not be read).
LoadResult LoadConfigFile(const std::string& path, std::string* text = nullptr);

// Validates TOML text; `source_name` stands for the file name in diagnostics.
LoadResult ParseConfig(std::string_view text, std::string_view source_name);

}  // namespace tandem::conf
