// Tests of the demo compute worker: a real DemoWorker on its own event-loop
// thread, spoken to over loopback with a raw blocking socket.
#include "demo/demo_worker.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "net/event_ptr.h"

namespace tandem::demo {
namespace {

constexpr timeval kSocketTimeout{5, 0};

// One DemoWorker named "w1" on an event loop of its own thread.
class WorkerThread {
 public:
  WorkerThread() {
    bool sigpipe_ignored = signal(SIGPIPE, SIG_IGN) != SIG_ERR;
    REQUIRE(sigpipe_ignored);
    // Lets event_base_loopexit() from this thread wake the loop thread.
    REQUIRE(evthread_use_pthreads() == 0);
    base_ = net::NewEventBase(net::BaseLocking::kLocked);
    REQUIRE(base_ != nullptr);
    worker_ = std::make_unique<DemoWorker>(base_.get(), "w1");
    DemoWorkerStart started = worker_->Start("127.0.0.1:0");
    REQUIRE_MESSAGE(started.ok(), started.error);
    REQUIRE(started.port != 0);
    REQUIRE(started.port == worker_->port());
    thread_ = std::thread([this] { event_base_dispatch(base_.get()); });
  }

  ~WorkerThread() {
    event_base_loopexit(base_.get(), nullptr);
    thread_.join();
    worker_.reset();
  }

  uint16_t port() const { return worker_->port(); }

 private:
  net::EventBasePtr base_;
  std::unique_ptr<DemoWorker> worker_;
  std::thread thread_;
};

struct Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  // The first value of header `name` (case-insensitive), or "".
  std::string Header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
      if (key.size() == name.size() &&
          std::equal(key.begin(), key.end(), name.begin(), [](char a, char b) {
            return std::tolower(a) == std::tolower(b);
          })) {
        return value;
      }
    }
    return "";
  }
};

// A blocking loopback client; every read and write gives up after 5 s.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    REQUIRE(setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &kSocketTimeout,
                       sizeof(kSocketTimeout)) == 0);
    REQUIRE(setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &kSocketTimeout,
                       sizeof(kSocketTimeout)) == 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&address),
                    sizeof(address)) == 0);
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  // Reads one response; `head_only` for the answer to HEAD.
  Response Read(bool head_only = false) {
    Response response;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) Fill();
    std::string head = buffer_.substr(0, end + 2);
    buffer_.erase(0, end + 4);
    size_t line_end = head.find("\r\n");
    REQUIRE(head.starts_with("HTTP/1.1 "));
    response.status = std::stoi(head.substr(9, 3));
    for (size_t at = line_end + 2; at < head.size();) {
      size_t next = head.find("\r\n", at);
      std::string line = head.substr(at, next - at);
      size_t colon = line.find(':');
      REQUIRE(colon != std::string::npos);
      size_t value_at = line.find_first_not_of(' ', colon + 1);
      response.headers.emplace_back(
          line.substr(0, colon),
          value_at == std::string::npos ? "" : line.substr(value_at));
      at = next + 2;
    }
    if (head_only || response.status == 204 || response.status == 304 ||
        response.status == 101 || response.status < 200) {
      return response;
    }
    if (response.Header("Transfer-Encoding") == "chunked") {
      for (int chunks = 0; chunks < 1'000'000; ++chunks) {
        size_t size_end;
        while ((size_end = buffer_.find("\r\n")) == std::string::npos) Fill();
        size_t size = std::stoul(buffer_.substr(0, size_end), nullptr, 16);
        buffer_.erase(0, size_end + 2);
        Need(size + 2);
        REQUIRE(buffer_.compare(size, 2, "\r\n") == 0);
        response.body.append(buffer_, 0, size);
        buffer_.erase(0, size + 2);
        if (size == 0) return response;
      }
      FAIL("too many chunks");
    }
    size_t length = std::stoul(response.Header("Content-Length"));
    Need(length);
    response.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return response;
  }

  Response Exchange(std::string_view request) {
    Send(request);
    return Read();
  }

  // Reads raw bytes, for the tunnel.
  std::string ReadBytes(size_t count) {
    Need(count);
    std::string bytes = buffer_.substr(0, count);
    buffer_.erase(0, count);
    return bytes;
  }

  // True when the worker closes the connection (after whatever is buffered).
  bool ReadsEof() {
    char byte;
    ssize_t n = recv(fd_, &byte, 1, 0);
    return n == 0 && buffer_.empty();
  }

 private:
  void Fill() {
    char chunk[65536];
    ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
    REQUIRE_MESSAGE(n > 0, "connection closed or timed out");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
  void Need(size_t count) {
    while (buffer_.size() < count) Fill();
  }

  int fd_ = -1;
  std::string buffer_;
};

