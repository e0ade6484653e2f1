// Fuzz target for the response side: any bytes as what a backend sends on
// one connection, split anywhere, after a GET or a HEAD. It must never
// crash, never keep more than its limits allow (heads, trailers, field
// counts, the status line), only ever report a status in 100-599 with a
// reason free of controls, and end every error as a 502.
#include <cstddef>
#include <cstdint>

#include "fuzz_common.h"
#include "net/http_parser.h"

namespace {

using tandem::fuzz::Check;
using tandem::net::Framing;
using tandem::net::HttpParser;

class ResponseHandler : public HttpParser::Handler {
 public:
  explicit ResponseHandler(bool head_request) : head_request_(head_request) {}
  HttpParser::HeadAction OnHeadComplete(HttpParser& parser) override {
    Check(parser.status_code() >= 100 && parser.status_code() <= 599);
    for (char c : parser.reason()) {
      unsigned char u = static_cast<unsigned char>(c);
      Check(u >= 0x20 || u == '\t');
      Check(u != 0x7f);
    }
    // A close-delimited response with codings ends in a coding other than
    // chunked; a chunked one forwards only the codings before it.
    if (parser.framing() == Framing::kChunked)
      Check(!tandem::net::HasToken(parser.transfer_codings(), "chunked"));
    ++heads;
    // The proxy skips the body of every answer to HEAD, as here.
    return head_request_ ? HttpParser::HeadAction::kSkipBody
                         : HttpParser::HeadAction::kContinue;
  }
  void OnBody(HttpParser&, const char*, size_t length) override {
    body_bytes += length;
  }
  void OnMessageComplete(HttpParser&) override { ++messages; }

  uint64_t heads = 0;
  uint64_t messages = 0;
  uint64_t body_bytes = 0;

 private:
  bool head_request_;
};

void Run(const uint8_t* data, size_t size) {
  if (size < 2) return;
  // Two bytes of settings: the read size, then the exchange.
  const size_t step = 1 + data[0] % 64;
  const uint8_t flags = data[1];
  data += 2;
  size -= 2;
  const bool head_request = flags & 1;
  const bool reset_between = flags & 2;  // a new exchange, or pipelined
  const bool shrink = flags & 4;
  const uint64_t max_head =
      (flags & 8) ? 512 : tandem::net::kDefaultMaxHeadBytes;

  ResponseHandler handler(head_request);
  HttpParser parser(HttpParser::Type::kResponse, &handler);
  if (flags & 8) parser.set_max_head_bytes(max_head);
  size_t pos = 0;
  while (pos < size) {
    size_t length = std::min(step, size - pos);
    size_t used = 0;
    HttpParser::Result result = parser.Execute(
        reinterpret_cast<const char*>(data) + pos, length, &used);
    Check(used <= length);
    pos += used;
    tandem::fuzz::CheckBounded(parser, max_head,
                               tandem::net::kDefaultMaxFields);
    if (result == HttpParser::Result::kError) {
      Check(parser.error_status() == 502);
      return;
    }
    if (result == HttpParser::Result::kUpgrade) return;
    if (result == HttpParser::Result::kComplete ||
        result == HttpParser::Result::kPausedHead) {
      Check(result == HttpParser::Result::kComplete);  // responses never pause
      if (shrink) parser.ShrinkIfLarge(256);
      if (reset_between) {
        parser.Reset();
      } else {
        parser.Resume();
      }
    } else {
      Check(used == length);  // kNeedMore uses everything it was given
    }
  }
  if (flags & 16) parser.FinishAtEof();
  Check(handler.body_bytes <= size);
  Check(handler.messages <= handler.heads);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Run(data, size);
  return 0;
}
