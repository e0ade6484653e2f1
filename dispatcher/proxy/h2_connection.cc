// One HTTP/2 client connection; see h2_connection.h.
#include "dispatcher/proxy/h2_connection.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <climits>

#include "dispatcher/intrusive_list.h"
#include "dispatcher/proxy/h2_stream.h"
#include "dispatcher/proxy/watermarks.h"
#include "net/direct_io.h"
#include "net/log.h"
#include "net/posix.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;

// How long the drain waits for the PING that follows the shutdown notice
// before it sends the final GOAWAY anyway.
constexpr auto kDrainPingWait = std::chrono::seconds(1);
constexpr uint8_t kDrainPing[8] = {'t', 'a', 'n', 'd', 'e', 'm', 'd', 'r'};

}  // namespace

// ---- making and ending one -------------------------------------------------

void H2Connection::Start(Loop& loop, Generation& generation,
                         ListenerRuntime& listener, net::BufferEventPtr bev,
                         std::string_view address, size_t ip_length,
                         std::unique_ptr<net::ProxyTlvs> tlvs) {
  auto* connection =
      new H2Connection(loop, generation, listener, std::move(bev), address,
                       ip_length, std::move(tlvs));
  if (!connection->Init()) {
    connection->Destroy();
    return;
  }
  // The client's preface (and maybe more) may be read already.
  if (evbuffer_get_length(connection->input()) > 0) {
    connection->OnRead();
  } else {
    connection->Send();  // our SETTINGS
  }
}

H2Connection::H2Connection(Loop& loop, Generation& generation,
                           ListenerRuntime& listener, net::BufferEventPtr bev,
                           std::string_view address, size_t ip_length,
                           std::unique_ptr<net::ProxyTlvs> tlvs)
    : loop_(loop),
      generation_(&generation),
      listener_(&listener),
      bev_(std::move(bev)),
      client_address_(address),
      client_ip_length_(ip_length),
      proxy_tlvs_(std::move(tlvs)) {
  // Counted (accepted, open) by the HTTP/1.1 side that handed it over.
  loop_.Attach(this, generation_);
  listener_->stats->h2_connections.Add();
  evtimer_assign(&timer_, loop_.base(), TimerCb, this);
  event_assign(&send_event_, loop_.base(), -1, 0, SendCb, this);
  idle_since_ = net::TurnClock::Now();
}

bool H2Connection::Init() {
  const conf::Listener& config = *listener_->config;
  nghttp2_option* option = nullptr;
  if (nghttp2_option_new(&option) != 0) return false;
  // Stream windows open as backends take request bodies (Consume), the
  // connection's as bytes arrive.
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_no_closed_streams(option, 1);
  const int rv =
      nghttp2_session_server_new2(&session_, Callbacks(), this, option);
  nghttp2_option_del(option);
  if (rv != 0) {
    session_ = nullptr;
    return false;
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
       config.h2_max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
       static_cast<uint32_t>(config.h2_initial_window_size)},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       static_cast<uint32_t>(std::min<uint64_t>(
           config.max_header_size_bytes + 32 * net::kDefaultMaxFields,
           UINT32_MAX))},
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings,
                              std::size(settings)) != 0) {
    return false;
  }
  // The connection's window is never what holds a stream back: each
  // stream's window bounds what it may buffer.
  const uint64_t window = std::min<uint64_t>(
      INT32_MAX, std::max<uint64_t>(NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE,
                                    uint64_t{config.h2_max_concurrent_streams} *
                                        config.h2_initial_window_size));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(window));
  bufferevent* bev = bev_.get();
  bufferevent_setcb(bev, ReadCb, WriteCb, EventCb, this);
  bufferevent_setwatermark(bev, EV_READ, 0, 0);
  bufferevent_setwatermark(bev, EV_WRITE, kOutputLowWater, 0);
  bufferevent_set_max_single_read(bev, kMaxSingleRead);
  if (bufferevent_enable(bev, EV_READ | EV_WRITE) != 0) return false;
  read_ahead_.Start(bev);
  ArmTimer();
  return true;
}

void H2Connection::Destroy() {
  if (destroyed_) return;
  destroyed_ = true;
  read_ahead_.Stop();
  if (bev_) bufferevent_disable(bev_.get(), EV_READ | EV_WRITE);
  loop_.write_behind().Cancel(&write_slot_);
  event_del(&timer_);
  event_del(&send_event_);
  while (streams_ != nullptr) {
    H2Stream* stream = streams_;
    Unlink(streams_, stream);
    stream->Abort();
    closed_.push_back(stream);
  }
  loop_.Retire(this);
}

H2Connection::~H2Connection() {
  loop_.write_behind().Cancel(&write_slot_);
  event_del(&timer_);
  event_del(&send_event_);
  DeleteClosed();
  if (session_ != nullptr) nghttp2_session_del(session_);
  listener_->stats->connections_open.Add(-1);
  loop_.Forget(generation_);
}

