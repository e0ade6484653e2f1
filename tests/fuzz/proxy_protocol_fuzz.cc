// Fuzz target for the PROXY protocol parser: any bytes. It must never crash,
// never claim more than 16 + 4 KiB, and agree with itself on every prefix: a
// header found in the whole input is "need more" on each shorter prefix (a
// reader that takes those bytes never takes one too many) and the same
// header on each longer one; "need more" always means every byte so far.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "net/proxy_protocol.h"

namespace {

using tandem::net::ParseProxyHeader;
using tandem::net::ProxyHeader;
using tandem::net::ProxyParse;

void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  ProxyHeader header;
  size_t length = 0;
  std::string error;
  const ProxyParse whole = ParseProxyHeader(input, &header, &length, &error);
  if (whole == ProxyParse::kNeedMore) Check(length == size);
  if (whole == ProxyParse::kInvalid) Check(!error.empty());
  if (whole != ProxyParse::kDone) return 0;
  Check(length > 0 && length <= size);
  Check(length <= tandem::net::kMaxProxyHeaderBytes);
  const bool local = header.local;
  for (size_t n = 0; n <= size; ++n) {
    ProxyHeader part;
    size_t part_length = 0;
    std::string part_error;
    ProxyParse r =
        ParseProxyHeader(input.substr(0, n), &part, &part_length, &part_error);
    if (n < length) {
      Check(r == ProxyParse::kNeedMore && part_length == n);
    } else {
      Check(r == ProxyParse::kDone && part_length == length &&
            part.local == local);
    }
  }
  return 0;
}
