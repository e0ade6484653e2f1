// Unit tests for the heads tandem writes: hop-by-hop removal, forwarding
// fields, framing, and tandem's own short answers.
#include "net/http_message.h"

#include <doctest/doctest.h>

#include <string>

namespace tandem::net {
namespace {

class NullHandler : public HttpParser::Handler {
 public:
  HttpParser::HeadAction OnHeadComplete(HttpParser&) override {
    return head ? HttpParser::HeadAction::kSkipBody
                : HttpParser::HeadAction::kPause;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}
  bool head = false;
};

// Parses a request head and returns what tandem would send a backend.
std::string Forward(const std::string& request, bool tls = false) {
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kRequest, &handler);
  size_t used = 0;
  HttpParser::Result result =
      parser.Execute(request.data(), request.size(), &used);
  REQUIRE((result == HttpParser::Result::kComplete ||
           result == HttpParser::Result::kPausedHead ||
           result == HttpParser::Result::kUpgrade));
  RequestForwarding forwarding;
  forwarding.client_ip = "192.0.2.7";
  forwarding.client_tls = tls;
  forwarding.upgrade = WantsUpgrade(parser);
  std::string out;
  AppendRequestHead(parser, forwarding, &out);
  return out;
}

struct ParsedResponse {
  NullHandler handler;
  HttpParser parser{HttpParser::Type::kResponse, &handler};
};

void ParseResponse(const std::string& response, ParsedResponse* parsed,
                   bool head = false) {
  parsed->handler.head = head;
  size_t used = 0;
  parsed->parser.Execute(response.data(), response.size(), &used);
}

}  // namespace

TEST_CASE("a forwarded request is HTTP/1.1 with forwarding fields") {
  std::string out =
      Forward("GET /p?q HTTP/1.0\r\nHost: svc\r\nAccept: */*\r\n\r\n");
  CHECK(out ==
        "GET /p?q HTTP/1.1\r\n"
        "Host: svc\r\n"
        "Accept: */*\r\n"
        "X-Forwarded-For: 192.0.2.7\r\n"
        "Forwarded: for=192.0.2.7;proto=http\r\n"
        "X-Forwarded-Proto: http\r\n"
        "\r\n");
}

TEST_CASE(
    "an HTTP/1.0 request without Host gets the backend's address as Host") {
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kRequest, &handler);
  std::string request = "GET / HTTP/1.0\r\n\r\n";
  size_t used = 0;
  parser.Execute(request.data(), request.size(), &used);
  RequestForwarding forwarding;
  forwarding.client_ip = "192.0.2.7";
  forwarding.default_host = "10.0.0.5:9000";
  std::string out;
  AppendRequestHead(parser, forwarding, &out);
  CHECK(out.rfind("GET / HTTP/1.1\r\nHost: 10.0.0.5:9000\r\n", 0) == 0);
}

TEST_CASE("hop-by-hop fields and those named in Connection are removed") {
  std::string out = Forward(
      "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, "
      "X-Secret\r\nKeep-Alive: 5\r\n"
      "Proxy-Connection: keep-alive\r\nTE: gzip\r\nX-Secret: 1\r\nUpgrade: "
      "foo\r\n"
      "X-Kept: yes\r\n\r\n");
  CHECK(out.find("Connection") == std::string::npos);
  CHECK(out.find("Keep-Alive") == std::string::npos);
  CHECK(out.find("TE:") == std::string::npos);
  CHECK(out.find("X-Secret") == std::string::npos);
  CHECK(out.find("Upgrade") == std::string::npos);
  CHECK(out.find("X-Kept: yes\r\n") != std::string::npos);
}

