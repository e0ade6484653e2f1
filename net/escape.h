// Escaping for the text tandem writes: logfmt values and JSON strings.
#pragma once

#include <string>
#include <string_view>

namespace tandem::net {

enum class Escape {
  kLogfmt,     // \" \\ \n \r \t, other control bytes and DEL as \xHH
  kJson,       // the same, control bytes as \u00HH (RFC 8259)
  kJsonAscii,  // kJson, and every byte >= 0x80 as \u00HH: for bytes a client
               // sent, which need not be UTF-8 and must not break the line
};

// Appends `value` escaped per `style`, without surrounding quotes.
void AppendEscaped(std::string_view value, Escape style, std::string* out);

// Appends `value` as a quoted JSON string.
inline void AppendJsonString(std::string_view value, std::string* out) {
  out->push_back('"');
  AppendEscaped(value, Escape::kJson, out);
  out->push_back('"');
}

}  // namespace tandem::net
