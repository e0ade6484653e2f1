// Unit tests for HTTP/2 messages in and out of the HTTP/1.1 model: the head
// a stream's fields become, its trailers, the response fields, and the
// gRPC answers of tandem's own.
#include "net/h2_message.h"

#include <doctest/doctest.h>

#include <string>

namespace tandem::net {
namespace {

class NullHandler : public HttpParser::Handler {
 public:
  HttpParser::HeadAction OnHeadComplete(HttpParser&) override {
    return HttpParser::HeadAction::kPause;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}
};

std::string Field(const nghttp2_nv& nv) {
  return std::string(reinterpret_cast<const char*>(nv.name), nv.namelen) +
         ": " +
         std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen);
}

std::string Fields(const H2Fields& fields) {
  std::string out;
  for (size_t i = 0; i < fields.size(); ++i)
    out += Field(fields.data()[i]) + "\n";
  return out;
}

H2RequestHead Get() {
  H2RequestHead head(64 * 1024);
  head.Add(":method", "GET");
  head.Add(":scheme", "https");
  head.Add(":authority", "example.test");
  head.Add(":path", "/a?b=1");
  return head;
}

}  // namespace

TEST_CASE("an HTTP/2 request becomes the HTTP/1.1 head the parser reads") {
  H2RequestHead head = Get();
  head.Add("accept", "*/*");
  head.Add("cookie", "a=1");
  head.Add("cookie", "b=2");
  std::string out;
  bool chunked = true;
  REQUIRE(head.Write(true, &out, &chunked));
  CHECK_FALSE(chunked);
  CHECK(out ==
        "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\naccept: */*\r\n"
        "cookie: a=1; b=2\r\n\r\n");
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kRequest, &handler);
  size_t used = 0;
  CHECK(parser.Execute(out.data(), out.size(), &used) ==
        HttpParser::Result::kPausedHead);
  CHECK(used == out.size());
  CHECK(parser.target() == "/a?b=1");
  CHECK(*parser.headers().Find("host") == "example.test");
}

TEST_CASE("a body of unknown length is chunked; a known one keeps its length") {
  H2RequestHead unknown = Get();
  std::string out;
  bool chunked = false;
  REQUIRE(unknown.Write(false, &out, &chunked));
  CHECK(chunked);
  CHECK(out.find("transfer-encoding: chunked\r\n") != std::string::npos);

  H2RequestHead known = Get();
  known.Add("content-length", "5");
  out.clear();
  REQUIRE(known.Write(false, &out, &chunked));
  CHECK_FALSE(chunked);
  CHECK(out.find("transfer-encoding") == std::string::npos);
  CHECK(out.find("content-length: 5\r\n") != std::string::npos);
}

TEST_CASE("Host naming another origin than :authority is refused") {
  H2RequestHead head = Get();
  head.Add("host", "other.test");
  std::string out;
  bool chunked = false;
  CHECK_FALSE(head.Write(true, &out, &chunked));
  CHECK(head.error_status() == 400);

  H2RequestHead same = Get();
  same.Add("host", "example.test");
  CHECK(same.Write(true, &out, &chunked));
  CHECK(out.find("host: example.test\r\nhost") == std::string::npos);
}

TEST_CASE("Host stands in for a missing :authority") {
  H2RequestHead head(1024);
  head.Add(":method", "GET");
  head.Add(":path", "/");
  head.Add("host", "h.test");
  std::string out;
  bool chunked = false;
  REQUIRE(head.Write(true, &out, &chunked));
  CHECK(out == "GET / HTTP/1.1\r\nhost: h.test\r\n\r\n");
}

TEST_CASE("fields past the limit are counted, never kept, and answered 431") {
  H2RequestHead head(1024);
  head.Add(":method", "GET");
  head.Add(":path", "/");
  for (int i = 0; i < 100; ++i) head.Add("x-big", std::string(100, 'a'));
  CHECK(head.too_large());
  std::string out;
  bool chunked = false;
  CHECK_FALSE(head.Write(true, &out, &chunked));
  CHECK(head.error_status() == 431);
  CHECK(out.empty());
}

TEST_CASE("a head started anew keeps nothing of the one before") {
  // One head serves a connection's streams in turn.
  H2RequestHead head(1024);
  head.Add(":method", "POST");
  head.Add(":authority", "a.test");
  head.Add(":path", "/first");
  head.Add("host", "b.test");
  head.Add("cookie", "a=1");
  head.Add("content-length", "3");
  head.Add("content-type", "application/grpc");
  for (int i = 0; i < 20; ++i) head.Add("x-big", std::string(100, 'a'));
  std::string out;
  bool chunked = false;
  CHECK_FALSE(head.Write(false, &out, &chunked));
  CHECK(head.error_status() == 431);
  CHECK(head.grpc());

  head.Start(64 * 1024);
  CHECK_FALSE(head.too_large());
  CHECK_FALSE(head.grpc());
  CHECK(head.error_status() == 0);
  CHECK_FALSE(head.Write(true, &out, &chunked));  // no :method any more
  CHECK(head.error_status() == 400);

  head.Start(64 * 1024);
  head.Add(":method", "GET");
  head.Add(":authority", "c.test");
  head.Add(":path", "/second");
  out.clear();
  REQUIRE(head.Write(false, &out, &chunked));
  CHECK(chunked);  // the content-length before is gone
  CHECK(out ==
        "GET /second HTTP/1.1\r\nhost: c.test\r\n"
        "transfer-encoding: chunked\r\n\r\n");
}

