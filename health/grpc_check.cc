// The gRPC health check; see grpc_check.h.
#include "health/grpc_check.h"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace tandem::health {
namespace {

// More of a response than a HealthCheckResponse ever needs is not kept.
constexpr size_t kMaxMessage = 1024;

bool ReadVarint(std::string_view& in, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

const char* StatusName(int status) {
  switch (status) {
    case 0:
      return "UNKNOWN";
    case 1:
      return "SERVING";
    case 2:
      return "NOT_SERVING";
    case 3:
      return "SERVICE_UNKNOWN";
    default:
      return "an unknown status";
  }
}

}  // namespace

std::string GrpcHealthRequest(std::string_view service) {
  std::string message;
  if (!service.empty()) {
    message.push_back(0x0a);  // field 1, length-delimited
    uint64_t length = service.size();
    while (length >= 0x80) {
      message.push_back(static_cast<char>((length & 0x7f) | 0x80));
      length >>= 7;
    }
    message.push_back(static_cast<char>(length));
    message.append(service);
  }
  std::string framed(5, '\0');  // not compressed, then the length
  const auto size = static_cast<uint32_t>(message.size());
  framed[1] = static_cast<char>(size >> 24);
  framed[2] = static_cast<char>(size >> 16);
  framed[3] = static_cast<char>(size >> 8);
  framed[4] = static_cast<char>(size);
  return framed + message;
}

int GrpcServingStatus(std::string_view message) {
  int status = 0;  // a field left out is its default, UNKNOWN
  while (!message.empty()) {
    uint64_t key = 0;
    if (!ReadVarint(message, &key)) return -1;
    const uint64_t field = key >> 3;
    switch (key & 7) {
      case 0: {  // varint
        uint64_t value = 0;
        if (!ReadVarint(message, &value)) return -1;
        if (field == 1)
          status = static_cast<int>(std::min<uint64_t>(value, 1000));
        break;
      }
      case 1:  // 64-bit
        if (message.size() < 8) return -1;
        message.remove_prefix(8);
        break;
      case 2: {  // length-delimited
        uint64_t length = 0;
        if (!ReadVarint(message, &length) || length > message.size()) return -1;
        message.remove_prefix(length);
        break;
      }
      case 5:  // 32-bit
        if (message.size() < 4) return -1;
        message.remove_prefix(4);
        break;
      default:
        return -1;
    }
  }
  return status;
}

nghttp2_session_callbacks* GrpcCheck::Callbacks() {
  static nghttp2_session_callbacks* const callbacks = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, OnStreamClose);
    return c;
  }();
  return callbacks;
}

GrpcCheck::~GrpcCheck() {
  if (session_ != nullptr) nghttp2_session_del(session_);
}

bool GrpcCheck::Start(std::string_view authority, bool tls,
                      std::string_view service) {
  if (nghttp2_session_client_new(&session_, Callbacks(), this) != 0) {
    session_ = nullptr;
    return false;
  }
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  body_ = GrpcHealthRequest(service);
  auto nv = [](std::string_view name, std::string_view value) {
    return nghttp2_nv{
        reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
        reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
        name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
  };
  const nghttp2_nv fields[] = {
      nv(":method", "POST"),
      nv(":scheme", tls ? "https" : "http"),
      nv(":authority", authority),
      nv(":path", "/grpc.health.v1.Health/Check"),
      nv("content-type", "application/grpc"),
      nv("te", "trailers"),
      nv("user-agent", "tandem-health"),
  };
  nghttp2_data_provider provider;
  provider.source.ptr = this;
  provider.read_callback = ReadBody;
  stream_ = nghttp2_submit_request(session_, nullptr, fields, std::size(fields),
                                   &provider, this);
  return stream_ > 0;
}

ssize_t GrpcCheck::ReadBody(nghttp2_session*, int32_t, uint8_t* buffer,
                            size_t length, uint32_t* data_flags,
                            nghttp2_data_source* source, void*) {
  auto* self = static_cast<GrpcCheck*>(source->ptr);
  const size_t n = std::min(length, self->body_.size() - self->body_sent_);
  std::memcpy(buffer, self->body_.data() + self->body_sent_, n);
  self->body_sent_ += n;
  if (self->body_sent_ == self->body_.size())
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

void GrpcCheck::Output(std::string* out) {
  out->append(pending_);
  pending_.clear();
  Send(out);
}

void GrpcCheck::Send(std::string* out) {
  if (session_ == nullptr) return;
  for (;;) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0) break;
    out->append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
}

bool GrpcCheck::Feed(const uint8_t* data, size_t length) {
  if (decided_) return true;
  const bool failed = nghttp2_session_mem_recv(session_, data, length) < 0;
  // What the session answers goes out; a GOAWAY of its own ends reading.
  Send(&pending_);
  if (failed || (!decided_ && !nghttp2_session_want_read(session_))) {
    // Not HTTP/2, or a connection error nghttp2 answered with GOAWAY.
    Decide(false, "invalid HTTP/2 from the backend");
  }
  return decided_;
}

int GrpcCheck::OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                        const uint8_t* name, size_t name_length,
                        const uint8_t* value, size_t value_length, uint8_t,
                        void* arg) {
  auto* self = static_cast<GrpcCheck*>(arg);
  if (frame->hd.stream_id != self->stream_) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), name_length);
  const std::string_view v(reinterpret_cast<const char*>(value), value_length);
  if (n == ":status") {
    std::from_chars(v.data(), v.data() + v.size(), self->http_status_);
  } else if (n == "grpc-status") {
    self->grpc_status_.assign(v);
  } else if (n == "grpc-message") {
    self->grpc_message_.assign(v.substr(0, 200));
  }
  return 0;
}

int GrpcCheck::OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id,
                           const uint8_t* data, size_t length, void* arg) {
  auto* self = static_cast<GrpcCheck*>(arg);
  if (stream_id != self->stream_) return 0;
  const size_t room =
      kMaxMessage - std::min(kMaxMessage, self->message_.size());
  self->message_.append(reinterpret_cast<const char*>(data),
                        std::min(room, length));
  return 0;
}

int GrpcCheck::OnStreamClose(nghttp2_session*, int32_t stream_id,
                             uint32_t error_code, void* arg) {
  auto* self = static_cast<GrpcCheck*>(arg);
  if (stream_id == self->stream_) self->Judge(error_code);
  return 0;
}

void GrpcCheck::Judge(uint32_t error_code) {
  if (error_code != NGHTTP2_NO_ERROR) {
    Decide(false,
           std::string("stream reset: ") + nghttp2_http2_strerror(error_code));
  } else if (http_status_ != 200) {
    Decide(false, "HTTP " + std::to_string(http_status_));
  } else if (grpc_status_ != "0") {
    Decide(false,
           "grpc-status " +
               (grpc_status_.empty() ? std::string("missing") : grpc_status_) +
               (grpc_message_.empty() ? "" : " (" + grpc_message_ + ")"));
  } else if (message_.size() < 5) {
    Decide(false, "no HealthCheckResponse");
  } else {
    const int status = GrpcServingStatus(std::string_view(message_).substr(5));
    if (status < 0) {
      Decide(false, "invalid HealthCheckResponse");
    } else {
      Decide(status == 1, StatusName(status));
    }
  }
}

void GrpcCheck::Decide(bool passed, std::string detail) {
  if (decided_) return;
  decided_ = true;
  passed_ = passed;
  detail_ = std::move(detail);
}

}  // namespace tandem::health