void H2Connection::CloseWhenIdle() {
  if (draining_ || destroyed_) return;
  draining_ = true;
  // The notice says no new stream may begin; the final GOAWAY, once a round
  // trip shows the client has it, names the last stream taken (RFC 9113
  // §6.8). Streams begun before it finish within the grace period.
  // (Its PING goes once the notice is out: OnFrameSend.)
  nghttp2_submit_shutdown_notice(session_);
  timeval tv = net::ToTimeval(kDrainPingWait);
  event_add(&timer_, &tv);
  armed_for_ = Clock::time_point::min();
  Send();
}

void H2Connection::Abort() { Destroy(); }

uint64_t H2Connection::BufferedBytes() const {
  uint64_t bytes = evbuffer_get_length(input()) + evbuffer_get_length(output());
  for (const H2Stream* s = streams_; s != nullptr; s = s->next)
    bytes += s->BufferedBytes();
  return bytes;
}

const std::string& H2Connection::ProxyHeader(int version) {
  if (proxy_header_version_ != version) {
    proxy_header_out_ =
        net::BuildProxyHeaderFor(version, client_address_, client_ip_length_,
                                 bufferevent_getfd(bev_.get()));
    proxy_header_version_ = version;
  }
  return proxy_header_out_;
}

// ---- libevent entry points --------------------------------------------------

void H2Connection::ReadCb(bufferevent*, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (self->destroyed_) return;
  const size_t bytes = evbuffer_get_length(self->input());
  self->OnRead();
  // The streams' requests leave now; a connection ended inside lives until
  // the turn's end (Loop::Retire).
  self->loop_.FlushBackendWrites();
  if (!self->destroyed_) self->read_ahead_.AfterRead(bytes);
}

void H2Connection::WriteCb(bufferevent*, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (!self->destroyed_) self->Send();
}

void H2Connection::EventCb(bufferevent*, short events, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (self->destroyed_) return;
  if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    if (self->bev_ && bufferevent_openssl_get_ssl(self->bev_.get()) != nullptr)
      while (bufferevent_get_openssl_error(self->bev_.get()) != 0) {
      }
    self->Destroy();
  }
}

void H2Connection::TimerCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (!self->destroyed_) self->OnTimer();
}

void H2Connection::SendCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (!self->destroyed_) self->Send();
}

void H2Connection::OnRead() {
  evbuffer* in = input();
  size_t total = 0;
  while (evbuffer_get_length(in) > 0 && !destroyed_) {
    evbuffer_iovec piece;
    if (evbuffer_peek(in, -1, nullptr, &piece, 1) < 1) break;
    const ssize_t n = nghttp2_session_mem_recv(
        session_, static_cast<const uint8_t*>(piece.iov_base), piece.iov_len);
    if (n < 0) {
      // A flood, a bad preface, or a peer nghttp2 cannot go on with: what
      // GOAWAY it queued goes out, then the connection ends.
      // (A GOAWAY nghttp2 queued is counted as it goes out.)
      if (n == NGHTTP2_ERR_FLOODED) {
        listener_->stats->CountH2Error(H2Error::kFlood);
      } else if (n == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
        listener_->stats->CountH2Error(H2Error::kBadPreface);
      }
      evbuffer_drain(in, evbuffer_get_length(in));
      Send();
      Destroy();
      DeleteClosed();
      return;
    }
    total += static_cast<size_t>(n);
    evbuffer_drain(in, static_cast<size_t>(n));
  }
  listener_->stats->bytes_received.Add(total);
  DeleteClosed();
  if (!destroyed_) Send();
}

void H2Connection::ScheduleSend() {
  if (send_scheduled_ || destroyed_) return;
  send_scheduled_ = true;
  event_active(&send_event_, EV_TIMEOUT, 0);
}

void H2Connection::Send() {
  send_scheduled_ = false;
  evbuffer* out = output();
  while (evbuffer_get_length(out) < kOutputHighWater) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      Destroy();
      break;
    }
    if (n == 0) break;
    evbuffer_add(out, data, static_cast<size_t>(n));
  }
  // Written at the end of this turn.
  if (evbuffer_get_length(out) > 0)
    loop_.write_behind().Add(bev_.get(), &write_slot_);
  DeleteClosed();
  if (destroyed_) return;
  // Exchanges waiting for room in their response buffers go on (the list
  // keeps its capacity: no allocation per stream).
  for (size_t i = 0; i < drained_.size(); ++i) {
    if (H2Stream* stream = StreamOf(drained_[i])) stream->OnDrained();
  }
  drained_.clear();
  if (!nghttp2_session_want_read(session_) &&
      !nghttp2_session_want_write(session_) && evbuffer_get_length(out) == 0) {
    // GOAWAY went out and every stream is done, or the session failed.
    Destroy();
    return;
  }
  ArmTimer();
}

