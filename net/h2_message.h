// HTTP/2 messages in and out of tandem's HTTP/1.1 model (RFC 9113 §8.2–8.3,
// docs/http2.md). A request's fields, as nghttp2 hands them over (already
// checked: lowercase names, no connection-specific field, pseudo-fields
// first and well-formed), become the HTTP/1.1 head the request parser
// reads, so every rule and limit of an HTTP/1.1 request holds for a stream;
// a response head as the response parser holds it becomes the fields of a
// HEADERS frame.
#pragma once

#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/http_message.h"
#include "net/http_parser.h"

namespace tandem::net {

// The HTTP/1.1 head of one HTTP/2 request, built field by field. One serves
// a whole connection: header blocks never interleave (RFC 9113 §4.3), so
// each block starts it anew and its buffers keep their size.
class H2RequestHead {
 public:
  // Fields past `max_bytes` (names, values and 4 bytes each, as
  // SETTINGS_MAX_HEADER_LIST_SIZE counts them, with 32) are not kept: the
  // request is then answered 431.
  explicit H2RequestHead(uint64_t max_bytes) { Start(max_bytes); }

  // A new request's head begins.
  void Start(uint64_t max_bytes);
  void Add(std::string_view name, std::string_view value);
  // The head is complete (`end_stream`: no body follows): appends the
  // HTTP/1.1 head to `out`, with Transfer-Encoding: chunked when a body of
  // unknown length follows (then `*chunked` is set). False when the request
  // cannot be carried (`error_status()`, `error_reason()`).
  bool Write(bool end_stream, std::string* out, bool* chunked);

  bool too_large() const { return bytes_ > max_bytes_; }
  int error_status() const { return error_status_; }
  const char* error_reason() const { return error_reason_; }
  // Whether the request is gRPC (content-type application/grpc...).
  bool grpc() const { return grpc_; }

 private:
  bool Fail(int status, const char* reason) {
    error_status_ = status;
    error_reason_ = reason;
    return false;
  }

  uint64_t max_bytes_;
  uint64_t bytes_ = 0;
  std::string method_, scheme_, authority_, path_;
  std::string host_;     // a Host field, checked against :authority
  std::string cookies_;  // every cookie field, joined with "; "
  std::string fields_;   // the other fields as "name: value\r\n" lines
  bool content_length_ = false;
  bool grpc_ = false;
  int error_status_ = 0;
  const char* error_reason_ = "";
};

// Trailer fields of an HTTP/2 request, as the chunked body's end carries
// them ("0\r\n" + fields + "\r\n"); bounded as the head is.
class H2RequestTrailers {
 public:
  explicit H2RequestTrailers(uint64_t max_bytes) : max_bytes_(max_bytes) {}
  void Add(std::string_view name, std::string_view value);
  bool too_large() const { return bytes_ > max_bytes_; }
  // Appends the last chunk with the trailers to `out`.
  void Write(std::string* out) const;

 private:
  uint64_t max_bytes_;
  uint64_t bytes_ = 0;
  std::string fields_;
};

// The fields of a HEADERS frame made from an HTTP/1.1 head, with the
// storage they point into (names lowercased). Hop-by-hop fields and those
// Connection names are left out; Content-Length is kept when the message
// had one (RFC 9113 §8.2.2).
class H2Fields {
 public:
  // A request as tandem forwards it to an HTTP/2 backend (`request` holds
  // the head tandem wrote, origin-form): :method, :scheme, :authority from
  // Host (else `default_authority`), :path; TE only as "trailers".
  void BuildRequest(const HttpParser& request, std::string_view scheme,
                    std::string_view default_authority);
  // `response` as the response parser holds it; `head_request`: the answer
  // to a HEAD (its Content-Length describes a GET's).
  void Build(const HttpParser& response, bool head_request);
  // A head with only `status` (100 Continue).
  void BuildStatus(int status);
  // tandem's own answer: `status` and `fields` (each "Name: value\r\n").
  void BuildLocal(int status, std::string_view content_type,
                  uint64_t content_length, std::string_view fields);
  // Trailer fields (framing and routing fields left out).
  void BuildTrailers(const HeaderList& trailers);
  // A Trailers-Only gRPC answer of tandem's own (HTTP 200, no DATA):
  // grpc-status `code` and grpc-message `message` (percent-encoded).
  void BuildGrpcStatus(int code, std::string_view message);

  const nghttp2_nv* data() const { return nva_.data(); }
  size_t size() const { return nva_.size(); }

 private:
  void Clear();
  void Add(std::string_view name, std::string_view value, bool lowercase);
  // Points the entries at storage_ once it no longer moves.
  void Finish();

  std::string storage_;
  struct Span {
    size_t name, name_length, value, value_length;
  };
  std::vector<Span> spans_;
  std::vector<nghttp2_nv> nva_;
};

// The gRPC status tandem answers a gRPC client for its own HTTP `status`
// (docs/http2.md): no backend 14 UNAVAILABLE, timeout 4 DEADLINE_EXCEEDED,
// overload or rate limit 8 RESOURCE_EXHAUSTED (`overload`: the answer
// carries Retry-After), others 13 INTERNAL or 3 INVALID_ARGUMENT.
int GrpcStatusFor(int status, bool overload);

// A grpc-timeout value ("100m", "5S": at most 8 digits and one of H M S m u
// n); nullopt when malformed. And the value tandem forwards for `left`.
std::optional<std::chrono::nanoseconds> ParseGrpcTimeout(
    std::string_view value);
std::string FormatGrpcTimeout(std::chrono::nanoseconds left);

}  // namespace tandem::net
