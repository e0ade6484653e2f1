// A minimal JSON writer for the admin API: strings escaped per RFC 8259.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace tandem::dispatcher {

inline void AppendJsonString(std::string_view value, std::string* out) {
  out->push_back('"');
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (u < 0x20) {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "\\u%04x", u);
          out->append(hex);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

}  // namespace tandem::dispatcher
