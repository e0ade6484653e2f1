// Tests of the active check: a Prober on the test's event loop against small
// scripted servers on 127.0.0.1 ephemeral ports, each on a thread of its own.
#include "health/probe.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/health/test_loop.h"

namespace tandem::health {
namespace {

using std::chrono::milliseconds;
using Failure = ProbeResult::Failure;

// Every wait in these tests ends by itself after this long.
constexpr int kBoundMs = 10'000;

conf::SocketAddress Loopback(uint16_t port) {
  conf::SocketAddress address;
  auto* in = reinterpret_cast<sockaddr_in*>(&address.storage);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.length = sizeof(sockaddr_in);
  address.host = "127.0.0.1";
  address.text = "127.0.0.1:" + std::to_string(port);
  return address;
}

// A socket listening on 127.0.0.1 on a port the kernel chose.
int ListenOnLoopback(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  conf::SocketAddress address = Loopback(0);
  REQUIRE(bind(fd, address.sa(), address.length) == 0);
  REQUIRE(listen(fd, 16) == 0);
  sockaddr_in bound{};
  socklen_t length = sizeof(bound);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) == 0);
  *port = ntohs(bound.sin_port);
  return fd;
}

// A port nothing listens on: bound once, then released.
uint16_t ClosedPort() {
  uint16_t port = 0;
  int fd = ListenOnLoopback(&port);
  close(fd);
  return port;
}

// Serves `connections` connections one after the other: reads each request
// head, then answers per the script. Stops early when destroyed.
class TestServer {
 public:
  enum class Ending {
    kClose,   // send the response, then close cleanly
    kReset,   // send the response, then reset the connection
    kSilent,  // send nothing; wait for the client to close
  };

  explicit TestServer(std::string response, Ending ending = Ending::kClose,
                      int connections = 1)
      : response_(std::move(response)), ending_(ending) {
    signal(SIGPIPE, SIG_IGN);  // as tandem runs
    listen_fd_ = ListenOnLoopback(&port_);
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    REQUIRE(stop_fd_ >= 0);
    thread_ = std::thread([this, connections] {
      for (int i = 0; i < connections; ++i) {
        if (!Serve()) break;
      }
    });
  }