TEST_CASE(
    "removing the fields Connection names is linear in the number of fields") {
  // 12,000 fields of four bytes fit a 64 KiB head; each used to rescan all
  // the fields for Connection (0.33 s for one request).
  const int kFields = 12000;
  std::string fields;
  for (int i = 0; i < kFields; ++i) fields += "a: b\r\n";
  std::string connection =
      "Connection: keep-alive, X-One, x-two, X-Three, a, A, X-Absent\r\n";
  const uint64_t kListed = 7;
  NullHandler handler;
  HttpParser request(HttpParser::Type::kRequest, &handler);
  request.set_max_fields(kFields + 10);
  request.set_max_head_bytes(1 << 20);
  std::string input = "GET / HTTP/1.1\r\nHost: h\r\nX-One: 1\r\n" + fields +
                      connection + "X-Two: 2\r\nX-Kept: k\r\n\r\n";
  size_t used = 0;
  REQUIRE(request.Execute(input.data(), input.size(), &used) ==
          HttpParser::Result::kPausedHead);
  RequestForwarding forwarding;
  forwarding.client_ip = "192.0.2.7";
  HeadWriteStats request_stats;
  std::string out;
  AppendRequestHead(request, forwarding, &out, &request_stats);
  CHECK(out.find("a: b") == std::string::npos);
  CHECK(out.find("X-One") == std::string::npos);
  CHECK(out.find("X-Two") == std::string::npos);
  CHECK(out.find("X-Kept: k\r\n") != std::string::npos);
  const uint64_t kBound = 2 * (kFields + 5 + kListed);
  CHECK(request_stats.name_comparisons <= kBound);

  HttpParser response(HttpParser::Type::kResponse, &handler);
  response.set_max_fields(kFields + 10);
  response.set_max_head_bytes(1 << 20);
  input = "HTTP/1.1 200 OK\r\nX-One: 1\r\n" + fields + connection +
          "Content-Length: 0\r\nX-Kept: k\r\n\r\n";
  response.Execute(input.data(), input.size(), &used);
  REQUIRE(response.status_code() == 200);
  HeadWriteStats response_stats;
  out.clear();
  AppendResponseHead(response, PlanResponse(response, false, 1, true), 1, false,
                     &out, &response_stats);
  CHECK(out == "HTTP/1.1 200 OK\r\nX-Kept: k\r\nContent-Length: 0\r\n\r\n");
  CHECK(response_stats.name_comparisons <= kBound);
}

TEST_CASE("TE: trailers is the one TE value forwarded") {
  std::string out =
      Forward("GET / HTTP/1.1\r\nHost: h\r\nTE: trailers, deflate\r\n\r\n");
  CHECK(out.find("TE: trailers\r\n") != std::string::npos);
  CHECK(out.find("deflate") == std::string::npos);
}

TEST_CASE(
    "X-Forwarded-For is appended to, X-Forwarded-Proto replaced, Forwarded "
    "extended") {
  std::string out = Forward(
      "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: "
      "10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
      "X-Forwarded-Proto: https\r\nForwarded: for=10.0.0.1\r\n\r\n",
      false);
  CHECK(out.find("X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n") !=
        std::string::npos);
  CHECK(out.find("X-Forwarded-Proto: http\r\n") != std::string::npos);
  CHECK(out.find("https") == std::string::npos);
  CHECK(out.find("Forwarded: for=10.0.0.1, for=192.0.2.7;proto=http\r\n") !=
        std::string::npos);
  std::string tls = Forward("GET / HTTP/1.1\r\nHost: h\r\n\r\n", true);
  CHECK(tls.find("X-Forwarded-Proto: https\r\n") != std::string::npos);
}

TEST_CASE("an IPv6 client is quoted in Forwarded") {
  NullHandler handler;
  HttpParser parser(HttpParser::Type::kRequest, &handler);
  std::string request = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t used = 0;
  parser.Execute(request.data(), request.size(), &used);
  RequestForwarding forwarding;
  forwarding.client_ip = "2001:db8::1";
  std::string out;
  AppendRequestHead(parser, forwarding, &out);
  CHECK(out.find("Forwarded: for=\"[2001:db8::1]\";proto=http\r\n") !=
        std::string::npos);
}

