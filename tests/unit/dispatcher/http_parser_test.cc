// Unit tests for HTTP/1.x message framing: what the parser accepts, rejects
// (with which status) and how it delimits bodies, fed whole or byte by byte.
#include "dispatcher/http_parser.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace tandem::dispatcher {
namespace {

// Collects what a parser reports; pauses requests at the head like the proxy.
class Recorder : public HttpParser::Handler {
 public:
  HttpParser::HeadAction OnHeadComplete(HttpParser& parser) override {
    ++heads;
    if (parser.status_code() != 0 && skip_body)
      return HttpParser::HeadAction::kSkipBody;
    return pause_at_head && parser.framing() != Framing::kNone
               ? HttpParser::HeadAction::kPause
               : HttpParser::HeadAction::kContinue;
  }
  void OnBody(HttpParser&, const char* data, size_t length) override {
    body.append(data, length);
  }
  void OnMessageComplete(HttpParser&) override { ++messages; }

  bool pause_at_head = false;
  bool skip_body = false;
  int heads = 0;
  int messages = 0;
  std::string body;
};

struct Outcome {
  HttpParser::Result result;
  int status = 0;
  std::string reason;
  size_t consumed = 0;
};

// Feeds `input` `step` bytes at a time (0: all at once), resuming after each
// completed message, and returns the last result.
Outcome Feed(HttpParser& parser, const std::string& input, size_t step = 0) {
  Outcome outcome{HttpParser::Result::kNeedMore, 0, {}, 0};
  size_t pos = 0;
  while (pos < input.size()) {
    size_t n =
        step == 0 ? input.size() - pos : std::min(step, input.size() - pos);
    size_t used = 0;
    outcome.result = parser.Execute(input.data() + pos, n, &used);
    pos += used;
    outcome.consumed = pos;
    if (outcome.result == HttpParser::Result::kError) {
      outcome.status = parser.error_status();
      outcome.reason = std::string(parser.error_reason());
      return outcome;
    }
    if (outcome.result == HttpParser::Result::kComplete ||
        outcome.result == HttpParser::Result::kPausedHead) {
      parser.Resume();
    } else if (outcome.result == HttpParser::Result::kUpgrade) {
      return outcome;
    }
  }
  return outcome;
}

int RequestStatus(const std::string& input, size_t step = 0) {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  parser.set_max_head_bytes(1024);
  parser.set_max_body_bytes(100);
  Outcome outcome = Feed(parser, input, step);
  return outcome.result == HttpParser::Result::kError ? outcome.status : 0;
}

}  // namespace

TEST_CASE("a simple GET is one message with its head fields") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  std::string input =
      "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Thing:  v  \r\n\r\n";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kComplete);
  CHECK(used == input.size());
  CHECK(parser.method_name() == "GET");
  CHECK(parser.target() == "/a?b=1");
  CHECK(parser.http_minor() == 1);
  CHECK(parser.framing() == Framing::kNone);
  CHECK(parser.headers().Find("host") == "example.com");
  CHECK(parser.headers().Find("X-THING") == "v");  // OWS trimmed both sides
  CHECK(parser.keep_alive());
}

TEST_CASE("every byte boundary gives the same head and body") {
  const std::string input =
      "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
      "chunked\r\nX-Long: "
      "abcdefghij\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nChecksum: "
      "42\r\n\r\n";
  for (size_t step : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{0}}) {
    CAPTURE(step);
    Recorder recorder;
    HttpParser parser(HttpParser::Type::kRequest, &recorder);
    Outcome outcome = Feed(parser, input, step);
    CHECK(outcome.result == HttpParser::Result::kComplete);
    CHECK(recorder.body == "hello world");
    CHECK(parser.headers().Find("x-long") == "abcdefghij");
    CHECK(parser.trailers().Find("checksum") == "42");
    CHECK(recorder.messages == 1);
  }
}

TEST_CASE("a request with a body pauses after the head") {
  Recorder recorder;
  recorder.pause_at_head = true;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  std::string input =
      "PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kPausedHead);
  CHECK(input.substr(used) == "abc");  // the body is left for later
  CHECK(parser.framing() == Framing::kContentLength);
  CHECK(parser.content_length() == 3);
  parser.Resume();
  size_t more = 0;
  CHECK(parser.Execute(input.data() + used, input.size() - used, &more) ==
        HttpParser::Result::kComplete);
  CHECK(recorder.body == "abc");
}