void H2Connection::Consume(int32_t stream_id, size_t bytes) {
  if (bytes == 0 || destroyed_) return;
  nghttp2_session_consume_stream(session_, stream_id, bytes);
  ScheduleSend();
}

void H2Connection::NoteDrained(H2Stream* stream) {
  drained_.push_back(stream->id());
}

H2Stream* H2Connection::StreamOf(int32_t stream_id) const {
  return static_cast<H2Stream*>(
      nghttp2_session_get_stream_user_data(session_, stream_id));
}

void H2Connection::DeleteClosed() {
  // By index: a stream's destructor may not close another, but if it did,
  // that one would be deleted in this pass too.
  for (size_t i = 0; i < closed_.size(); ++i) delete closed_[i];
  closed_.clear();
}

// ---- timers and the end ----------------------------------------------------

void H2Connection::ArmTimer() {
  if (destroyed_ || (draining_ && !goaway_sent_)) return;
  const conf::Listener& config = *listener_->config;
  Clock::time_point deadline = Clock::time_point::max();
  if (streams_ == nullptr) {
    deadline = idle_since_ + (first_stream_ ? config.client_header_timeout
                                            : config.idle_timeout);
  } else if (heads_waiting_ > 0 || lingering_ > 0) {
    // Only then is a stream's own deadline due: the usual case (every head
    // in, exchanges running on their own timers) walks no stream.
    for (const H2Stream* s = streams_; s != nullptr; s = s->next) {
      if (!s->head_done()) {
        deadline =
            std::min(deadline, s->began() + config.client_header_timeout);
      }
      if (s->lingering())
        deadline = std::min(deadline, s->ended_at() + config.idle_timeout);
    }
  }
  if (deadline == armed_for_) return;  // the timer stands as it should
  armed_for_ = deadline;
  if (deadline == Clock::time_point::max()) {
    event_del(&timer_);
    return;
  }
  timeval tv = net::ToTimeval(std::max<Clock::duration>(
      deadline - net::TurnClock::Now(), Clock::duration{}));
  event_add(&timer_, &tv);
}

void H2Connection::OnTimer() {
  armed_for_ = Clock::time_point::min();  // no longer pending
  if (draining_ && !goaway_sent_) {
    GoAway(NGHTTP2_NO_ERROR);  // the PING did not come back in time
    return;
  }
  const Clock::time_point now = net::TurnClock::Now();
  const conf::Listener& config = *listener_->config;
  for (H2Stream* s = streams_; s != nullptr; s = s->next) {
    if (!s->head_done() && now >= s->began() + config.client_header_timeout) {
      // A head that does not end (HEADERS without its CONTINUATION).
      GoAway(NGHTTP2_NO_ERROR);
      Send();
      Destroy();
      return;
    }
    // A response the client takes no more of (it grants no window).
    if (s->lingering() && now >= s->ended_at() + config.idle_timeout)
      s->Reset(NGHTTP2_CANCEL);
  }
  if (streams_ == nullptr && !goaway_sent_) {
    GoAway(NGHTTP2_NO_ERROR);  // idle
    return;
  }
  if (streams_ == nullptr && goaway_sent_) {
    Destroy();  // the client never closed after GOAWAY
    return;
  }
  ArmTimer();
}

void H2Connection::GoAway(uint32_t code) {
  if (goaway_sent_) return;
  goaway_sent_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), code,
                        nullptr, 0);
  // Never sent from here: this may run inside nghttp2's own callbacks.
  ScheduleSend();
  if (!destroyed_) {
    // Whatever the client does, the connection ends after idle_timeout.
    timeval tv = net::ToTimeval(listener_->config->idle_timeout);
    event_add(&timer_, &tv);
    armed_for_ = Clock::time_point::min();  // set here, not by ArmTimer
  }
}

// ---- nghttp2 callbacks -----------------------------------------------------

int H2Connection::OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                                 void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (frame->hd.type != NGHTTP2_HEADERS ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  const int32_t id = frame->hd.stream_id;
  // A reload since the last stream: this one follows the new config.
  ListenerStats* old_stats = self->listener_->stats;
  self->loop_.Rebind(&self->generation_, &self->listener_);
  if (self->listener_->stats != old_stats) {
    old_stats->connections_open.Add(-1);
    self->listener_->stats->connections_open.Add(1);
  }
  ++self->heads_waiting_;
  self->request_head_.Start(self->listener_->config->max_header_size_bytes);
  auto* stream = new H2Stream(*self, id);
  nghttp2_session_set_stream_user_data(self->session_, id, stream);
  LinkFront(self->streams_, stream);
  self->first_stream_ = false;
  self->listener_->stats->h2_streams.Add();
  const uint64_t limit = self->listener_->config->h2_max_streams_per_connection;
  if (limit > 0 && ++self->streams_begun_ >= limit) {
    // The last stream this connection takes: the client opens another one.
    self->GoAway(NGHTTP2_NO_ERROR);
  }
  return 0;  // (the timer is armed once the read is done: OnRead → Send)
}