TEST_CASE(
    "an absolute-form target is sent in origin-form with Host from its "
    "authority") {
  std::string out = Forward(
      "GET http://api.example:8080/v1?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
  CHECK(out.rfind("GET /v1?x=1 HTTP/1.1\r\nHost: api.example:8080\r\n", 0) ==
        0);
  CHECK(out.find("other") == std::string::npos);
  std::string bare =
      Forward("GET http://api.example HTTP/1.1\r\nHost: api.example\r\n\r\n");
  CHECK(bare.rfind("GET / HTTP/1.1\r\n", 0) == 0);
}

TEST_CASE("an absolute-form target with a query and no path gets the path /") {
  std::string out =
      Forward("GET http://example.com?x HTTP/1.1\r\nHost: example.com\r\n\r\n");
  CHECK(out.rfind("GET /?x HTTP/1.1\r\nHost: example.com\r\n", 0) == 0);
  out = Forward(
      "GET https://example.com:8443?a=1&b=2 HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(out.rfind("GET /?a=1&b=2 HTTP/1.1\r\nHost: example.com:8443\r\n", 0) ==
        0);
  out = Forward("GET http://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(out.rfind("GET / HTTP/1.1\r\n", 0) == 0);
}

TEST_CASE("request framing is rewritten by tandem") {
  std::string length = Forward(
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: "
      "5\r\n\r\nhello");
  CHECK(length.find("Content-Length: 5\r\n") != std::string::npos);
  CHECK(length.find("Content-Length: 5\r\nContent-Length") ==
        std::string::npos);
  std::string chunked = Forward(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
  CHECK(chunked.find("Transfer-Encoding: gzip, chunked\r\n") !=
        std::string::npos);
}

TEST_CASE("Expect is answered by tandem, never forwarded") {
  std::string out = Forward(
      "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: "
      "1\r\n\r\n");
  CHECK(out.find("Expect") == std::string::npos);
}

TEST_CASE("an upgrade is forwarded, h2c never") {
  std::string ws = Forward(
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: "
      "websocket\r\n\r\n");
  CHECK(ws.find("Connection: upgrade\r\nUpgrade: websocket\r\n") !=
        std::string::npos);
  std::string h2c = Forward(
      "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, "
      "HTTP2-Settings\r\nUpgrade: h2c\r\n"
      "HTTP2-Settings: AAA\r\n\r\n");
  CHECK(h2c.find("Upgrade") == std::string::npos);
  CHECK(h2c.find("HTTP2-Settings") == std::string::npos);
}

TEST_CASE("idempotent methods are the RFC 9110 ones") {
  NullHandler handler;
  for (auto [request, idempotent] :
       {std::pair{"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
        std::pair{"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", true},
        std::pair{"POST / HTTP/1.1\r\nHost: h\r\n\r\n", false},
        std::pair{"PATCH / HTTP/1.1\r\nHost: h\r\n\r\n", false}}) {
    HttpParser parser(HttpParser::Type::kRequest, &handler);
    std::string input = request;
    size_t used = 0;
    parser.Execute(input.data(), input.size(), &used);
    CHECK(IsIdempotent(parser) == idempotent);
  }
}

TEST_CASE(
    "a chunked response goes chunked to HTTP/1.1 and close-delimited to "
    "HTTP/1.0") {
  ParsedResponse parsed;
  ParseResponse(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
      &parsed);
  ResponsePlan plan11 = PlanResponse(parsed.parser, false, 1, true);
  CHECK(plan11.framing == Framing::kChunked);
  CHECK_FALSE(plan11.close);
  std::string head;
  AppendResponseHead(parsed.parser, plan11, 1, false, &head);
  CHECK(head ==
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n");

  ResponsePlan plan10 = PlanResponse(parsed.parser, false, 0, true);
  CHECK(plan10.framing == Framing::kUntilClose);
  CHECK(plan10.close);
  head.clear();
  AppendResponseHead(parsed.parser, plan10, 0, false, &head);
  CHECK(head == "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n");
}

TEST_CASE(
    "a response whose last coding is not chunked keeps its codings in order "
    "and is delimited by close") {
  ParsedResponse parsed;
  ParseResponse(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nX-A: 1\r\n\r\n",
      &parsed);
  for (int client_minor : {1, 0}) {
    CAPTURE(client_minor);
    ResponsePlan plan = PlanResponse(parsed.parser, false, client_minor, true);
    CHECK(plan.framing == Framing::kUntilClose);
    CHECK(plan.close);
    std::string head;
    AppendResponseHead(parsed.parser, plan, client_minor, false, &head);
    CHECK(head ==
          "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked, "
          "gzip\r\nConnection: close\r\n\r\n");
  }
}

TEST_CASE("a kept HTTP/1.0 client is told keep-alive") {
  ParsedResponse parsed;
  ParseResponse(
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
      &parsed);
  ResponsePlan plan = PlanResponse(parsed.parser, false, 0, true);
  std::string head;
  AppendResponseHead(parsed.parser, plan, 0, false, &head);
  CHECK(
      head ==
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
}

TEST_CASE("hop-by-hop response fields are removed") {
  ParsedResponse parsed;
  ParseResponse(
      "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: "
      "timeout=5\r\n"
      "Content-Length: 0\r\nServer: w\r\n\r\n",
      &parsed);
  std::string head;
  AppendResponseHead(parsed.parser, PlanResponse(parsed.parser, false, 1, true),
                     1, false, &head);
  CHECK(head == "HTTP/1.1 200 OK\r\nServer: w\r\nContent-Length: 0\r\n\r\n");
}

TEST_CASE("HEAD and 304 responses keep their Content-Length and send no body") {
  ParsedResponse parsed;
  ParseResponse("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", &parsed,
                true);
  ResponsePlan plan = PlanResponse(parsed.parser, true, 1, true);
  CHECK(plan.framing == Framing::kNone);
  std::string head;
  AppendResponseHead(parsed.parser, plan, 1, true, &head);
  CHECK(head == "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");

  ParsedResponse not_modified;
  ParseResponse("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
                &not_modified);
  head.clear();
  AppendResponseHead(not_modified.parser,
                     PlanResponse(not_modified.parser, false, 1, true), 1,
                     false, &head);
  CHECK(head == "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n");
}

TEST_CASE("a 101 keeps Upgrade and says Connection: upgrade") {
  ParsedResponse parsed;
  ParseResponse(
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
      "websocket\r\n"
      "Sec-WebSocket-Accept: abc\r\n\r\n",
      &parsed);
  std::string head;
  AppendResponseHead(parsed.parser, ResponsePlan{}, 1, false, &head);
  CHECK(head ==
        "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
        "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
}

TEST_CASE("tandem's own answers have an exact Content-Length") {
  std::string out;
  AppendSimpleResponse(502, "connection to backend failed", true, 1, &out);
  size_t split = out.find("\r\n\r\n");
  REQUIRE(split != std::string::npos);
  std::string body = out.substr(split + 4);
  CHECK(body == "502 Bad Gateway: connection to backend failed\n");
  CHECK(out.find("Content-Length: " + std::to_string(body.size()) + "\r\n") !=
        std::string::npos);
  CHECK(out.find("Connection: close\r\n") != std::string::npos);
  out.clear();
  AppendSimpleResponse(503, "", false, 1, "Retry-After: 1\r\n", &out);
  CHECK(out.find("Retry-After: 1\r\n") != std::string::npos);
  CHECK(out.substr(out.find("\r\n\r\n") + 4) == "503 Service Unavailable\n");
}

TEST_CASE("chunk framing and trailers") {
  std::string out;
  AppendChunkHeader(0x1a2b, &out);
  CHECK(out == "1a2b\r\n");
  HeaderList trailers;
  trailers.Add("Checksum", "42");
  trailers.Add("Content-Length", "9");  // not allowed in a trailer: dropped
  out.clear();
  AppendLastChunk(trailers, &out);
  CHECK(out == "0\r\nChecksum: 42\r\n\r\n");
}

}  // namespace tandem::net