std::string Get(std::string_view target) {
  return std::string("GET ").append(target).append(
      " HTTP/1.1\r\nHost: test\r\n\r\n");
}

// Chained SHA-256 as the worker defines it, with OpenSSL's one-shot API.
std::string ChainedSha256(std::string input, uint64_t rounds) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  for (uint64_t round = 0; round < rounds; ++round) {
    REQUIRE(EVP_Digest(input.data(), input.size(), digest, &length,
                       EVP_sha256(), nullptr) == 1);
    input.assign(reinterpret_cast<const char*>(digest), length);
  }
  std::string hex;
  for (unsigned char byte : input) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex.push_back(kDigits[byte >> 4]);
    hex.push_back(kDigits[byte & 0xf]);
  }
  return hex;
}

TEST_CASE("GET / says hello and names the worker") {
  WorkerThread worker;
  Client client(worker.port());
  Response response = client.Exchange(Get("/"));
  CHECK(response.status == 200);
  CHECK(response.body == "hello from w1\n");
  CHECK(response.Header("X-Worker") == "w1");
}

TEST_CASE("/healthz answers ok until the control switch fails it") {
  WorkerThread worker;
  Client client(worker.port());
  Response healthy = client.Exchange(Get("/healthz"));
  CHECK(healthy.status == 200);
  CHECK(healthy.body == "ok\n");
  CHECK(healthy.Header("X-Worker") == "w1");

  Response set = client.Exchange(
      "POST /control/health?status=503 HTTP/1.1\r\nHost: test\r\n"
      "Content-Length: 0\r\n\r\n");
  CHECK(set.status == 200);
  CHECK(client.Exchange(Get("/healthz")).status == 503);

  client.Exchange(
      "POST /control/health?status=200 HTTP/1.1\r\nHost: test\r\n"
      "Content-Length: 0\r\n\r\n");
  Response restored = client.Exchange(Get("/healthz"));
  CHECK(restored.status == 200);
  CHECK(restored.body == "ok\n");

  // The switch is a POST, and takes only final statuses.
  CHECK(client.Exchange(Get("/control/health?status=503")).status == 405);
  CHECK(client
            .Exchange("POST /control/health?status=99 HTTP/1.1\r\n"
                      "Host: test\r\nContent-Length: 0\r\n\r\n")
            .status == 400);
}

TEST_CASE("/compute chains SHA-256 over the body for the rounds asked") {
  WorkerThread worker;
  Client client(worker.port());
  Response posted = client.Exchange(
      "POST /compute?rounds=1000 HTTP/1.1\r\nHost: test\r\n"
      "Content-Length: 11\r\n\r\nhello world");
  CHECK(posted.status == 200);
  CHECK(posted.Header("Content-Type") == "application/json");
  CHECK(posted.body ==
        "{\"worker\":\"w1\",\"rounds\":1000,\"bytes\":11,"
        "\"sha256\":\"" +
            ChainedSha256("hello world", 1000) + "\"}\n");

  // A chunked body is hashed as its decoded bytes.
  Response chunked = client.Exchange(
      "POST /compute?rounds=2 HTTP/1.1\r\nHost: test\r\n"
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n "
      "world\r\n0\r\n\r\n");
  CHECK(chunked.body.find(ChainedSha256("hello world", 2)) !=
        std::string::npos);

  // Without a body the worker hashes its own name; the default is 1000 rounds.
  Response named = client.Exchange(Get("/compute?rounds=1"));
  CHECK(named.body.find(ChainedSha256("w1", 1)) != std::string::npos);
  Response default_rounds = client.Exchange(Get("/compute"));
  CHECK(default_rounds.body.find("\"rounds\":1000") != std::string::npos);
  CHECK(default_rounds.body.find(ChainedSha256("w1", 1000)) !=
        std::string::npos);

  CHECK(client.Exchange(Get("/compute?rounds=0")).status == 400);
  CHECK(client.Exchange(Get("/compute?rounds=10000001")).status == 400);
  CHECK(client.Exchange(Get("/compute?rounds=x")).status == 400);
}