int H2Connection::OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                           const uint8_t* name, size_t name_length,
                           const uint8_t* value, size_t value_length, uint8_t,
                           void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  H2Stream* stream = self->StreamOf(frame->hd.stream_id);
  if (stream == nullptr) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), name_length);
  const std::string_view v(reinterpret_cast<const char*>(value), value_length);
  if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    self->request_head_.Add(n, v);
  } else {
    stream->AddTrailer(n, v);
  }
  return 0;
}

int H2Connection::OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                              void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      H2Stream* stream = self->StreamOf(frame->hd.stream_id);
      if (stream == nullptr) break;
      const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        stream->OnHead(self->request_head_, end);
      } else if (end) {
        stream->OnEndStream();  // after its trailers
      }
      break;
    }
    case NGHTTP2_DATA: {
      // Padding counts against the windows, and nghttp2 consumes it itself
      // as it reads it (Pad Length field included), automatic WINDOW_UPDATE
      // off or not: consumed here again, the windows would open by the
      // padding once more per frame, and a client sending frames of more
      // padding than body could upload without bound to a backend that
      // reads nothing.
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        if (H2Stream* stream = self->StreamOf(frame->hd.stream_id))
          stream->OnEndStream();
      }
      break;
    }
    case NGHTTP2_RST_STREAM:
      self->listener_->stats->h2_resets_received.Add();
      break;
    case NGHTTP2_PING:
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && self->draining_ &&
          std::equal(std::begin(kDrainPing), std::end(kDrainPing),
                     frame->ping.opaque_data)) {
        self->GoAway(NGHTTP2_NO_ERROR);
      }
      break;
    default:
      break;
  }
  return 0;
}

int H2Connection::OnDataChunk(nghttp2_session* session, uint8_t,
                              int32_t stream_id, const uint8_t* data,
                              size_t length, void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  // The connection's window opens at once; the stream's once its backend
  // took the bytes.
  nghttp2_session_consume_connection(session, length);
  H2Stream* stream = self->StreamOf(stream_id);
  if (stream == nullptr) {
    nghttp2_session_consume_stream(session, stream_id, length);
    return 0;
  }
  stream->OnData(data, length);
  return 0;
}

int H2Connection::OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t,
                                void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  H2Stream* stream = self->StreamOf(stream_id);
  if (stream == nullptr) return 0;
  nghttp2_session_set_stream_user_data(self->session_, stream_id, nullptr);
  Unlink(self->streams_, stream);
  if (!stream->head_done()) --self->heads_waiting_;
  if (stream->lingering()) --self->lingering_;
  stream->Abort();
  self->closed_.push_back(stream);
  if (self->streams_ == nullptr) self->idle_since_ = net::TurnClock::Now();
  return 0;
}

int H2Connection::OnFrameSend(nghttp2_session*, const nghttp2_frame* frame,
                              void* arg) {
  auto* self = static_cast<H2Connection*>(arg);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    if (self->draining_ && !self->goaway_sent_ &&
        frame->goaway.last_stream_id == INT32_MAX) {
      // The shutdown notice went out: the PING's answer shows it arrived.
      nghttp2_submit_ping(self->session_, NGHTTP2_FLAG_NONE, kDrainPing);
    }
    switch (frame->goaway.error_code) {
      case NGHTTP2_NO_ERROR:
        self->listener_->stats->CountH2Error(H2Error::kNoError);
        break;
      case NGHTTP2_ENHANCE_YOUR_CALM:
        self->listener_->stats->CountH2Error(H2Error::kEnhanceYourCalm);
        break;
      case NGHTTP2_INTERNAL_ERROR:
        // (nghttp2's stream reset rate limit, rapid reset, ends so.)
        self->listener_->stats->CountH2Error(H2Error::kInternal);
        break;
      default:
        self->listener_->stats->CountH2Error(H2Error::kProtocol);
        break;
    }
    return 0;
  }
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    if (H2Stream* stream = self->StreamOf(frame->hd.stream_id))
      stream->OnResponseSent();
  }
  return 0;
}

nghttp2_session_callbacks* H2Connection::Callbacks() {
  static nghttp2_session_callbacks* const callbacks = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
    nghttp2_session_callbacks_set_send_data_callback(c, H2Stream::SendData);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, OnStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(c, OnFrameSend);
    return c;
  }();
  return callbacks;
}

}  // namespace tandem::dispatcher
