// Unit tests for the gRPC health check: the request and response messages,
// and the call against an in-memory HTTP/2 server answering each way a
// worker can.
#include "health/grpc_check.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace tandem::health {
namespace {

// A server session that answers the one call with `fields` (HEADERS),
// `message` (DATA, when not empty) and `trailers`, or resets it.
class FakeServer {
 public:
  std::vector<std::pair<std::string, std::string>> fields = {
      {":status", "200"}, {"content-type", "application/grpc"}};
  std::string message;
  std::vector<std::pair<std::string, std::string>> trailers = {
      {"grpc-status", "0"}};
  bool reset = false;
  std::string path;     // what the client asked for
  std::string request;  // its DATA

  FakeServer() {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnData);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrame);
    nghttp2_session_server_new(&session_, c, this);
    nghttp2_session_callbacks_del(c);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~FakeServer() { nghttp2_session_del(session_); }

  // Runs the client against this server until it decides.
  void Run(GrpcCheck& check) {
    for (int round = 0; round < 20 && !check.decided(); ++round) {
      std::string to_server;
      check.Output(&to_server);
      nghttp2_session_mem_recv(
          session_, reinterpret_cast<const uint8_t*>(to_server.data()),
          to_server.size());
      const uint8_t* data = nullptr;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(session_, &data)) > 0)
        check.Feed(data, static_cast<size_t>(n));
    }
  }

 private:
  static nghttp2_nv Nv(const std::pair<std::string, std::string>& f) {
    return {reinterpret_cast<uint8_t*>(const_cast<char*>(f.first.data())),
            reinterpret_cast<uint8_t*>(const_cast<char*>(f.second.data())),
            f.first.size(), f.second.size(), NGHTTP2_NV_FLAG_NONE};
  }
  static int OnHeader(nghttp2_session*, const nghttp2_frame*,
                      const uint8_t* name, size_t name_length,
                      const uint8_t* value, size_t value_length, uint8_t,
                      void* arg) {
    auto* self = static_cast<FakeServer*>(arg);
    if (std::string(reinterpret_cast<const char*>(name), name_length) ==
        ":path")
      self->path.assign(reinterpret_cast<const char*>(value), value_length);
    return 0;
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t, const uint8_t* data,
                    size_t length, void* arg) {
    static_cast<FakeServer*>(arg)->request.append(
        reinterpret_cast<const char*>(data), length);
    return 0;
  }
  static ssize_t Read(nghttp2_session* session, int32_t id, uint8_t* buffer,
                      size_t length, uint32_t* flags,
                      nghttp2_data_source* source, void*) {
    auto* self = static_cast<FakeServer*>(source->ptr);
    const size_t n = std::min(length, self->message.size() - self->sent_);
    std::copy_n(self->message.data() + self->sent_, n, buffer);
    self->sent_ += n;
    if (self->sent_ == self->message.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
      std::vector<nghttp2_nv> nv;
      for (const auto& f : self->trailers) nv.push_back(Nv(f));
      nghttp2_submit_trailer(session, id, nv.data(), nv.size());
    }
    return static_cast<ssize_t>(n);
  }
  static int OnFrame(nghttp2_session* session, const nghttp2_frame* frame,
                     void* arg) {
    auto* self = static_cast<FakeServer*>(arg);
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        frame->hd.stream_id == 0) {
      return 0;
    }
    const int32_t id = frame->hd.stream_id;
    if (self->reset) {
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id,
                                NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    std::vector<nghttp2_nv> nv;
    for (const auto& f : self->fields) nv.push_back(Nv(f));
    if (self->message.empty()) {
      // Trailers-Only: the status in the one HEADERS frame.
      for (const auto& f : self->trailers) nv.push_back(Nv(f));
      nghttp2_submit_response(session, id, nv.data(), nv.size(), nullptr);
      return 0;
    }
    nghttp2_data_provider provider;
    provider.source.ptr = self;
    provider.read_callback = Read;
    nghttp2_submit_response(session, id, nv.data(), nv.size(), &provider);
    return 0;
  }

  nghttp2_session* session_ = nullptr;
  size_t sent_ = 0;
};

std::string Framed(std::string message) {
  std::string out(5, '\0');
  out[4] = static_cast<char>(message.size());
  return out + message;
}

}  // namespace

TEST_CASE("the request names the service; the response's status is read") {
  CHECK(GrpcHealthRequest("") == std::string(5, '\0'));
  CHECK(GrpcHealthRequest("app") == std::string("\0\0\0\0\5\x0a\3app", 10));
  CHECK(GrpcServingStatus("") == 0);
  CHECK(GrpcServingStatus("\x08\x01") == 1);
  CHECK(GrpcServingStatus("\x08\x02") == 2);
  // Unknown fields are skipped; a truncated message is refused.
  CHECK(GrpcServingStatus(std::string("\x12\x02hi\x08\x01", 6)) == 1);
  CHECK(GrpcServingStatus("\x08") == -1);
  CHECK(GrpcServingStatus("\x12\x05hi") == -1);
}

TEST_CASE("SERVING with grpc-status 0 passes") {
  FakeServer server;
  server.message = Framed("\x08\x01");
  GrpcCheck check;
  REQUIRE(check.Start("127.0.0.1:50051", false, "app"));
  server.Run(check);
  REQUIRE(check.decided());
  CHECK(check.passed());
  CHECK(check.detail() == "SERVING");
  CHECK(server.path == "/grpc.health.v1.Health/Check");
  CHECK(server.request == GrpcHealthRequest("app"));
}

TEST_CASE("NOT_SERVING, a gRPC error, an HTTP error or a reset fail") {
  SUBCASE("NOT_SERVING") {
    FakeServer server;
    server.message = Framed("\x08\x02");
    GrpcCheck check;
    REQUIRE(check.Start("h", false, ""));
    server.Run(check);
    CHECK_FALSE(check.passed());
    CHECK(check.detail() == "NOT_SERVING");
  }
  SUBCASE("Trailers-Only NOT_FOUND") {
    FakeServer server;
    server.trailers = {{"grpc-status", "5"}, {"grpc-message", "unknown"}};
    GrpcCheck check;
    REQUIRE(check.Start("h", false, "x"));
    server.Run(check);
    CHECK_FALSE(check.passed());
    CHECK(check.detail() == "grpc-status 5 (unknown)");
  }
  SUBCASE("SERVING but grpc-status not 0") {
    FakeServer server;
    server.message = Framed("\x08\x01");
    server.trailers = {{"grpc-status", "13"}};
    GrpcCheck check;
    REQUIRE(check.Start("h", false, ""));
    server.Run(check);
    CHECK_FALSE(check.passed());
  }
  SUBCASE("HTTP 404") {
    FakeServer server;
    server.fields = {{":status", "404"}};
    GrpcCheck check;
    REQUIRE(check.Start("h", false, ""));
    server.Run(check);
    CHECK_FALSE(check.passed());
    CHECK(check.detail() == "HTTP 404");
  }
  SUBCASE("reset") {
    FakeServer server;
    server.reset = true;
    GrpcCheck check;
    REQUIRE(check.Start("h", false, ""));
    server.Run(check);
    CHECK(check.decided());
    CHECK_FALSE(check.passed());
  }
  SUBCASE("garbage instead of HTTP/2") {
    GrpcCheck check;
    REQUIRE(check.Start("h", false, ""));
    const std::string junk = "HTTP/1.1 200 OK\r\n\r\n";
    check.Feed(reinterpret_cast<const uint8_t*>(junk.data()), junk.size());
    CHECK(check.decided());
    CHECK_FALSE(check.passed());
  }
}

}  // namespace tandem::health