  ~TestServer() {
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof(one));
    thread_.join();
    close(listen_fd_);
    close(stop_fd_);
  }

  uint16_t port() const { return port_; }
  conf::SocketAddress address() const { return Loopback(port_); }

  // The request heads received so far, in order.
  std::vector<std::string> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  // Waits for `fd` to become readable; false when stopped or out of time.
  bool WaitReadable(int fd) const {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, kBoundMs) <= 0) return false;
    return (fds[1].revents & POLLIN) == 0;
  }

  bool Serve() {
    if (!WaitReadable(listen_fd_)) return false;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return false;
    std::string request;
    char buffer[4096];
    while (request.find("\r\n\r\n") == std::string::npos && WaitReadable(fd)) {
      ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      request.append(buffer, static_cast<size_t>(n));
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_.push_back(request);
    }
    if (ending_ != Ending::kSilent) {
      size_t sent = 0;
      while (sent < response_.size()) {
        ssize_t n = send(fd, response_.data() + sent, response_.size() - sent,
                         MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<size_t>(n);
      }
    }
    if (ending_ == Ending::kReset) {
      linger reset{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    } else {
      if (ending_ == Ending::kClose) shutdown(fd, SHUT_WR);
      // Until the client closes, so that closing here sends no reset.
      while (WaitReadable(fd) && recv(fd, buffer, sizeof(buffer), 0) > 0) {
      }
    }
    close(fd);
    return true;
  }

  std::string response_;
  Ending ending_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  mutable std::mutex mutex_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

using testing::Loop;

conf::HealthCheck HttpCheck() {
  conf::HealthCheck check;
  check.kind = conf::HealthCheck::Kind::kHttp;
  check.timeout = std::chrono::seconds(5);
  return check;
}

conf::HealthCheck TcpCheck() {
  conf::HealthCheck check;
  check.kind = conf::HealthCheck::Kind::kTcp;
  check.timeout = std::chrono::seconds(5);
  return check;
}

// Runs one probe to completion and returns its result.
ProbeResult Probe(const conf::HealthCheck& check,
                  const conf::SocketAddress& address) {
  Loop loop;
  Prober prober(loop.base(), check, address);
  int calls = 0;
  ProbeResult result;
  prober.Start([&](const ProbeResult& r) {
    ++calls;
    result = r;
    loop.Stop();
  });
  REQUIRE(prober.running());
  REQUIRE(loop.Run());
  CHECK(calls == 1);
  CHECK_FALSE(prober.running());
  return result;
}

// One HTTP probe against a server answering `response`.
ProbeResult ProbeHttp(const std::string& response,
                      conf::HealthCheck check = HttpCheck()) {
  TestServer server(response);
  return Probe(check, server.address());
}

std::string Response(int status, const std::string& headers = "",
                     const std::string& body = "") {
  return "HTTP/1.1 " + std::to_string(status) + " Whatever\r\n" + headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST_CASE("a TCP check passes when the connect completes") {
  uint16_t port = 0;
  int listener = ListenOnLoopback(&port);  // the kernel accepts for it
  ProbeResult result = Probe(TcpCheck(), Loopback(port));
  close(listener);
  CHECK(result.passed);
  CHECK(result.failure == Failure::kNone);
  CHECK(result.detail == "connected");
  CHECK(result.status == 0);
  CHECK(result.duration > std::chrono::microseconds(0));
}

TEST_CASE("a refused connect fails as kConnect, for TCP and HTTP checks") {
  uint16_t port = ClosedPort();
  for (const conf::HealthCheck& check : {TcpCheck(), HttpCheck()}) {
    ProbeResult result = Probe(check, Loopback(port));
    CHECK_FALSE(result.passed);
    CHECK(result.failure == Failure::kConnect);
    CHECK(result.detail == "connection refused");
    CHECK(result.status == 0);
  }
}

TEST_CASE("a backend that accepts but never answers times out") {
  TestServer server("", TestServer::Ending::kSilent);
  conf::HealthCheck check = HttpCheck();
  check.timeout = milliseconds(200);
  ProbeResult result = Probe(check, server.address());
  CHECK_FALSE(result.passed);
  CHECK(result.failure == Failure::kTimeout);
  CHECK(result.detail == "timed out after 200ms");
  // libevent's timers run on the coarse monotonic clock (a few ms a tick).
  CHECK(result.duration >= milliseconds(190));
  CHECK(result.duration < milliseconds(kBoundMs));

  check.timeout = std::chrono::seconds(1);
  TestServer other("", TestServer::Ending::kSilent);
  CHECK(Probe(check, other.address()).detail == "timed out after 1s");
}

TEST_CASE("an HTTP check passes on 200") {
  ProbeResult result = ProbeHttp(Response(200, "", "fine"));
  CHECK(result.passed);
  CHECK(result.failure == Failure::kNone);
  CHECK(result.detail == "HTTP 200");
  CHECK(result.status == 200);
  CHECK_FALSE(result.weight_percent.has_value());
  CHECK_FALSE(result.drain.has_value());
}

TEST_CASE("an HTTP check fails on 503 and says what it expected") {
  ProbeResult result = ProbeHttp(Response(503, "", "busy"));
  CHECK_FALSE(result.passed);
  CHECK(result.failure == Failure::kStatus);
  CHECK(result.status == 503);
  CHECK(result.detail == "HTTP 503 (expected 200-399)");
}

TEST_CASE("the expected status range includes both edges and nothing beyond") {
  conf::HealthCheck check = HttpCheck();
  check.expect_status_min = 300;
  check.expect_status_max = 302;
  CHECK_FALSE(ProbeHttp(Response(299), check).passed);
  CHECK(ProbeHttp(Response(300), check).passed);
  CHECK(ProbeHttp(Response(302), check).passed);
  ProbeResult above = ProbeHttp(Response(303), check);
  CHECK_FALSE(above.passed);
  CHECK(above.detail == "HTTP 303 (expected 300-302)");
  // The default range: 200-399.
  CHECK(ProbeHttp(Response(204)).passed);
  CHECK(ProbeHttp(Response(399)).passed);
  CHECK_FALSE(ProbeHttp(Response(400)).passed);
}

TEST_CASE("an interim 100 Continue is skipped for the final status") {
  ProbeResult result =
      ProbeHttp("HTTP/1.1 100 Continue\r\n\r\n" + Response(503));
  CHECK(result.status == 503);
  CHECK(result.failure == Failure::kStatus);
}

TEST_CASE("an expected body must appear in the response body") {
  conf::HealthCheck check = HttpCheck();
  check.expect_body = "ok";

  ProbeResult present = ProbeHttp(Response(200, "", "status: ok\n"), check);
  CHECK(present.passed);
  CHECK(present.detail == "HTTP 200");

  ProbeResult absent =
      ProbeHttp(Response(200, "", "status: degraded\n"), check);
  CHECK_FALSE(absent.passed);
  CHECK(absent.failure == Failure::kBody);
  CHECK(absent.status == 200);
  CHECK(absent.detail == "body lacks \"ok\"");

  ProbeResult empty = ProbeHttp(Response(200), check);
  CHECK(empty.failure == Failure::kBody);

  // Split across two chunks of a chunked body.
  ProbeResult split = ProbeHttp(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nis o\r\n3\r\nk!\n\r\n0\r\n\r\n",
      check);
  CHECK(split.passed);

  // A body that runs until the connection closes.
  ProbeResult until_close =
      ProbeHttp("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ok", check);
  CHECK(until_close.passed);

  // The status is judged first.
  ProbeResult bad_status = ProbeHttp(Response(500, "", "ok"), check);
  CHECK(bad_status.failure == Failure::kStatus);
}

TEST_CASE("an expected body is looked for in the first 64 KiB only") {
  conf::HealthCheck check = HttpCheck();
  check.expect_body = "needle";
  ProbeResult result = ProbeHttp(
      Response(200, "", std::string(70 * 1024, 'x') + "needle"), check);
  CHECK_FALSE(result.passed);
  CHECK(result.failure == Failure::kBody);
}

TEST_CASE("Tandem-Weight and Tandem-State are read, pass or fail") {
  ProbeResult percent = ProbeHttp(Response(
      200, "X-Empty:\r\nTandem-Weight: 50%\r\nTandem-State: DRAIN\r\n"));
  CHECK(percent.passed);
  CHECK(percent.weight_percent == std::optional<uint32_t>(50));
  CHECK(percent.drain == std::optional<bool>(true));

  ProbeResult failing =
      ProbeHttp(Response(503, "tandem-weight: 75\r\ntandem-state: up \r\n"));
  CHECK_FALSE(failing.passed);
  CHECK(failing.weight_percent == std::optional<uint32_t>(75));
  CHECK(failing.drain == std::optional<bool>(false));

  CHECK(ProbeHttp(Response(200, "Tandem-Weight: 0%\r\n")).weight_percent ==
        std::optional<uint32_t>(0));
  CHECK(ProbeHttp(Response(200, "Tandem-Weight: 1000%\r\n")).weight_percent ==
        std::optional<uint32_t>(1000));
  for (const char* invalid :
       {"1001%", "abc", "-5", "50%%", "", "5 0", "12345"}) {
    CAPTURE(invalid);
    ProbeResult result = ProbeHttp(
        Response(200, std::string("Tandem-Weight: ") + invalid + "\r\n"));
    CHECK(result.passed);
    CHECK_FALSE(result.weight_percent.has_value());
  }
  CHECK_FALSE(ProbeHttp(Response(200, "Tandem-State: maintenance\r\n"))
                  .drain.has_value());
}

TEST_CASE("a response that is not HTTP fails as kProtocol") {
  ProbeResult garbage = ProbeHttp("SSH-2.0-OpenSSH_9.2\r\n\r\n");
  CHECK_FALSE(garbage.passed);
  CHECK(garbage.failure == Failure::kProtocol);
  CHECK(garbage.detail == "invalid HTTP response");

  ProbeResult bad_length =
      ProbeHttp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
  CHECK(bad_length.failure == Failure::kProtocol);

  ProbeResult huge_head = ProbeHttp(
      "HTTP/1.1 200 OK\r\nX-Big: " + std::string(70 * 1024, 'a') + "\r\n\r\n");
  CHECK(huge_head.failure == Failure::kProtocol);
  CHECK(huge_head.detail == "response head over 64 KiB");
}

TEST_CASE("a connection reset mid-response fails as kReset") {
  TestServer server("HTTP/1.1 200 OK\r\nContent-Le",
                    TestServer::Ending::kReset);
  ProbeResult result = Probe(HttpCheck(), server.address());
  CHECK_FALSE(result.passed);
  CHECK(result.failure == Failure::kReset);
  CHECK(result.detail == "connection reset");
}

TEST_CASE(
    "a connection closed before the response is complete fails as kReset") {
  ProbeResult cut = ProbeHttp("HTTP/1.1 200 OK\r\nContent-Le");
  CHECK(cut.failure == Failure::kReset);
  CHECK(cut.detail == "connection closed mid-response");

  conf::HealthCheck check = HttpCheck();
  check.expect_body = "ok";
  ProbeResult short_body =
      ProbeHttp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nno", check);
  CHECK(short_body.failure == Failure::kReset);
  CHECK(short_body.status == 200);

  ProbeResult nothing = ProbeHttp("");
  CHECK(nothing.failure == Failure::kReset);
  CHECK(nothing.detail == "connection closed without a response");
}

TEST_CASE("the request is exactly method, path, Host, and Connection: close") {
  {
    TestServer server(Response(200));
    ProbeResult result = Probe(HttpCheck(), server.address());
    CHECK(result.passed);
    REQUIRE(server.requests().size() == 1);
    CHECK(server.requests()[0] ==
          "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:" +
              std::to_string(server.port()) +
              "\r\nUser-Agent: tandem-health\r\nAccept: */*\r\n"
              "Connection: close\r\n\r\n");
  }
  {
    TestServer server(Response(200, "", "ignored"));
    conf::HealthCheck check = HttpCheck();
    check.method = "HEAD";
    check.path = "/status?deep=1";
    check.host = "worker.internal";
    ProbeResult result = Probe(check, server.address());
    CHECK(result.passed);
    REQUIRE(server.requests().size() == 1);
    CHECK(server.requests()[0] ==
          "HEAD /status?deep=1 HTTP/1.1\r\nHost: worker.internal\r\n"
          "User-Agent: tandem-health\r\nAccept: */*\r\nConnection: "
          "close\r\n\r\n");
  }
}

TEST_CASE(
    "a check port replaces the backend's port, in the connect and in Host") {
  TestServer server(Response(200));
  conf::HealthCheck check = HttpCheck();
  check.port = server.port();
  conf::SocketAddress backend = Loopback(ClosedPort());
  backend.host = "localhost";
  ProbeResult result = Probe(check, backend);
  CHECK(result.passed);
  REQUIRE(server.requests().size() == 1);
  CHECK(server.requests()[0].find(
            "\r\nHost: localhost:" + std::to_string(server.port()) + "\r\n") !=
        std::string::npos);
}

TEST_CASE(
    "the callback never runs inside Start, even for a failure known at once") {
  Loop loop;
  conf::SocketAddress nowhere = Loopback(80);
  nowhere.storage.ss_family = AF_UNSPEC;  // socket() refuses the family
  Prober prober(loop.base(), TcpCheck(), nowhere);
  int calls = 0;
  ProbeResult result;
  prober.Start([&](const ProbeResult& r) {
    ++calls;
    result = r;
    loop.Stop();
  });
  CHECK(calls == 0);
  CHECK(prober.running());
  REQUIRE(loop.Run());
  CHECK(calls == 1);
  CHECK(result.failure == Failure::kConnect);
}

TEST_CASE("no callback after Cancel() or destruction") {
  Loop loop;
  conf::HealthCheck check = HttpCheck();
  check.timeout = milliseconds(50);
  int calls = 0;
  auto count = [&](const ProbeResult&) { ++calls; };

  SUBCASE("cancelled while waiting for the response") {
    TestServer server("", TestServer::Ending::kSilent);
    Prober prober(loop.base(), check, server.address());
    prober.Start(count);
    prober.Cancel();
    CHECK_FALSE(prober.running());
    CHECK_FALSE(loop.Run(milliseconds(300)));
    CHECK(calls == 0);
    // The Prober is reusable after a cancel.
    prober.Start([&](const ProbeResult& r) {
      CHECK(r.failure == Failure::kTimeout);
      loop.Stop();
    });
    CHECK(loop.Run());
  }
  SUBCASE("cancelled with a failure already waiting for delivery") {
    conf::SocketAddress nowhere = Loopback(80);
    nowhere.storage.ss_family = AF_UNSPEC;
    Prober prober(loop.base(), check, nowhere);
    prober.Start(count);
    prober.Cancel();
    CHECK_FALSE(loop.Run(milliseconds(100)));
    CHECK(calls == 0);
  }
  SUBCASE("destroyed while connecting, and with a delivery pending") {
    TestServer server("", TestServer::Ending::kSilent);
    auto prober =
        std::make_unique<Prober>(loop.base(), check, server.address());
    prober->Start(count);
    prober.reset();
    conf::SocketAddress nowhere = Loopback(80);
    nowhere.storage.ss_family = AF_UNSPEC;
    prober = std::make_unique<Prober>(loop.base(), check, nowhere);
    prober->Start(count);
    prober.reset();
    CHECK_FALSE(loop.Run(milliseconds(300)));
    CHECK(calls == 0);
  }
}

TEST_CASE("the callback may start the next probe or destroy the Prober") {
  Loop loop;
  TestServer server(Response(200), TestServer::Ending::kClose, 2);
  auto prober =
      std::make_unique<Prober>(loop.base(), HttpCheck(), server.address());
  int calls = 0;
  std::function<void(const ProbeResult&)> second = [&](const ProbeResult& r) {
    ++calls;
    CHECK(r.passed);
    prober.reset();
    loop.Stop();
  };
  prober->Start([&](const ProbeResult& r) {
    ++calls;
    CHECK(r.passed);
    prober->Start(second);
    CHECK(prober->running());
  });
  REQUIRE(loop.Run());
  CHECK(calls == 2);
  CHECK(prober == nullptr);
  CHECK(server.requests().size() == 2);
}

// ProbeResponse alone: the bytes of a response, fed in pieces, and its verdict.

struct Judged {
  bool decided = false;
  ProbeResult result;
};

// Feeds `response` in pieces of `piece` bytes (0: whole), then the end of
// the connection when `eof` and still undecided.
Judged Judge(const std::string& response, const conf::HealthCheck& check,
             size_t piece = 0, bool eof = false) {
  ProbeResponse reader(check);
  reader.Reset();
  size_t step = piece == 0 ? response.size() : piece;
  bool decided = false;
  for (size_t at = 0; at < response.size() && !decided; at += step) {
    decided =
        reader.Feed(response.data() + at, std::min(step, response.size() - at));
  }
  if (!decided && eof) decided = reader.FinishAtEof();
  CHECK(decided == reader.decided());
  return {decided, reader.result()};
}

TEST_CASE("a response split at every byte is judged as when it came whole") {
  conf::HealthCheck plain = HttpCheck();
  conf::HealthCheck body = HttpCheck();
  body.expect_body = "ok!";
  conf::HealthCheck head = body;
  head.method = "HEAD";
  struct Case {
    std::string response;
    const conf::HealthCheck* check;
    bool eof;
  };
  const Case cases[] = {
      {Response(200), &plain, false},
      {Response(503, "Tandem-Weight: 25%\r\nTandem-State: drain\r\n"), &plain,
       false},
      {"HTTP/1.1 100 Continue\r\n\r\n" + Response(204), &plain, false},
      {Response(200, "", "all ok!"), &body, false},
      {Response(200, "", "degraded"), &body, false},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
       "2\r\nok\r\n1\r\n!\r\n0\r\n\r\n",
       &body, false},
      {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nnot it", &body, true},
      {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &head, false},
      {"SSH-2.0-OpenSSH_9.2\r\n\r\n", &plain, false},
      {"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &plain, false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.response);
    Judged whole = Judge(c.response, *c.check, 0, c.eof);
    REQUIRE(whole.decided);
    for (size_t piece : {size_t{1}, size_t{2}, size_t{7}}) {
      CAPTURE(piece);
      Judged split = Judge(c.response, *c.check, piece, c.eof);
      CHECK(split.decided);
      CHECK(split.result.passed == whole.result.passed);
      CHECK(split.result.failure == whole.result.failure);
      CHECK(split.result.detail == whole.result.detail);
      CHECK(split.result.status == whole.result.status);
      CHECK(split.result.weight_percent == whole.result.weight_percent);
      CHECK(split.result.drain == whole.result.drain);
    }
  }
}

TEST_CASE("a response is judged as soon as enough of it has arrived") {
  // The status decides at the end of the head; the body never comes.
  Judged status =
      Judge("HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\n", HttpCheck());
  CHECK(status.decided);
  CHECK(status.result.detail == "HTTP 503 (expected 200-399)");

  // The expected text decides before the body ends.
  conf::HealthCheck check = HttpCheck();
  check.expect_body = "ok";
  Judged match = Judge(
      "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus: ok", check, 1);
  CHECK(match.decided);
  CHECK(match.result.passed);
  CHECK(match.result.detail == "HTTP 200");

  // A response to HEAD has no body, whatever its Content-Length says.
  check.method = "HEAD";
  Judged head = Judge("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", check, 1);
  CHECK(head.decided);
  CHECK(head.result.failure == Failure::kBody);
  CHECK(head.result.detail == "body lacks \"ok\"");
}

TEST_CASE("an incomplete response is not judged, and the end does not end it") {
  conf::HealthCheck check = HttpCheck();
  check.expect_body = "ok";
  Judged short_body =
      Judge("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nno", check, 0, true);
  CHECK_FALSE(short_body.decided);
  CHECK(short_body.result.status == 200);
  CHECK_FALSE(
      Judge("HTTP/1.1 200 OK\r\nContent-Le", HttpCheck(), 0, true).decided);
}

TEST_CASE("feedback is read from interim heads and from trailers too") {
  Judged interim =
      Judge("HTTP/1.1 103 Early Hints\r\nTandem-Weight: 40\r\n\r\n" +
                Response(200, "Tandem-State: up\r\n"),
            HttpCheck());
  CHECK(interim.result.passed);
  CHECK(interim.result.weight_percent == std::optional<uint32_t>(40));
  CHECK(interim.result.drain == std::optional<bool>(false));

  conf::HealthCheck check = HttpCheck();
  check.expect_body = "ok";
  Judged trailers = Judge(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
      "Tandem-Weight: 10\r\n\r\n2\r\nno\r\n0\r\n"
      "Tandem-Weight: 20%\r\nTandem-State: drain\r\n\r\n",
      check, 1);
  CHECK(trailers.result.failure == Failure::kBody);
  CHECK(trailers.result.weight_percent == std::optional<uint32_t>(20));
  CHECK(trailers.result.drain == std::optional<bool>(true));
}

}  // namespace
}  // namespace tandem::health
