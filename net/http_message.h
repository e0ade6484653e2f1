// Writing the heads tandem sends: a request to a backend and a response to a
// client, with hop-by-hop fields removed and forwarding fields added
// (RFC 9110 §7.6, RFC 9112, RFC 7239), and tandem's own short answers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "net/http_parser.h"

namespace tandem::net {

struct RequestForwarding {
  std::string_view client_ip;  // the client's address, no port
  bool client_tls = false;     // the scheme the client used
  bool upgrade = false;        // forward Upgrade (the parser saw a valid one)
  // Host for a request that has none (HTTP/1.0): HTTP/1.1 to the backend
  // needs one; the backend's own address, as nginx's $proxy_host.
  std::string_view default_host;
  // A gRPC deadline's time left ("250m"): replaces the client's grpc-timeout.
  std::string_view grpc_timeout;
};

// Whether `request` carries "Expect: 100-continue" (HTTP/1.1 only; 1.0
// clients' expectations are ignored, RFC 9110 §10.1.1).
bool ExpectsContinue(const HttpParser& request);
// Whether the request has an Expect other than 100-continue (answer 417).
bool HasUnsupportedExpectation(const HttpParser& request);
// Whether `request` asks to upgrade to a protocol tandem forwards (never h2c).
bool WantsUpgrade(const HttpParser& request);
// Idempotent methods per RFC 9110 §9.2.2 (may be retried on another backend).
bool IsIdempotent(const HttpParser& request);

// Work a head writer did, for tests that bound it.
struct HeadWriteStats {
  // Comparisons of a field name with a name the Connection fields list.
  uint64_t name_comparisons = 0;
};

// Appends the field line "name: value\r\n" to `out`.
void AppendField(std::string_view name, std::string_view value,
                 std::string* out);
// Whether `name` is one of the hop-by-hop fields RFC 9110 §7.6.1 removes,
// or one tandem always rewrites itself (Content-Length, Transfer-Encoding).
bool IsHopByHop(std::string_view name);
// Whether a trailer field `name` is left out when tandem forwards trailers:
// framing, routing and connection fields (RFC 9110 §6.5.1; HTTP/2 allows no
// connection-specific field at all).
bool DroppedFromTrailers(std::string_view name);

// Which fields of a head end at this hop: the hop-by-hop ones tandem
// removes or rewrites (RFC 9110 §7.6.1: Connection, Keep-Alive, TE,
// Upgrade, Transfer-Encoding, Content-Length...) and those its Connection
// fields name. The work is the number of fields plus the names Connection
// lists, never their product.
class HopFields {
 public:
  explicit HopFields(const HeaderList& headers,
                     HeadWriteStats* stats = nullptr);
  // Whether field `i` of the head stops here.
  bool operator()(size_t i) const;

 private:
  const HeaderList& headers_;
  std::vector<bool> named_;  // empty: Connection names nothing else
};

// Appends to `out` the request head for the request `request` holds: HTTP/1.1,
// origin-form target, Host kept (or taken from an absolute-form target),
// hop-by-hop fields removed, X-Forwarded-For / X-Forwarded-Proto / Forwarded
// set, and framing for `request.framing()`. Adds its work to `stats` if set.
void AppendRequestHead(const HttpParser& request,
                       const RequestForwarding& forwarding, std::string* out,
                       HeadWriteStats* stats = nullptr);

// How a response is framed towards a client.
struct ResponsePlan {
  Framing framing = Framing::kNone;  // kUntilClose: the connection closes after
  bool close = false;                // send "Connection: close" and close after
};

// Decides the framing of `response` (a reply to `request_method`) towards a
// client speaking HTTP/1.`client_minor`; `client_keep_alive` is whether the
// client wants to keep its connection. A response whose last transfer
// coding is not chunked is relayed as it came, delimited by close.
ResponsePlan PlanResponse(const HttpParser& response, bool head_request,
                          int client_minor, bool client_keep_alive);

// Appends to `out` the response head for the response `response` holds.
// Adds its work to `stats` if set.
void AppendResponseHead(const HttpParser& response, const ResponsePlan& plan,
                        int client_minor, bool head_request, std::string* out,
                        HeadWriteStats* stats = nullptr);

// Appends a complete short response of tandem's own: `status`, a plain-text
// body "<status> <phrase>: <detail>\n"; closes when `close`.
void AppendSimpleResponse(int status, std::string_view detail, bool close,
                          int client_minor, std::string* out);
// Extra field lines (each ending in CRLF) for AppendSimpleResponse.
void AppendSimpleResponse(int status, std::string_view detail, bool close,
                          int client_minor, std::string_view extra_fields,
                          std::string* out);

// The body of tandem's own answers: "<status> <phrase>: <detail>\n".
void AppendSimpleBody(int status, std::string_view detail, std::string* out);

// The reason phrase for `status` ("Bad Gateway"), or "" when unknown.
std::string_view ReasonPhrase(int status);

// Chunk framing: a chunk header for `length` bytes ("1a2b\r\n").
void AppendChunkHeader(uint64_t length, std::string* out);
// The end of a chunked body with the trailers the parser collected.
void AppendLastChunk(const HeaderList& trailers, std::string* out);

}  // namespace tandem::net