TEST_CASE("/status/CODE answers that code") {
  WorkerThread worker;
  Client client(worker.port());
  Response unavailable = client.Exchange(Get("/status/503"));
  CHECK(unavailable.status == 503);
  CHECK(unavailable.body == "status 503\n");
  CHECK(unavailable.Header("X-Worker") == "w1");
  Response no_content = client.Exchange(Get("/status/204"));
  CHECK(no_content.status == 204);
  CHECK(no_content.Header("Content-Length").empty());
  CHECK(client.Exchange(Get("/status/99")).status == 400);
  CHECK(client.Exchange(Get("/nowhere")).status == 404);
}

TEST_CASE("a keep-alive connection is counted once by /stats") {
  WorkerThread worker;
  Client client(worker.port());
  for (int i = 0; i < 3; ++i) CHECK(client.Exchange(Get("/")).status == 200);
  Response stats = client.Exchange(Get("/stats"));
  CHECK(stats.body ==
        "{\"worker\":\"w1\",\"connections_accepted\":1,"
        "\"requests_served\":4,\"health_status\":200,\"fail_status\":0,"
        "\"in_flight\":1,\"max_concurrent\":1}\n");

  Client second(worker.port());
  CHECK(
      second.Exchange(Get("/stats")).body.find("\"connections_accepted\":2") !=
      std::string::npos);
}

TEST_CASE("/control/fail answers its status to all but probes and switches") {
  WorkerThread worker;
  Client client(worker.port());
  auto fail = [&client](std::string_view status) {
    return client.Exchange(std::string("POST /control/fail?status=")
                               .append(status)
                               .append(" HTTP/1.1\r\nHost: test\r\n"
                                       "Content-Length: 0\r\n\r\n"));
  };
  CHECK(fail("500").status == 200);
  Response failed = client.Exchange(Get("/"));
  CHECK(failed.status == 500);
  CHECK(failed.body == "failing on purpose\n");
  CHECK(failed.Header("X-Worker") == "w1");
  CHECK(client.Exchange(Get("/sleep?ms=1")).status == 500);
  CHECK(client.Exchange(Get("/healthz")).status == 200);
  Response stats = client.Exchange(Get("/stats"));
  CHECK(stats.status == 200);
  CHECK(stats.body.find("\"fail_status\":500") != std::string::npos);

  CHECK(fail("0").status == 200);
  CHECK(client.Exchange(Get("/")).status == 200);
  CHECK(fail("99").status == 400);
  CHECK(client.Exchange(Get("/control/fail?status=500")).status == 405);
  CHECK(client.Exchange(Get("/")).status == 200);
}

TEST_CASE("/control/fail with percent fails that share, spread evenly") {
  WorkerThread worker;
  Client client(worker.port());
  CHECK(client
            .Exchange("POST /control/fail?status=503&percent=20 HTTP/1.1\r\n"
                      "Host: test\r\nContent-Length: 0\r\n\r\n")
            .status == 200);
  int failed = 0;
  int longest_run = 0;
  int run = 0;
  for (int i = 0; i < 100; ++i) {
    const bool failing = client.Exchange(Get("/")).status == 503;
    failed += failing ? 1 : 0;
    run = failing ? 0 : run + 1;
    longest_run = std::max(longest_run, run);
  }
  CHECK(failed == 20);
  CHECK(longest_run <= 4);  // one in every five
  CHECK(client
            .Exchange("POST /control/fail?status=503&percent=0 HTTP/1.1\r\n"
                      "Host: test\r\nContent-Length: 0\r\n\r\n")
            .status == 400);
}

TEST_CASE("/stats counts the most requests ever in flight at once") {
  WorkerThread worker;
  {
    Client first(worker.port());
    Client second(worker.port());
    Client third(worker.port());
    first.Send(Get("/sleep?ms=300"));
    second.Send(Get("/sleep?ms=300"));
    third.Send(Get("/sleep?ms=300"));
    CHECK(first.Read().status == 200);
    CHECK(second.Read().status == 200);
    CHECK(third.Read().status == 200);
  }
  Client client(worker.port());
  Response stats = client.Exchange(Get("/stats"));
  // The three sleeps overlapped; only the /stats request is in flight now.
  CHECK(stats.body.find("\"in_flight\":1,\"max_concurrent\":3}") !=
        std::string::npos);
}

