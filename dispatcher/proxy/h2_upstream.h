// HTTP/2 to one backend from one loop thread (cluster protocol "h2" or
// "h2c", docs/http2.md): a few sessions, each one backend connection made by
// the pool, carry the requests as streams. Each try still sees an
// UpstreamConnection speaking HTTP/1.1: its output and input are buffers of
// the stream's own (no socket), and an H2UpstreamStream turns the request
// bytes the try writes into a stream's frames and the stream's frames into
// response bytes the try reads. So the attempt's parsing, timeouts, retries
// and hang detection stay as they are. The try's callbacks come from an
// event of the stream's, never from inside nghttp2, and a stream's window
// opens only as its try reads the response.
#pragma once

#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dispatcher/proxy/upstream.h"
#include "net/event_ptr.h"
#include "net/http_parser.h"

namespace tandem::dispatcher {

class H2Session;
class H2UpstreamStream;

class H2Upstream {
 public:
  H2Upstream(BackendPool& pool, bool tls, uint64_t max_requests_per_connection);
  ~H2Upstream();
  H2Upstream(const H2Upstream&) = delete;
  H2Upstream& operator=(const H2Upstream&) = delete;

  void set_max_requests_per_connection(uint64_t max) {
    max_requests_per_connection_ = max;
  }
  // A stream for `user` on a session that is ready (`connect`: or on one
  // being made, or a new one); nullptr when there is none (or no connection
  // could be made). A stream on a session being made reports
  // OnUpstreamConnected once it is ready.
  UpstreamConnection* OpenStream(UpstreamUser* user,
                                 const std::string& preamble, bool connect);
  // The try is over with `connection` (a stream's end): the stream is reset
  // if it is still open, and freed.
  void CloseStream(UpstreamConnection* connection);
  // Sessions without streams for `max_age` (every idle one when zero) end.
  void CloseIdle(std::chrono::steady_clock::duration max_age);
  // Streams the ready sessions could still take.
  size_t free_streams() const;

  BackendPool& pool() const { return pool_; }
  bool tls() const { return tls_; }
  uint64_t max_requests_per_connection() const {
    return max_requests_per_connection_;
  }
  // A session ended: it is freed once its callbacks are done.
  void Retire(H2Session* session);

  // For UpstreamConnection, on a stream's end: the try wrote to its output;
  // reading the response on or off.
  static void Wrote(H2UpstreamStream* stream);
  static void SetReading(H2UpstreamStream* stream, bool on);
  static std::optional<uint32_t> WindowBeforeHeard(
      const H2UpstreamStream* stream);

 private:
  void DeleteRetired();

  BackendPool& pool_;
  bool tls_;
  uint64_t max_requests_per_connection_;
  std::vector<std::unique_ptr<H2Session>> sessions_;
  std::vector<std::unique_ptr<H2Session>> retired_;
};

}  // namespace tandem::dispatcher
