// One HTTP/1.1 client connection: its socket and bufferevent, TLS, the
// request codec, back-pressure by watermarks (as libevent's le-proxy), the
// tunnel after a 101, keep-alive, parking between requests and the closing
// handshake. It carries one Exchange at a time (the request and its
// routing, tries and log live there) as that exchange's Downstream.
#pragma once

#include <event2/event_struct.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/exchange.h"
#include "dispatcher/proxy/front_connection.h"
#include "net/direct_io.h"
#include "net/event_ptr.h"
#include "net/http_parser.h"
#include "net/proxy_protocol.h"

namespace tandem::dispatcher {

class ClientConnection final : public FrontConnection,
                               private net::HttpParser::Handler,
                               private Downstream {
 public:
  // Takes ownership of `fd`, accepted on `listener` of `generation`.
  static void Accept(Loop& loop, Generation& generation,
                     ListenerRuntime& listener, evutil_socket_t fd,
                     const sockaddr* address, int length);

  // The PROXY header of a connection accepted on a proxy_protocol listener
  // has ended: it goes on as accepted from `address` ("ip:port", the first
  // `ip_length` bytes the ip). False (and `fd` closed) when that fails.
  static bool AcceptAfterProxyHeader(Loop& loop, Generation& generation,
                                     ListenerRuntime& listener,
                                     evutil_socket_t fd,
                                     std::string_view address, size_t ip_length,
                                     std::unique_ptr<net::ProxyTlvs> tlvs);

  // A parked connection became readable: a ClientConnection takes `fd`
  // back with a bufferevent from the loop, the timer set to `deadline`, and
  // reads. False (and `fd` closed) when that fails.
  static bool Resume(Loop& loop, Generation& generation,
                     ListenerRuntime& listener, evutil_socket_t fd,
                     std::string_view address, size_t ip_length,
                     std::chrono::steady_clock::time_point deadline,
                     bool first_request, std::unique_ptr<net::ProxyTlvs> tlvs);

  // FrontConnection. BufferedBytes: client and backend, both directions,
  // the kept retry body, its parsers' fields.
  void CloseWhenIdle() override;
  void Abort() override;
  uint64_t BufferedBytes() const override;

 private:
  enum class State : uint8_t {
    kIdle,      // waiting for a request head (or its rest)
    kExchange,  // a request is being served
    kTunnel,    // after 101: bytes copied both ways
    kClosing,   // flushing the last bytes, then close
  };

  // How a connection resumed from parking goes on.
  struct Resumed {
    std::chrono::steady_clock::time_point deadline;
    bool first_request;
    std::unique_ptr<net::ProxyTlvs> proxy_tlvs;  // moved into the connection
  };

  // A newly accepted connection (`resumed` null), or a parked one taken
  // back; `address` is the client's "ip:port", its first `ip_length` bytes
  // the ip. Null (and `bev` freed) when it cannot start.
  static ClientConnection* Create(Loop& loop, Generation& generation,
                                  ListenerRuntime& listener,
                                  net::BufferEventPtr bev,
                                  std::string_view address, size_t ip_length,
                                  Resumed* resumed);
  ClientConnection(Loop& loop, Generation& generation,
                   ListenerRuntime& listener, net::BufferEventPtr bev,
                   std::string_view address, size_t ip_length,
                   Resumed* resumed);
  ~ClientConnection() override;
  static net::BufferEventPtr NewBufferEvent(Loop& loop,
                                            ListenerRuntime& listener,
                                            evutil_socket_t fd);
  // Ends the connection: every event stops now, the exchange leaves queues
  // and ends its try, and the loop deletes the object once the callbacks
  // of this turn are done (the one lifetime rule, docs/architecture.md).
  void Destroy();

  // libevent entry points.
  static void ReadCb(bufferevent* bev, void* arg);
  static void WriteCb(bufferevent* bev, void* arg);
  static void EventCb(bufferevent* bev, short events, void* arg);
  static void TimerCb(evutil_socket_t, short, void* arg);
  void OnClientRead();
  void OnClientDrained();
  void OnClientEvent(short events);
  void OnTimer();
  // Resume(): the first read, done at once.
  void ReadResumed();
  // Idle with nothing buffered either way: the connection may be parked.
  bool Parkable() const;
  // Hands the socket to a ParkedConnection and destroys this one.
  bool Park();
  // What the client speaks, from ALPN or its first bytes (kUnknown: too few
  // bytes yet; kNone: nothing this listener serves).
  enum class Protocol : uint8_t { kHttp1, kHttp2, kUnknown, kNone };
  Protocol ProtocolOf();
  // An H2Connection takes the socket and this one is destroyed.
  void HandToHttp2();

  // The request codec.
  void ParseRequest();
  void OnRequestHead(bool complete);
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser& parser) override;
  void OnBody(net::HttpParser& parser, const char* data,
              size_t length) override;
  void OnMessageComplete(net::HttpParser& parser) override;