TEST_CASE("pipelined requests are answered in order, a slow one included") {
  WorkerThread worker;
  Client client(worker.port());
  client.Send(Get("/sleep?ms=50") + Get("/status/201") +
              "HEAD / HTTP/1.1\r\nHost: test\r\n\r\n" + Get("/healthz"));
  Response slept = client.Read();
  CHECK(slept.status == 200);
  CHECK(slept.body == "slept 50 ms\n");
  CHECK(client.Read().status == 201);
  Response head = client.Read(/*head_only=*/true);
  CHECK(head.status == 200);
  CHECK(head.Header("Content-Length") == "14");
  CHECK(client.Read().body == "ok\n");
}

TEST_CASE("/bytes streams the pattern with Content-Length or chunked") {
  WorkerThread worker;
  Client client(worker.port());
  constexpr size_t kBytes = 1'000'003;  // more than the queue, not whole pieces
  std::string expected;
  for (size_t i = 0; i < kBytes; ++i) {
    expected.push_back(DemoWorker::kBytesPattern[i % 64]);
  }

  Response plain = client.Exchange(Get("/bytes?n=1000003"));
  CHECK(plain.Header("Content-Length") == "1000003");
  CHECK(plain.body == expected);

  Response chunked = client.Exchange(Get("/bytes?n=1000003&chunked=1"));
  CHECK(chunked.Header("Transfer-Encoding") == "chunked");
  CHECK(chunked.body == expected);

  Response empty = client.Exchange(Get("/bytes?n=0&chunked=1"));
  CHECK(empty.status == 200);
  CHECK(empty.body.empty());
}

TEST_CASE("/sink counts a body it does not keep, chunked or not") {
  WorkerThread worker;
  Client client(worker.port());
  std::string body(300'000, 'x');
  Response sized = client.Exchange(
      "PUT /sink HTTP/1.1\r\nHost: test\r\nContent-Length: 300000\r\n\r\n" +
      body);
  CHECK(sized.body == "{\"worker\":\"w1\",\"bytes\":300000}\n");

  Response chunked = client.Exchange(
      "POST /sink HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
      "a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK(chunked.body == "{\"worker\":\"w1\",\"bytes\":13}\n");
}

TEST_CASE("Expect: 100-continue gets the interim answer before the body") {
  WorkerThread worker;
  Client client(worker.port());
  client.Send(
      "POST /sink HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n"
      "Expect: 100-continue\r\n\r\n");
  CHECK(client.Read().status == 100);
  client.Send("body");
  CHECK(client.Read().body == "{\"worker\":\"w1\",\"bytes\":4}\n");
}

TEST_CASE("Connection: close and HTTP/1.0 without keep-alive close after") {
  WorkerThread worker;
  Client closing(worker.port());
  Response response = closing.Exchange(
      "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
  CHECK(response.Header("Connection") == "close");
  CHECK(closing.ReadsEof());

  Client old(worker.port());
  old.Send("GET /healthz HTTP/1.0\r\n\r\n");
  CHECK(old.Read().body == "ok\n");
  CHECK(old.ReadsEof());
}

TEST_CASE("a malformed request gets 400 and the connection closes") {
  WorkerThread worker;
  Client client(worker.port());
  Response response = client.Exchange(
      "POST /sink HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n"
      "Transfer-Encoding: chunked\r\n\r\n");
  CHECK(response.status == 400);
  CHECK(client.ReadsEof());
}

TEST_CASE("/echo upgrades to WebSocket and echoes every byte") {
  WorkerThread worker;
  Client client(worker.port());
  // The key and accept value of RFC 6455 section 1.3.
  client.Send(
      "GET /echo HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
      "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly");
  Response upgraded = client.Read();
  CHECK(upgraded.status == 101);
  CHECK(upgraded.Header("Sec-WebSocket-Accept") ==
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK(client.ReadBytes(5) == "early");
  client.Send("more bytes");
  CHECK(client.ReadBytes(10) == "more bytes");

  Client plain(worker.port());
  CHECK(plain.Exchange(Get("/echo")).status == 426);
}

TEST_CASE("a refused upgrade is answered and the next request still parsed") {
  WorkerThread worker;
  Client client(worker.port());
  client.Send(
      "GET /echo HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
      "Upgrade: other\r\n\r\n" +
      Get("/healthz"));
  CHECK(client.Read().status == 426);
  CHECK(client.Read().body == "ok\n");
}

}  // namespace
}  // namespace tandem::demo
