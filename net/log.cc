// Structured log lines; see log.h.
#include "net/log.h"

#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "net/escape.h"

namespace tandem::net {
namespace {

std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// Quotes a logfmt value when it holds spaces, quotes or '='.
void AppendValue(std::string_view value, std::string* out) {
  bool quote = value.empty();
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' ||
        static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      quote = true;
      break;
    }
  }
  if (!quote) {
    out->append(value);
    return;
  }
  out->push_back('"');
  AppendEscaped(value, Escape::kLogfmt, out);
  out->push_back('"');
}

}  // namespace

void SetLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }

std::string FormatNowUtc() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm parts;
  gmtime_r(&tv.tv_sec, &parts);
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                parts.tm_hour, parts.tm_min, parts.tm_sec,
                static_cast<int>(tv.tv_usec / 1000));
  return buffer;
}

std::string FormatUtcSeconds(long long unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  tm parts;
  gmtime_r(&t, &parts);
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02dZ",
                parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                parts.tm_hour, parts.tm_min, parts.tm_sec);
  return buffer;
}

void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields) {
  if (static_cast<int>(level) < g_min_level.load(std::memory_order_relaxed))
    return;
  std::string line;
  line.reserve(128);
  line.append("time=");
  line.append(FormatNowUtc());
  line.append(" level=");
  line.append(LevelName(level));
  line.append(" component=");
  line.append(component);
  line.append(" msg=");
  AppendValue(message, &line);
  for (const LogField& field : fields) {
    line.push_back(' ');
    line.append(field.key);
    line.push_back('=');
    AppendValue(field.value, &line);
  }
  line.push_back('\n');
  const char* data = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, data, left);
    if (n <= 0) break;
    data += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace tandem::net
