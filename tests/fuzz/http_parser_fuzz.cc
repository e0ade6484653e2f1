// Fuzz target for the HTTP/1.x framing: any bytes, split anywhere, through
// the request and the response parser. It must never crash, never report a
// body byte it was not given, and always stop at an error or a message end.
// Built with libFuzzer under clang (-DTANDEM_FUZZ=ON), and as a corpus
// replay under any compiler so CTest runs the seeds every time.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "net/http_parser.h"

namespace {

using tandem::net::HttpParser;

class CountingHandler : public HttpParser::Handler {
 public:
  explicit CountingHandler(bool pause) : pause_(pause) {}
  HttpParser::HeadAction OnHeadComplete(HttpParser& parser) override {
    return pause_ && parser.framing() != tandem::net::Framing::kNone
               ? HttpParser::HeadAction::kPause
               : HttpParser::HeadAction::kContinue;
  }
  void OnBody(HttpParser&, const char*, size_t length) override {
    body_bytes += length;
  }
  void OnMessageComplete(HttpParser&) override { ++messages; }
  uint64_t body_bytes = 0;
  uint64_t messages = 0;

 private:
  bool pause_;
};

void Run(HttpParser::Type type, const uint8_t* data, size_t size) {
  if (size == 0) return;
  // The first byte picks the read size, so boundaries move around.
  size_t step = 1 + data[0] % 64;
  ++data;
  --size;
  CountingHandler handler(type == HttpParser::Type::kRequest);
  HttpParser parser(type, &handler);
  parser.set_max_head_bytes(4096);
  parser.set_max_body_bytes(1 << 20);
  size_t pos = 0;
  while (pos < size) {
    size_t length = std::min(step, size - pos);
    size_t used = 0;
    HttpParser::Result result = parser.Execute(
        reinterpret_cast<const char*>(data) + pos, length, &used);
    if (used > length) abort();
    pos += used;
    if (result == HttpParser::Result::kError) {
      int status = parser.error_status();
      if (status < 400 || status > 505) abort();
      return;
    }
    if (result == HttpParser::Result::kUpgrade) return;
    if (result == HttpParser::Result::kPausedHead ||
        result == HttpParser::Result::kComplete) {
      parser.Resume();
    } else if (used != length) {
      abort();  // kNeedMore must consume everything it was given
    }
  }
  if (handler.body_bytes > size) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Run(HttpParser::Type::kRequest, data, size);
  Run(HttpParser::Type::kResponse, data, size);
  return 0;
}
