// Escaping; see escape.h.
#include "net/escape.h"

#include <cstdio>

namespace tandem::net {

void AppendEscaped(std::string_view value, Escape style, std::string* out) {
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out->append("\\\"");
        continue;
      case '\\':
        out->append("\\\\");
        continue;
      case '\n':
        out->append("\\n");
        continue;
      case '\r':
        out->append("\\r");
        continue;
      case '\t':
        out->append("\\t");
        continue;
      default:
        break;
    }
    if (u < 0x20 || u == 0x7f || (u >= 0x80 && style == Escape::kJsonAscii)) {
      char hex[8];
      std::snprintf(hex, sizeof(hex),
                    style == Escape::kLogfmt ? "\\x%02x" : "\\u%04x", u);
      out->append(hex);
    } else {
      out->push_back(c);
    }
  }
}

}  // namespace tandem::net
