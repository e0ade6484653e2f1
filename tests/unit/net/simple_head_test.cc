// HttpParser::TakeSimpleRequestHead against Execute(): on generated request
// heads, plain and not, a head taken without llhttp must leave the parser as
// Execute() leaves it after the same text, and a head not taken must change
// nothing.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "net/http_parser.h"

namespace tandem::net {
namespace {

class Handler : public HttpParser::Handler {
 public:
  // As an HTTP/2 stream: the body waits at the head.
  HttpParser::HeadAction OnHeadComplete(HttpParser& parser) override {
    return parser.framing() == Framing::kNone
               ? HttpParser::HeadAction::kContinue
               : HttpParser::HeadAction::kPause;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}
};

constexpr uint64_t kMaxHead = 600;
constexpr size_t kMaxFields = 8;

struct Parser {
  Handler handler;
  HttpParser parser{HttpParser::Type::kRequest, &handler};
  Parser() {
    parser.set_max_head_bytes(kMaxHead);
    parser.set_max_fields(kMaxFields);
  }
};

HttpParser::Result Run(HttpParser& parser, const std::string& text,
                       size_t* consumed) {
  return parser.Execute(text.data(), text.size(), consumed);
}

// Everything the proxy reads of a request head.
void CheckSame(const HttpParser& a, const HttpParser& b,
               const std::string& text) {
  INFO(text);
  CHECK(a.method() == b.method());
  CHECK(a.method_name() == b.method_name());
  CHECK(a.http_major() == b.http_major());
  CHECK(a.http_minor() == b.http_minor());
  CHECK(a.target() == b.target());
  REQUIRE(a.headers().size() == b.headers().size());
  for (size_t i = 0; i < a.headers().size(); ++i) {
    CHECK(a.headers().name(i) == b.headers().name(i));
    CHECK(a.headers().value(i) == b.headers().value(i));
  }
  CHECK(a.framing() == b.framing());
  CHECK(a.content_length() == b.content_length());
  CHECK(a.transfer_codings() == b.transfer_codings());
  CHECK(a.keep_alive() == b.keep_alive());
  CHECK(a.upgrade() == b.upgrade());
  CHECK(a.in_head() == b.in_head());
  CHECK(a.head_bytes() == b.head_bytes());
  CHECK(a.body_bytes() == b.body_bytes());
  CHECK(a.message_started() == b.message_started());
  CHECK(a.trailers().size() == b.trailers().size());
  CHECK(a.error_status() == b.error_status());
}

const std::vector<std::string> kMethods = {
    "GET",   "GET",     "HEAD", "POST", "PUT", "DELETE", "OPTIONS",  "PATCH",
    "TRACE", "CONNECT", "PRI",  "FOO",  "get", "GET ",   "DESCRIBE", ""};
const std::vector<std::string> kTargets = {"/",
                                           "/",
                                           "/a?b=1&c=%41",
                                           "/x/y.z~_-!$'()*+,;=:@",
                                           "/a b",
                                           "/a#f",
                                           "*",
                                           "http://h.test/",
                                           "/\x01",
                                           "/\xc3\xa9",
                                           "/\"q\"",
                                           "/a<b>",
                                           "",
                                           "a",
                                           "/{x}",
                                           "/a|b",
                                           "/" + std::string(400, 'p')};
const std::vector<std::string> kVersions = {
    " HTTP/1.1", " HTTP/1.1", " HTTP/1.1",  " HTTP/1.1",
    " HTTP/1.0", " HTTP/2.0", "  HTTP/1.1", " HTTP/1.1 "};
const std::vector<std::string> kFields = {
    "accept: */*",
    "user-agent: h2load nghttp2/1.52.0",
    "cookie: a=1; b=2",
    "x-colon: a:b",
    "x-empty: ",
    "x-lead:  v",
    "x-trail: v ",
    "x-tab: a\tb",
    "x-ctl: a\x01"
    "b",
    "x-del: a\x7f"
    "b",
    "x-high: \xc3\xa9",
    "content-length: 0",
    "content-length: 5",
    "transfer-encoding: chunked",
    "connection: close",
    "upgrade: websocket",
    "keep-alive: 5",
    "proxy-connection: keep-alive",
    "expect: 100-continue",
    "cookie: a=1; b=2",
    "bad name: x",
    "x:y",
    "x-colon: a:b",
    ":authority: h.test",
    "host: other.test",
    "host: a b",
    "host: u@h",
    "te: trailers",
    "grpc-timeout: 5S",
    "x-long: " + std::string(300, 'v'),
};

std::string Generate(std::mt19937& random) {
  // Half the heads are built from the first few (plain) choices of each
  // list, so that both outcomes come often.
  const bool plain = random() % 2 == 0;
  auto pick = [&](const std::vector<std::string>& from) -> const std::string& {
    return from[random() % (plain ? 4 : from.size())];
  };
  std::string text = pick(kMethods) + " " + pick(kTargets) + pick(kVersions);
  text += "\r\n";
  if (random() % 8 != 0) text += "host: h.test:8080\r\n";
  const size_t fields = random() % 10;
  for (size_t i = 0; i < fields; ++i) text += pick(kFields) + "\r\n";
  switch (random() % 10) {
    case 0:
      text += "\r\nbody";  // more after the head
      break;
    case 1:
      break;  // no empty line
    default:
      text += "\r\n";
  }
  return text;
}

}  // namespace

TEST_CASE("a simple head taken without llhttp leaves the parser as Execute") {
  std::mt19937 random(20261207);
  int taken = 0;
  int complete_not_taken = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string text = Generate(random);
    Parser fast;
    Parser full;
    size_t used = 0;
    const HttpParser::Result result = Run(full.parser, text, &used);
    if (fast.parser.TakeSimpleRequestHead(text)) {
      ++taken;
      INFO(text);
      REQUIRE(result == HttpParser::Result::kComplete);
      CHECK(used == text.size());
      CheckSame(fast.parser, full.parser, text);
    } else {
      // Nothing changed: Execute() on it answers as on a fresh parser.
      CHECK_FALSE(fast.parser.message_started());
      CHECK(fast.parser.headers().empty());
      CHECK(fast.parser.target().empty());
      size_t fast_used = 0;
      CHECK(Run(fast.parser, text, &fast_used) == result);
      CHECK(fast_used == used);
      CHECK(fast.parser.error_status() == full.parser.error_status());
      if (result == HttpParser::Result::kComplete) ++complete_not_taken;
      continue;
    }
    // Bytes fed before Resume() wait, then the next message is read (as a
    // reused parser would see).
    const std::string next = "GET /next HTTP/1.1\r\nhost: n.test\r\n\r\n";
    size_t fast_used = 0;
    CHECK(Run(fast.parser, next, &fast_used) == Run(full.parser, next, &used));
    CHECK(fast_used == used);
    CheckSame(fast.parser, full.parser, text);
    fast.parser.Resume();
    full.parser.Resume();
    CHECK(Run(fast.parser, next, &fast_used) == Run(full.parser, next, &used));
    CheckSame(fast.parser, full.parser, next);
  }
  // Both sides were exercised.
  CHECK(taken > 500);
  CHECK(complete_not_taken > 100);
}

