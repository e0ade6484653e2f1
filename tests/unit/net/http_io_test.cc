// Tests of the codec over libevent buffers: a parser fed in place from an
// evbuffer, the one body framer both directions of the proxy use, and HTTP/2
// DATA frames written from a buffer.
#include "net/http_io.h"

#include <doctest/doctest.h>
#include <event2/buffer.h>

#include <memory>
#include <string>
#include <vector>

namespace tandem::net {
namespace {

struct BufferDeleter {
  void operator()(evbuffer* buffer) const { evbuffer_free(buffer); }
};
using Buffer = std::unique_ptr<evbuffer, BufferDeleter>;

Buffer NewBuffer() {
  Buffer buffer(evbuffer_new());
  REQUIRE(buffer != nullptr);
  return buffer;
}

std::string Text(evbuffer* buffer) {
  std::string text(evbuffer_get_length(buffer), '\0');
  evbuffer_copyout(buffer, text.data(), text.size());
  return text;
}

// Collects what a parser reports.
struct Collector : HttpParser::Handler {
  HttpParser::HeadAction OnHeadComplete(HttpParser&) override {
    ++heads;
    return HttpParser::HeadAction::kContinue;
  }
  void OnBody(HttpParser&, const char* data, size_t length) override {
    body.append(data, length);
  }
  void OnMessageComplete(HttpParser&) override { ++messages; }
  int heads = 0;
  int messages = 0;
  std::string body;
};

TEST_CASE("a body goes out as its framing carries it") {
  SUBCASE("a length: the bytes as they are") {
    Buffer out = NewBuffer();
    FrameBody(Framing::kContentLength, "hello", 5, out.get());
    FrameBodyEnd(Framing::kContentLength, HeaderList(), out.get());
    CHECK(Text(out.get()) == "hello");
  }
  SUBCASE("close-delimited: the bytes as they are") {
    Buffer out = NewBuffer();
    FrameBody(Framing::kUntilClose, "abc", 3, out.get());
    FrameBodyEnd(Framing::kUntilClose, HeaderList(), out.get());
    CHECK(Text(out.get()) == "abc");
  }
  SUBCASE("chunked: a chunk per piece, an empty piece is no chunk") {
    Buffer out = NewBuffer();
    std::string big(300, 'x');
    FrameBody(Framing::kChunked, "hello", 5, out.get());
    FrameBody(Framing::kChunked, "", 0, out.get());  // would end the body
    FrameBody(Framing::kChunked, big.data(), big.size(), out.get());
    FrameBodyEnd(Framing::kChunked, HeaderList(), out.get());
    CHECK(Text(out.get()) == "5\r\nhello\r\n12c\r\n" + big + "\r\n0\r\n\r\n");
  }
  SUBCASE("chunked: trailers follow the last chunk, framing fields dropped") {
    Buffer out = NewBuffer();
    HeaderList trailers;
    trailers.Add("X-Checksum", "abc");
    trailers.Add("Transfer-Encoding", "chunked");
    trailers.Add("Host", "elsewhere");
    FrameBodyEnd(Framing::kChunked, trailers, out.get());
    CHECK(Text(out.get()) == "0\r\nX-Checksum: abc\r\n\r\n");
  }
  SUBCASE("no body: nothing at all") {
    Buffer out = NewBuffer();
    FrameBody(Framing::kNone, "abc", 3, out.get());
    FrameBodyEnd(Framing::kNone, HeaderList(), out.get());
    CHECK(evbuffer_get_length(out.get()) == 0);
  }
}

TEST_CASE("what the framer writes, a parser reads back as the same body") {
  for (Framing framing : {Framing::kChunked, Framing::kContentLength}) {
    CAPTURE(static_cast<int>(framing));
    std::vector<std::string> pieces = {"a", "", std::string(70000, 'b'), "cd"};
    std::string body;
    for (const std::string& piece : pieces) body += piece;
    Buffer wire = NewBuffer();
    std::string head = "POST / HTTP/1.1\r\nHost: h\r\n";
    head += framing == Framing::kChunked
                ? "Transfer-Encoding: chunked\r\n\r\n"
                : "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    evbuffer_add(wire.get(), head.data(), head.size());
    for (const std::string& piece : pieces)
      FrameBody(framing, piece.data(), piece.size(), wire.get());
    FrameBodyEnd(framing, HeaderList(), wire.get());
    Collector collector;
    HttpParser parser(HttpParser::Type::kRequest, &collector);
    size_t consumed = 0;
    CHECK(Feed(parser, wire.get(), &consumed) == HttpParser::Result::kComplete);
    CHECK(collector.body == body);
    CHECK(collector.messages == 1);
    CHECK(evbuffer_get_length(wire.get()) == 0);
  }
}

TEST_CASE("a parser fed from a buffer stops at the message's end") {
  // Two pipelined requests, split over many small pieces of the buffer's
  // chain: Feed takes exactly the first one and leaves the second.
  const std::string first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string second = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  Buffer input = NewBuffer();
  const std::string both = first + second;
  for (size_t i = 0; i < both.size(); i += 3) {
    Buffer piece = NewBuffer();  // a chain of separate segments
    evbuffer_add(piece.get(), both.data() + i,
                 std::min<size_t>(3, both.size() - i));
    evbuffer_add_buffer(input.get(), piece.get());
  }
  Collector collector;
  HttpParser parser(HttpParser::Type::kRequest, &collector);
  size_t consumed = 0;
  CHECK(Feed(parser, input.get(), &consumed) == HttpParser::Result::kComplete);
  CHECK(consumed == first.size());
  CHECK(Text(input.get()) == second);
  CHECK(collector.messages == 1);
}

TEST_CASE("a parser fed an incomplete message takes every byte and waits") {
  const std::string part = "GET /a HTTP/1.1\r\nHost:";
  Buffer input = NewBuffer();
  evbuffer_add(input.get(), part.data(), part.size());
  Collector collector;
  HttpParser parser(HttpParser::Type::kRequest, &collector);
  size_t consumed = 0;
  CHECK(Feed(parser, input.get(), &consumed) == HttpParser::Result::kNeedMore);
  CHECK(consumed == part.size());
  CHECK(evbuffer_get_length(input.get()) == 0);
  CHECK(collector.heads == 0);
}

TEST_CASE("a DATA frame is its header, then the payload moved, the rest left") {
  Buffer payload = NewBuffer();
  Buffer output = NewBuffer();
  evbuffer_add(output.get(), "before|", 7);
  // The payload in two chains, each taken whole, and a third partly.
  for (const char* piece : {"first ", "second ", "third and more"}) {
    Buffer chain = NewBuffer();
    evbuffer_add(chain.get(), piece, std::string(piece).size());
    evbuffer_add_buffer(payload.get(), chain.get());
  }
  nghttp2_frame frame{};
  frame.data.padlen = 0;
  const uint8_t header[9] = {0, 0, 18, 0, 1, 0, 0, 0, 3};
  CHECK(SendDataFrame(frame, header, 18, payload.get(), output.get()) == 0);
  const std::string written = Text(output.get());
  CHECK(written.substr(0, 7) == "before|");
  CHECK(written.substr(7, 9) ==
        std::string(reinterpret_cast<const char*>(header), 9));
  CHECK(written.substr(16) == "first second third");
  CHECK(Text(payload.get()) == " and more");
}

TEST_CASE(
    "the next DATA frame: up to the frame size, EOF on the last, deferred on "
    "none") {
  uint32_t flags = 0;
  CHECK(NextDataFrame(100, 16, false, &flags) == 16);
  CHECK(flags == NGHTTP2_DATA_FLAG_NO_COPY);
  flags = 0;
  CHECK(NextDataFrame(100, 16, true, &flags) == 16);  // more left: no EOF
  CHECK(flags == NGHTTP2_DATA_FLAG_NO_COPY);
  flags = 0;
  CHECK(NextDataFrame(10, 16, true, &flags) == 10);
  CHECK(flags == (NGHTTP2_DATA_FLAG_NO_COPY | NGHTTP2_DATA_FLAG_EOF));
  flags = 0;
  CHECK(NextDataFrame(10, 16, false, &flags) == 10);  // the body goes on
  CHECK(flags == NGHTTP2_DATA_FLAG_NO_COPY);
  flags = 0;
  CHECK(NextDataFrame(0, 16, true, &flags) == 0);  // an empty last frame
  CHECK(flags == NGHTTP2_DATA_FLAG_EOF);
  flags = 0;
  CHECK(NextDataFrame(0, 16, false, &flags) == NGHTTP2_ERR_DEFERRED);
  CHECK(flags == 0);
}

TEST_CASE("a padded DATA frame, or one longer than its payload, is refused") {
  Buffer payload = NewBuffer();
  Buffer output = NewBuffer();
  evbuffer_add(payload.get(), "abc", 3);
  const uint8_t header[9] = {};
  nghttp2_frame frame{};
  frame.data.padlen = 4;  // tandem never asks nghttp2 to pad
  CHECK(SendDataFrame(frame, header, 3, payload.get(), output.get()) ==
        NGHTTP2_ERR_CALLBACK_FAILURE);
  frame.data.padlen = 0;
  CHECK(SendDataFrame(frame, header, 5, payload.get(), output.get()) ==
        NGHTTP2_ERR_CALLBACK_FAILURE);
}

}  // namespace
}  // namespace tandem::net
