// One HTTP/2 client connection (RFC 9113) with nghttp2: its socket and
// bufferevent (TLS after ALPN "h2", or plain after the h2c preface), the
// session, flow control tied to each stream's backend, abuse limits, and
// the drain with GOAWAY. Each stream is an H2Stream carrying one Exchange,
// so routing, retries and limits are those of an HTTP/1.1 request
// (docs/http2.md).
#pragma once

#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/front_connection.h"
#include "net/direct_io.h"
#include "net/event_ptr.h"
#include "net/h2_message.h"
#include "net/proxy_protocol.h"

namespace tandem::dispatcher {

class H2Stream;

class H2Connection final : public FrontConnection {
 public:
  // Takes over `bev` from the HTTP/1.1 side that found the client speaks
  // HTTP/2 (its input may hold the client's first bytes already).
  static void Start(Loop& loop, Generation& generation,
                    ListenerRuntime& listener, net::BufferEventPtr bev,
                    std::string_view address, size_t ip_length,
                    std::unique_ptr<net::ProxyTlvs> tlvs);

  // FrontConnection. CloseWhenIdle sends the shutdown notice, then GOAWAY
  // with the last stream taken once a PING shows the notice arrived.
  void CloseWhenIdle() override;
  void Abort() override;
  uint64_t BufferedBytes() const override;

  // ---- for its streams ------------------------------------------------
  Loop& loop() const { return loop_; }
  nghttp2_session* session() const { return session_; }
  std::string_view client_address() const { return client_address_; }
  std::string_view client_ip() const {
    return std::string_view(client_address_).substr(0, client_ip_length_);
  }
  const net::ProxyTlvs* proxy_tlvs() const { return proxy_tlvs_.get(); }
  const std::string& ProxyHeader(int version);
  // Fields of a frame being submitted (nghttp2 copies them).
  net::H2Fields& fields() { return fields_; }
  // Frames wait in the session: they go out once this turn's callbacks are
  // done (never from inside a stream's call: nghttp2 may close streams while
  // sending).
  void ScheduleSend();
  // A stream's backend took `bytes` of its request body: its window opens
  // by as much.
  void Consume(int32_t stream_id, size_t bytes);
  // A stream's response buffer has room again: its exchange is told after
  // the send.
  void NoteDrained(H2Stream* stream);

 private:
  H2Connection(Loop& loop, Generation& generation, ListenerRuntime& listener,
               net::BufferEventPtr bev, std::string_view address,
               size_t ip_length, std::unique_ptr<net::ProxyTlvs> tlvs);
  ~H2Connection() override;
  bool Init();
  // Ends the connection now: streams cancelled (logged DC when a request was
  // in progress), events stopped, deleted by the loop.
  void Destroy();

  // libevent entry points.
  static void ReadCb(bufferevent* bev, void* arg);
  static void WriteCb(bufferevent* bev, void* arg);
  static void EventCb(bufferevent* bev, short events, void* arg);
  static void TimerCb(evutil_socket_t, short, void* arg);
  static void SendCb(evutil_socket_t, short, void* arg);
  void OnRead();
  void Send();
  void OnTimer();
  // The timer for what the connection waits on: a stream's head (until
  // client_header_timeout), or no stream at all (idle_timeout).
  void ArmTimer();
  // GOAWAY with `code` and the last stream taken; the connection ends once
  // the streams below it are done.
  void GoAway(uint32_t code);
  void DeleteClosed();

  // nghttp2 callbacks (one set for every session).
  static nghttp2_session_callbacks* Callbacks();
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* arg);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t name_length,
                      const uint8_t* value, size_t value_length, uint8_t flags,
                      void* arg);
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* arg);
  static int OnDataChunk(nghttp2_session*, uint8_t flags, int32_t stream_id,
                         const uint8_t* data, size_t length, void* arg);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* arg);
  static int OnFrameSend(nghttp2_session*, const nghttp2_frame* frame,
                         void* arg);
  H2Stream* StreamOf(int32_t stream_id) const;

  evbuffer* input() const { return bufferevent_get_input(bev_.get()); }
  evbuffer* output() const { return bufferevent_get_output(bev_.get()); }

  Loop& loop_;
  Generation* generation_;
  ListenerRuntime* listener_;
  net::BufferEventPtr bev_;
  net::WriteBehind::Slot write_slot_;  // a plain socket's output
  // TLS: every record a read finds is read in its turn.
  net::TlsReadAhead read_ahead_;
  nghttp2_session* session_ = nullptr;
  struct event timer_;
  struct event send_event_;
  std::string client_address_;
  size_t client_ip_length_ = 0;
  std::unique_ptr<net::ProxyTlvs> proxy_tlvs_;
  std::string proxy_header_out_;
  int proxy_header_version_ = 0;
  net::H2Fields fields_;
  // The head of the stream whose header block is being read (blocks never
  // interleave), built anew for each (OnBeginHeaders).
  net::H2RequestHead request_head_{0};
  // Streams open, and those nghttp2 closed, deleted after its call returns.
  H2Stream* streams_ = nullptr;
  std::vector<H2Stream*> closed_;
  std::vector<int32_t> drained_;  // stream ids whose exchange awaits room
  uint64_t streams_begun_ = 0;
  // Streams whose head is not all in, and streams whose exchange ended but
  // whose response is not all out: only these need the timer to walk them.
  uint32_t heads_waiting_ = 0;
  uint32_t lingering_ = 0;
  // The deadline the timer is armed for (max: disarmed; min: unknown).
  std::chrono::steady_clock::time_point armed_for_ =
      std::chrono::steady_clock::time_point::min();
  std::chrono::steady_clock::time_point idle_since_;
  bool first_stream_ = true;  // client_header_timeout until one begins
  bool send_scheduled_ = false;
  bool draining_ = false;  // the shutdown notice went out
  bool goaway_sent_ = false;
  bool destroyed_ = false;

  friend class H2Stream;
};

}  // namespace tandem::dispatcher
