// Structured log lines (logfmt: time, level, component, message, key=value
// fields) on standard error, one write(2) per line so threads never interleave.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace tandem::net {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

struct LogField {
  std::string_view key;
  std::string value;
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename Number,
            typename = std::enable_if_t<std::is_arithmetic_v<Number>>>
  LogField(std::string_view k, Number v) : key(k), value(std::to_string(v)) {}
};

// Lines below `level` are dropped. Default kInfo. Set once at start-up.
void SetLogLevel(LogLevel level);

// Writes one line; callable from any thread.
void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields = {});

// "2026-11-26T10:00:00.123Z" for the current wall-clock time.
std::string FormatNowUtc();
// "2026-11-26T10:00:00Z" for a time_t.
std::string FormatUtcSeconds(long long unix_seconds);

}  // namespace tandem::net
