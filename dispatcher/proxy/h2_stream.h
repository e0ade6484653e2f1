// One HTTP/2 stream of an H2Connection: the Downstream of one Exchange.
// Its request's fields become an HTTP/1.1 head read by the request parser
// (net/h2_message.h), so every request rule and limit applies per stream;
// DATA frames are framed into the same byte stream and the parser takes
// them only as fast as the backend does, and only then does the stream's
// window open again. The response goes out as HEADERS, DATA from a bounded
// buffer, and trailers.
#pragma once

#include <event2/buffer.h>

#include <chrono>
#include <cstdint>
#include <memory>

#include "dispatcher/proxy/exchange.h"
#include "net/event_ptr.h"
#include "net/h2_message.h"
#include "net/http_parser.h"

namespace tandem::dispatcher {

class H2Connection;
class Generation;

class H2Stream final : private net::HttpParser::Handler, private Downstream {
 public:
  H2Stream(H2Connection& connection, int32_t id);
  ~H2Stream() override;
  H2Stream(const H2Stream&) = delete;
  H2Stream& operator=(const H2Stream&) = delete;

  // ---- from the connection --------------------------------------------
  void AddTrailer(std::string_view name, std::string_view value);
  // The request's fields are all here, in `head` (`end_stream`: no body
  // follows).
  void OnHead(net::H2RequestHead& head, bool end_stream);
  void OnData(const uint8_t* data, size_t length);
  // The request ended (after DATA or trailers).
  void OnEndStream();

  // The response's last frame went out.
  void OnResponseSent();
  // The response buffer has room again.
  void OnDrained() { exchange_.OnDownstreamDrained(); }
  // nghttp2's data source: how much the next DATA frame carries. The bytes
  // stay in out_ (NGHTTP2_DATA_FLAG_NO_COPY) until SendData moves them.
  static ssize_t ReadResponse(nghttp2_session*, int32_t stream_id,
                              uint8_t* buffer, size_t length,
                              uint32_t* data_flags, nghttp2_data_source* source,
                              void*);
  // nghttp2's send_data_callback: the DATA frame goes out, its payload
  // moved from out_ to the connection's output (whole chains, not copied).
  static int SendData(nghttp2_session*, nghttp2_frame* frame,
                      const uint8_t* header, size_t length,
                      nghttp2_data_source* source, void*);
  // nghttp2 closed the stream, or the connection ends: a request still in
  // progress ends (DC).
  void Abort();

  int32_t id() const { return id_; }
  bool head_done() const { return head_done_; }
  std::chrono::steady_clock::time_point began() const { return began_; }
  // Its exchange ended but the response is not all out (a client that
  // grants no window): since when.
  bool lingering() const { return exchange_ended_ && !closed_; }
  std::chrono::steady_clock::time_point ended_at() const { return ended_at_; }
  void Reset(uint32_t code);
  uint64_t BufferedBytes() const;

  // The connection's list of open streams.
  H2Stream* next = nullptr;
  H2Stream* prev = nullptr;

 private:
  // Feeds the parser what it may take now.
  void ParseRequest();
  // What the parser said, having taken request body up to `before` before.
  void OnParsed(net::HttpParser::Result result, uint64_t before);
  // The request's bytes not yet parsed (made when the first one comes).
  evbuffer* input();
  void OnRequestHead(bool complete);
  // The request cannot be served: answered by the exchange with `status`.
  void RejectHead(int status, const char* reason);
  bool MayFeed() const;
  // Opens the stream's window by `bytes` of request body taken (at most
  // what arrived and was not credited yet).
  void Credit(uint64_t bytes);

  // net::HttpParser::Handler.
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser& parser) override;
  void OnBody(net::HttpParser& parser, const char* data,
              size_t length) override;
  void OnMessageComplete(net::HttpParser&) override {}

  // Downstream.
  ListenerRuntime& listener() const override { return *listener_; }
  const net::HttpParser& request() const override { return *request_; }
  std::string_view client_address() const override;
  std::string_view client_ip() const override;
  std::string_view protocol() const override { return "HTTP/2.0"; }
  bool grpc() const override { return grpc_; }
  const net::ProxyTlvs* proxy_tlvs() const override;
  const std::string& ProxyHeader(int version) override;
  void ContinueRequest() override;
  void RequestDrained() override;
  const char* CannotCarry(const net::HttpParser& response) const override;
  void SendInterim(const net::HttpParser& response) override;
  void SendResponseHead(const net::HttpParser& response) override;
  void SendResponseBody(const char* data, size_t length) override;
  void SendResponseEnd(const net::HeaderList& trailers) override;
  bool ResponseOutputFull() const override;
  LocalReply SendLocalResponse(int status, const char* detail, bool close,
                               std::string_view extra_fields) override;
  void StartTunnel() override;
  void TunnelBackendRead() override {}
  void TunnelBackendDrained() override {}
  void TunnelBackendClosed(short) override {}
  void ExchangeEnded(End end) override;

  // Queues the response HEADERS (with a body to follow unless `no_body`).
  void SubmitHead(bool no_body);

  H2Connection& connection_;
  int32_t id_;
  Generation* generation_;  // held until the stream ends
  ListenerRuntime* listener_;
  std::unique_ptr<net::HttpParser> request_;  // lent by the loop
  net::H2RequestTrailers trailers_;
  // Request body (and trailers) as HTTP/1.1 bytes, not yet parsed; none
  // until some comes: the head is parsed where it is built.
  net::EvbufferPtr in_;
  net::EvbufferPtr out_;  // response body not yet in a DATA frame
  net::HeaderList response_trailers_;
  std::chrono::steady_clock::time_point began_;
  std::chrono::steady_clock::time_point ended_at_;
  uint64_t unconsumed_ = 0;      // DATA bytes whose window was not given back
  bool head_done_ = false;       // every field of the head arrived
  bool chunked_ = false;         // the body is framed as chunks for the parser
  bool end_stream_ = false;      // the client ended its side
  bool head_pending_ = false;    // a parsed head awaits OnRequestHead()
  bool begun_ = false;           // the exchange has the request
  bool paused_at_head_ = false;  // the parser waits before the body
  bool blocked_ = false;         // the backend's output is full
  bool expect_continue_ = false;
  bool continue_sent_ = false;
  bool response_submitted_ = false;
  bool response_ended_ = false;  // every body byte is in out_
  bool has_trailers_ = false;
  bool grpc_ = false;  // the request's content-type is application/grpc*
  bool data_deferred_ = false;          // the data source said DEFERRED
  mutable bool full_reported_ = false;  // ResponseOutputFull said so
  bool exchange_ended_ = false;
  bool closed_ = false;  // nghttp2 closed the stream
  Exchange exchange_;
};

}  // namespace tandem::dispatcher