  // Downstream.
  ListenerRuntime& listener() const override { return *listener_; }
  const net::HttpParser& request() const override { return *request_; }
  std::string_view client_address() const override { return client_address_; }
  std::string_view client_ip() const override {
    return std::string_view(client_address_).substr(0, client_ip_length_);
  }
  bool grpc() const override { return false; }  // gRPC needs HTTP/2
  std::string_view protocol() const override {
    return request_->http_minor() == 0 ? "HTTP/1.0" : "HTTP/1.1";
  }
  const net::ProxyTlvs* proxy_tlvs() const override {
    return proxy_tlvs_.get();
  }
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
  void TunnelBackendRead() override;
  void TunnelBackendDrained() override;
  void TunnelBackendClosed(short events) override;
  void ExchangeEnded(End end) override;

  // The next request on a kept-alive connection.
  void NextRequest();
  void PumpTunnel(evbuffer* from, evbuffer* to, bufferevent* from_bev);
  // After a tunnel side's end of stream: shuts the other side's writing once
  // its output is flushed, and ends the tunnel when both directions are done.
  void TunnelFlushed();
  void CloseAfterFlush();
  void FinishClose();
  void ArmTimer(std::chrono::steady_clock::duration delay);
  // Idle until `deadline`: the timer fires then, or earlier to park.
  void ArmIdleTimer(std::chrono::steady_clock::time_point deadline);
  evbuffer* output() const { return bufferevent_get_output(bev_.get()); }
  // Bytes were added to the output: a plain connection writes them at the
  // end of this loop turn (net::WriteBehind), a TLS one when libevent does.
  void WriteSoon();
  evbuffer* input() const { return bufferevent_get_input(bev_.get()); }

  Loop& loop_;
  Generation* generation_;
  ListenerRuntime* listener_;
  net::BufferEventPtr bev_;
  net::WriteBehind::Slot write_slot_;
  struct event timer_;
  std::unique_ptr<net::HttpParser> request_;  // lent by the loop
  std::string client_address_;                // "ip:port"
  size_t client_ip_length_ = 0;  // the "ip" prefix of client_address_
  std::unique_ptr<net::ProxyTlvs> proxy_tlvs_;  // from a PROXY v2 header
  std::string proxy_header_out_;  // send_proxy's header for this client
  int proxy_header_version_ = 0;  // its version, 0 while none is made
  // While idle: when idle_timeout (or, before a first request,
  // client_header_timeout) ends.
  std::chrono::steady_clock::time_point idle_deadline_;
  State state_ = State::kIdle;
  bool destroyed_ = false;        // Destroy() was called
  bool close_when_idle_ = false;  // shutting down
  bool first_request_ = true;
  bool header_timer_armed_ = false;
  bool closing_shutdown_ = false;  // write side shut, waiting for the client
  bool reset_on_close_ = false;    // end with an RST, not a FIN
  bool tls_established_ = false;   // the client's TLS handshake completed
  bool client_eof_ = false;        // the client half-closed
  bool parked_ = false;            // the socket went to a ParkedConnection
  bool handed_over_ = false;       // the socket went to an H2Connection

  // How HTTP/1.1 carries the current request and its response on this
  // connection; `message_ = {}` when the next request begins.
  struct Message {
    bool head_pending = false;    // a request head awaits OnRequestHead()
    bool paused_at_head = false;  // the request parser waits before the body
    bool request_upgrade_paused = false;  // stopped at an upgrade boundary
    bool expect_continue = false;
    bool continue_sent = false;
    bool client_keep_alive = true;
    bool request_blocked = false;      // client reads off: backend output full
    bool response_close = false;       // close the client after this response
    bool tunnel_client_shut = false;   // the client was sent our FIN
    bool tunnel_backend_shut = false;  // the backend was sent our FIN
    bool tunnel_backend_eof = false;   // the backend ended its side
    net::Framing response_framing = net::Framing::kNone;
  };
  Message message_;
  Exchange exchange_{loop_, *this};
};

}  // namespace tandem::dispatcher
