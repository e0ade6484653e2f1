// Helpers shared by the HTTP fuzz targets: checks that stop the run (a
// finding for libFuzzer, a crash for the corpus replay under CTest) and
// the bounds a parser's buffers must stay within.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "net/http_parser.h"

namespace tandem::fuzz {

// Stops the run when `condition` does not hold.
inline void Check(bool condition) {
  if (!condition) __builtin_trap();
}

// Bytes held by the names and values of `list`.
inline uint64_t StoredBytes(const net::HeaderList& list) {
  uint64_t bytes = 0;
  for (size_t i = 0; i < list.size(); ++i)
    bytes += list.name(i).size() + list.value(i).size();
  return bytes;
}

// No part of a message that is not body outgrows its limit: the head and
// the trailer section `max_head_bytes` each, `max_fields` fields each (one
// more while the field that breaks the limit is being refused).
inline void CheckBounded(const net::HttpParser& parser, uint64_t max_head_bytes,
                         size_t max_fields) {
  Check(parser.headers().size() <= max_fields + 1);
  Check(parser.trailers().size() <= max_fields + 1);
  Check(StoredBytes(parser.headers()) + parser.target().size() +
            parser.reason().size() <=
        max_head_bytes);
  Check(StoredBytes(parser.trailers()) <= max_head_bytes);
  Check(parser.reason().size() <= net::kMaxStatusLineBytes);
}

// What tandem sends is CRLF-framed: no bare LF, no bare CR.
inline void CheckCrlfOnly(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] == '\n') Check(i > 0 && bytes[i - 1] == '\r');
    if (bytes[i] == '\r') Check(i + 1 < bytes.size() && bytes[i + 1] == '\n');
  }
}

}  // namespace tandem::fuzz