TEST_CASE("CONNECT has an authority form; gRPC is recognised") {
  H2RequestHead head(1024);
  head.Add(":method", "CONNECT");
  head.Add(":authority", "example.test:443");
  std::string out;
  bool chunked = false;
  REQUIRE(head.Write(false, &out, &chunked));
  CHECK(out.rfind("CONNECT example.test:443 HTTP/1.1\r\n", 0) == 0);

  H2RequestHead grpc = Get();
  CHECK_FALSE(grpc.grpc());
  grpc.Add("content-type", "application/grpc+proto");
  CHECK(grpc.grpc());
}

TEST_CASE("request trailers leave out framing and routing fields") {
  H2RequestTrailers trailers(1024);
  trailers.Add("x-checksum", "abc");
  trailers.Add("content-length", "3");
  trailers.Add("host", "evil.test");
  std::string out;
  trailers.Write(&out);
  CHECK(out == "0\r\nx-checksum: abc\r\n\r\n");
  H2RequestTrailers big(64);
  big.Add("x", std::string(100, 'a'));
  CHECK(big.too_large());
}

TEST_CASE("response fields: hop-by-hop gone, names lowercase, length kept") {
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kResponse, &handler);
  const std::string text =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: x-hop\r\n"
      "X-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\n";
  size_t used = 0;
  REQUIRE(parser.Execute(text.data(), text.size(), &used) ==
          HttpParser::Result::kPausedHead);
  H2Fields fields;
  fields.Build(parser, false);
  CHECK(Fields(fields) ==
        ":status: 200\ncontent-type: text/plain\ncontent-length: 3\n");
}

TEST_CASE("a chunked response has no content-length in HTTP/2") {
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kResponse, &handler);
  const std::string text =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n";
  size_t used = 0;
  REQUIRE(parser.Execute(text.data(), text.size(), &used) ==
          HttpParser::Result::kPausedHead);
  H2Fields fields;
  fields.Build(parser, false);
  CHECK(Fields(fields) == ":status: 200\nx-a: b\n");
}

TEST_CASE("tandem's own answers, plain and gRPC") {
  H2Fields fields;
  fields.BuildLocal(503, "text/plain; charset=utf-8", 42, "Retry-After: 1\r\n");
  CHECK(Fields(fields) ==
        ":status: 503\ncontent-type: text/plain; charset=utf-8\n"
        "content-length: 42\nretry-after: 1\n");
  fields.BuildGrpcStatus(14, "no backend: 100%\n");
  CHECK(Fields(fields) ==
        ":status: 200\ncontent-type: application/grpc\ngrpc-status: 14\n"
        "grpc-message: no backend: 100%25%0A\n");
  CHECK(GrpcStatusFor(503, false) == 14);
  CHECK(GrpcStatusFor(503, true) == 8);
  CHECK(GrpcStatusFor(429, false) == 8);
  CHECK(GrpcStatusFor(504, false) == 4);
  CHECK(GrpcStatusFor(502, false) == 14);
  CHECK(GrpcStatusFor(431, false) == 3);
  CHECK(GrpcStatusFor(500, false) == 13);
}

TEST_CASE("grpc-timeout: parsed with its unit, forwarded in milliseconds") {
  using namespace std::chrono;
  CHECK(ParseGrpcTimeout("100m") == milliseconds(100));
  CHECK(ParseGrpcTimeout("5S") == seconds(5));
  CHECK(ParseGrpcTimeout("2H") == hours(2));
  CHECK(ParseGrpcTimeout("1M") == minutes(1));
  CHECK(ParseGrpcTimeout("7u") == microseconds(7));
  CHECK(ParseGrpcTimeout("9n") == nanoseconds(9));
  CHECK_FALSE(ParseGrpcTimeout("100").has_value());
  CHECK_FALSE(ParseGrpcTimeout("m").has_value());
  CHECK_FALSE(ParseGrpcTimeout("123456789m").has_value());  // 9 digits
  CHECK_FALSE(ParseGrpcTimeout("-1S").has_value());
  CHECK_FALSE(ParseGrpcTimeout("1x").has_value());
  CHECK(FormatGrpcTimeout(milliseconds(250)) == "250m");
  CHECK(FormatGrpcTimeout(microseconds(1)) == "1m");
  CHECK(FormatGrpcTimeout(hours(100000)) == "99999999m");
}

}  // namespace tandem::net