TEST_CASE("what is taken and what is left to llhttp") {
  auto taken = [](const std::string& text) {
    Parser p;
    return p.parser.TakeSimpleRequestHead(text);
  };
  CHECK(taken("GET / HTTP/1.1\r\nhost: h\r\n\r\n"));
  CHECK(taken("DELETE /a?b HTTP/1.1\r\nhost: h:1\r\naccept: */*\r\n\r\n"));
  CHECK_FALSE(taken("GET / HTTP/1.1\r\n\r\n"));  // no Host: llhttp's 400
  CHECK_FALSE(taken("GET / HTTP/1.1\r\nhost: h\r\nhost: h\r\n\r\n"));
  CHECK_FALSE(taken("CONNECT h:443 HTTP/1.1\r\nhost: h\r\n\r\n"));
  CHECK_FALSE(taken("OPTIONS * HTTP/1.1\r\nhost: h\r\n\r\n"));
  CHECK_FALSE(taken("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"));
  CHECK_FALSE(taken("GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"));
  CHECK_FALSE(taken("GET / HTTP/1.1\r\nhost: h\r\nx: \x01\r\n\r\n"));
  CHECK_FALSE(taken("GET / HTTP/1.1\r\nhost: h\r\n\r\nGET"));  // more follows
  // The limits are Execute()'s to answer (431).
  CHECK_FALSE(taken("GET / HTTP/1.1\r\nhost: h\r\nx: " +
                    std::string(kMaxHead, 'v') + "\r\n\r\n"));
  std::string many = "GET / HTTP/1.1\r\nhost: h\r\n";
  for (size_t i = 0; i < kMaxFields; ++i) many += "x: 1\r\n";
  CHECK_FALSE(taken(many + "\r\n"));
  // A parser in the middle of a message takes nothing.
  Parser p;
  size_t used = 0;
  Run(p.parser, "GET / HT", &used);
  CHECK_FALSE(
      p.parser.TakeSimpleRequestHead("GET / HTTP/1.1\r\nhost: h\r\n\r\n"));
}

}  // namespace tandem::net
