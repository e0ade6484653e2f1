// The gRPC health check (grpc.health.v1.Health/Check, as Envoy's and
// Kubernetes' grpc probes): one call over HTTP/2 on the check's connection,
// healthy only on grpc-status 0 with status SERVING. No I/O: the prober
// writes what Output() gives and feeds what it reads. One thread.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::health {

// HealthCheckRequest{service} as one gRPC message (5-byte prefix, protobuf).
std::string GrpcHealthRequest(std::string_view service);
// The status in one HealthCheckResponse message (its protobuf bytes, after
// the 5-byte prefix): 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3
// SERVICE_UNKNOWN; -1 when the bytes are not such a message.
int GrpcServingStatus(std::string_view message);

class GrpcCheck {
 public:
  GrpcCheck() = default;
  ~GrpcCheck();
  GrpcCheck(const GrpcCheck&) = delete;
  GrpcCheck& operator=(const GrpcCheck&) = delete;

  // Begins the call on a fresh connection: `authority` for :authority,
  // `tls` for :scheme. False when the session cannot be made.
  bool Start(std::string_view authority, bool tls, std::string_view service);
  // Bytes to write to the backend now (the preface, SETTINGS, the call,
  // acknowledgements), appended to `out`.
  void Output(std::string* out);
  // The backend's bytes; true once the call has a verdict.
  bool Feed(const uint8_t* data, size_t length);

  bool decided() const { return decided_; }
  bool passed() const { return passed_; }
  // "SERVING", "NOT_SERVING", "grpc-status 12 (...)", "HTTP 404"...
  const std::string& detail() const { return detail_; }
  int http_status() const { return http_status_; }

 private:
  static nghttp2_session_callbacks* Callbacks();  // one set for every check
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t name_length,
                      const uint8_t* value, size_t value_length, uint8_t,
                      void* arg);
  static int OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t length, void* arg);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* arg);
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buffer,
                          size_t length, uint32_t* data_flags,
                          nghttp2_data_source* source, void*);
  void Decide(bool passed, std::string detail);
  void Judge(uint32_t error_code);
  // What the session has to send, appended to `out`.
  void Send(std::string* out);

  nghttp2_session* session_ = nullptr;
  int32_t stream_ = -1;
  std::string body_;  // the request message, sent from body_sent_
  size_t body_sent_ = 0;
  std::string pending_;  // output made while feeding, for Output()
  std::string message_;  // the response's bytes (bounded)
  std::string grpc_status_;
  std::string grpc_message_;
  int http_status_ = 0;
  bool decided_ = false;
  bool passed_ = false;
  std::string detail_;
};

}  // namespace tandem::health