TEST_CASE("pipelined requests stop one message at a time") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  std::string input =
      "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kComplete);
  CHECK(parser.target() == "/1");
  CHECK(input.substr(used).rfind("GET /2", 0) == 0);
  parser.Resume();
  size_t more = 0;
  CHECK(parser.Execute(input.data() + used, input.size() - used, &more) ==
        HttpParser::Result::kComplete);
  CHECK(parser.target() == "/2");
}

TEST_CASE("HTTP/1.0 keeps the connection only when asked") {
  // A connection that is not kept ends with its message: each case gets a
  // parser of its own.
  auto keep_alive = [](const std::string& input) {
    Recorder recorder;
    HttpParser parser(HttpParser::Type::kRequest, &recorder);
    size_t used = 0;
    REQUIRE(parser.Execute(input.data(), input.size(), &used) ==
            HttpParser::Result::kComplete);
    return parser.keep_alive();
  };
  CHECK_FALSE(keep_alive("GET / HTTP/1.0\r\n\r\n"));
  CHECK(keep_alive("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  CHECK(keep_alive("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  CHECK_FALSE(
      keep_alive("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
}

TEST_CASE("ambiguous framing is refused with 400") {
  const char* cases[] = {
      // Content-Length with Transfer-Encoding, either order.
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: "
      "chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
      "chunked\r\nContent-Length: 3\r\n\r\n",
      // Differing duplicate Content-Length.
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: "
      "4\r\n\r\nabcd",
      // A list in Content-Length.
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
      // Last coding not chunked.
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
      // Invalid chunk sizes.
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
      "chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
      "chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "FFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
      // Chunk data not followed by CRLF.
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
      "chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
      // Transfer-Encoding from an HTTP/1.0 client.
      "POST / HTTP/1.0\r\nTransfer-Encoding: "
      "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
  };
  for (std::string input : cases) {
    CAPTURE(input);
    CHECK(RequestStatus(input) == 400);
    CHECK(RequestStatus(input, 1) == 400);
  }
}

TEST_CASE("identical duplicate Content-Length fields collapse to one") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  std::string input =
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: "
      "3\r\n\r\nabc";
  Outcome outcome = Feed(parser, input, 1);
  CHECK(outcome.result == HttpParser::Result::kComplete);
  CHECK(parser.framing() == Framing::kContentLength);
  CHECK(parser.content_length() == 3);
  CHECK(recorder.body == "abc");
}

TEST_CASE("field syntax errors are refused with 400") {
  const char* cases[] = {
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",   // obs-fold
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",  // obs-fold with a
                                                           // tab
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",      // bare CR in a value
      "GET / HTTP/1.1\r\nHost: h\r\n\rX\r\n\r\n",    // bare CR at a line start
      "GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",  // space before the colon
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n",  // control character
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fz\r\n\r\n",  // DEL
      "GET / HTTP/1.1\r\nHo st: h\r\n\r\n",              // space in a name
      "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",  // space after the version
      "GET / FOO/1.1\r\nHost: h\r\n\r\n",    // not HTTP
      "GET / HTTP/1.1\r\n\r\n",              // no Host in 1.1
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",    // repeated Host
      "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",             // invalid Host
      "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",          // userinfo in Host
      "GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",  // userinfo in the
                                                         // target
      "GET nothing HTTP/1.1\r\nHost: a\r\n\r\n",         // not a target form
      "GET * HTTP/1.1\r\nHost: a\r\n\r\n",               // * only for OPTIONS
      "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",        // empty field name
  };
  for (std::string input : cases) {
    CAPTURE(input);
    CHECK(RequestStatus(input) == 400);
    CHECK(RequestStatus(input, 1) == 400);
  }
  // NUL cannot live in a C string literal: build it.
  std::string nul = "GET / HTTP/1.1\r\nHost: h\r\nX: a";
  nul.push_back('\0');
  nul += "b\r\n\r\n";
  CHECK(RequestStatus(nul) == 400);
  CHECK(RequestStatus(nul, 1) == 400);
}

TEST_CASE("a value split across reads is not mistaken for obs-fold") {
  std::string input =
      "GET / HTTP/1.1\r\nHost: h\r\nX-Long: aaaa bbbb cccc\r\n\r\n";
  for (size_t step = 1; step < input.size(); ++step) {
    CAPTURE(step);
    CHECK(RequestStatus(input, step) == 0);
  }
}

TEST_CASE("limits answer 413, 414 and 431") {
  std::string long_target =
      "GET /" + std::string(2000, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n";
  CHECK(RequestStatus(long_target) == 414);
  CHECK(RequestStatus(long_target, 100) == 414);
  std::string big_head = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 50; ++i)
    big_head += "X-Field-" + std::to_string(i) +
                ": 0123456789012345678901234567890\r\n";
  big_head += "\r\n";
  CHECK(RequestStatus(big_head) == 431);
  CHECK(RequestStatus(big_head, 13) == 431);
  // Whitespace llhttp skips without a callback still counts.
  std::string padded =
      "GET / HTTP/1.1\r\nHost: h\r\nX:" + std::string(3000, ' ') + "a\r\n\r\n";
  CHECK(RequestStatus(padded) == 431);
  CHECK(RequestStatus(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n") ==
        413);
  std::string chunked =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  chunked += "40\r\n" + std::string(64, 'x') + "\r\n40\r\n" +
             std::string(64, 'x') + "\r\n0\r\n\r\n";
  CHECK(RequestStatus(chunked) == 413);
}

TEST_CASE(
    "unknown transfer codings answer 501 and versions other than 1.x 505") {
  CHECK(RequestStatus("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: foo, "
                      "chunked\r\n\r\n") == 501);
  CHECK(RequestStatus("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 505);
  CHECK(RequestStatus("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n") == 501);
}

TEST_CASE("known codings before chunked are kept to forward") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  Outcome outcome = Feed(parser,
                         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
                         "gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK(outcome.result == HttpParser::Result::kComplete);
  CHECK(parser.framing() == Framing::kChunked);
  CHECK(parser.transfer_codings() == "gzip");
}

TEST_CASE("an upgrade request stops where the new protocol begins") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kRequest, &recorder);
  std::string input =
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: "
      "websocket\r\n\r\nRAW";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kUpgrade);
  CHECK(parser.upgrade());
  CHECK(input.substr(used) == "RAW");
}

TEST_CASE("responses without a body: 204, 304, 1xx and replies to HEAD") {
  {
    Recorder recorder;
    HttpParser parser(HttpParser::Type::kResponse, &recorder);
    // A 204 that claims a length has no body anyway; the next response follows.
    std::string input =
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 "
        "OK\r\n";
    size_t used = 0;
    CHECK(parser.Execute(input.data(), input.size(), &used) ==
          HttpParser::Result::kComplete);
    CHECK(input.substr(used) == "HTTP/1.1 200 OK\r\n");
    CHECK(recorder.body.empty());
  }
  {
    Recorder recorder;
    recorder.skip_body = true;  // the request was HEAD
    HttpParser parser(HttpParser::Type::kResponse, &recorder);
    std::string input = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    size_t used = 0;
    CHECK(parser.Execute(input.data(), input.size(), &used) ==
          HttpParser::Result::kComplete);
    CHECK(parser.content_length() == 5);
  }
  {
    Recorder recorder;
    HttpParser parser(HttpParser::Type::kResponse, &recorder);
    std::string input =
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 "
        "OK\r\nContent-Length: 2\r\n\r\nok";
    size_t used = 0;
    CHECK(parser.Execute(input.data(), input.size(), &used) ==
          HttpParser::Result::kComplete);
    CHECK(recorder.heads == 2);
    CHECK(parser.status_code() == 200);
    CHECK(recorder.body == "ok");
  }
}

TEST_CASE("a close-delimited response ends cleanly at EOF") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kResponse, &recorder);
  std::string input = "HTTP/1.1 200 OK\r\n\r\npartial";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kNeedMore);
  CHECK(parser.framing() == Framing::kUntilClose);
  CHECK(parser.FinishAtEof());
  CHECK(recorder.messages == 1);
  CHECK(recorder.body == "partial");
}

TEST_CASE("a content-length response cut short does not finish at EOF") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kResponse, &recorder);
  std::string input = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kNeedMore);
  CHECK_FALSE(parser.FinishAtEof());
  CHECK(recorder.messages == 0);
}

TEST_CASE("an invalid response is a 502") {
  Recorder recorder;
  HttpParser parser(HttpParser::Type::kResponse, &recorder);
  std::string input = "HTTP/1.1 abc OK\r\n\r\n";
  size_t used = 0;
  CHECK(parser.Execute(input.data(), input.size(), &used) ==
        HttpParser::Result::kError);
  CHECK(parser.error_status() == 502);
}

TEST_CASE("HasToken matches comma-separated tokens case-insensitively") {
  CHECK(HasToken("keep-alive, Upgrade", "upgrade"));
  CHECK(HasToken(" close ", "close"));
  CHECK_FALSE(HasToken("closed", "close"));
  CHECK_FALSE(HasToken("", "close"));
}

}  // namespace tandem::dispatcher
