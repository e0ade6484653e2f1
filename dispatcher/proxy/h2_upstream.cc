// HTTP/2 to one backend; see h2_upstream.h.
#include "dispatcher/proxy/h2_upstream.h"

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "dispatcher/proxy/watermarks.h"
#include "net/h2_message.h"
#include "net/http_io.h"
#include "net/http_message.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;

// Request body a stream holds for its frames before the try's bytes are
// read no more (the try's output then fills and its client is paused).
constexpr size_t kBodyHighWater = 64 * 1024;
constexpr size_t kBodyLowWater = 16 * 1024;
// Streams a session takes before the backend's SETTINGS say how many.
constexpr uint32_t kAssumedStreams = 100;
// The highest stream id (2^31 - 1).
constexpr uint32_t kLastStreamId = 0x7fffffff;
// An idle session is PINGed after this quiet time (checked once a loop
// tick); one whose PING is not answered within kPingTimeout is closed, so
// the next request does not find a connection the worker dropped silently.
constexpr auto kPingAfter = std::chrono::seconds(1);
constexpr auto kPingTimeout = std::chrono::seconds(2);
// Each stream's response window, and the connection's.
constexpr int32_t kStreamWindow = 256 * 1024;
constexpr int32_t kConnectionWindow = 16 * 1024 * 1024;
constexpr size_t kSessionHighWater = 256 * 1024;

}  // namespace

// One backend connection carrying streams.
class H2Session final : private UpstreamUser {
 public:
  H2Session(H2Upstream& owner, std::string preamble)
      : owner_(owner), preamble_(std::move(preamble)) {}
  ~H2Session() override;

  // Connects; false when no connection could be made.
  bool Start();
  bool ready() const { return ready_; }
  bool closed() const { return closed_; }
  // Streams it could still take (0 once it is going away).
  size_t capacity() const;
  const std::string& preamble() const { return preamble_; }
  bool idle_since(Clock::time_point* since) const {
    *since = idle_since_;
    return streams_.empty();
  }
  nghttp2_session* session() const { return session_; }
  H2Upstream& owner() const { return owner_; }
  // Frames for the backend (only while the session is ready).
  evbuffer* output() const { return raw_->output(); }
  // Reused by the streams: a request's fields for nghttp2, the fields of
  // the header block being read ("name: value\r\n"; blocks are never
  // interleaved), and the response text made of them.
  net::H2Fields& fields() { return fields_; }
  std::string& lines() { return lines_; }
  std::string& text() { return text_; }

  H2UpstreamStream* AddStream(UpstreamUser* user);
  void RemoveStream(H2UpstreamStream* stream);
  // A stream submitted a request.
  void CountRequest();
  // Frames wait: they go out from the session's own event.
  void ScheduleSend();
  // A stream wants its try's bytes read again.
  void ScheduleParse(H2UpstreamStream* stream);
  // Ends the session: streams told, its connection closed, freed later.
  void Close();
  // GOAWAY(NO_ERROR) and close once the streams are done.
  void Terminate();
  // Liveness while idle: a PING after kPingAfter of quiet, the session
  // closed when it goes unanswered for kPingTimeout.
  void CheckLiveness(Clock::time_point now);

 private:
  void OnUpstreamConnected(UpstreamConnection& connection) override;
  void OnUpstreamRead(UpstreamConnection& connection) override;
  void OnUpstreamDrained(UpstreamConnection& connection) override;
  void OnUpstreamClosed(UpstreamConnection& connection, short events) override;
  static void SendCb(evutil_socket_t, short, void* arg);
  void Send();
  H2UpstreamStream* StreamOf(int32_t id) const {
    return static_cast<H2UpstreamStream*>(
        nghttp2_session_get_stream_user_data(session_, id));
  }
  static nghttp2_session_callbacks* Callbacks();
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* arg);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t name_length,
                      const uint8_t* value, size_t value_length, uint8_t,
                      void* arg);
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* arg);
  static int OnFrameSend(nghttp2_session*, const nghttp2_frame* frame,
                         void* arg);
  static int OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t length, void* arg);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* arg);

  H2Upstream& owner_;
  std::string preamble_;
  UpstreamConnection* raw_ = nullptr;  // the backend connection
  // TLS: every record a read finds is read in its turn (reading stays on
  // for the session's life).
  net::TlsReadAhead read_ahead_;
  nghttp2_session* session_ = nullptr;
  net::EventPtr send_event_;
  std::vector<H2UpstreamStream*> streams_;
  std::vector<H2UpstreamStream*> parse_;  // streams to read again
  net::H2Fields fields_;
  std::string lines_;
  std::string text_;
  uint64_t requests_ = 0;
  Clock::time_point idle_since_ = net::TurnClock::Now();
  // The worker's last bytes.
  Clock::time_point heard_at_ = net::TurnClock::Now();
  Clock::time_point ping_sent_at_{};  // zero: none outstanding
  bool ready_ = false;
  // GOAWAY received, max requests reached, or stream ids about to run out
  bool going_away_ = false;
  bool closed_ = false;
};

// One stream: the try's HTTP/1.1 bytes in, frames out, and back. The try
// sees an UpstreamConnection whose output the stream parses and whose input
// the stream fills; what a socket's bufferevent would report (connected,
// readable, drained, closed) the stream tells it from an event of its own.
class H2UpstreamStream final : private net::HttpParser::Handler {
 public:
  H2UpstreamStream(H2Session& session, UpstreamUser* user, bool ready);
  ~H2UpstreamStream() override;

  UpstreamConnection* end() const { return end_; }
  // The session is ready: the try may write its request.
  void OnSessionReady();
  // The session could not be made (`error`: why, as errno).
  void OnSessionFailed(int error);
  // The session ended under the stream (`reached`: the backend may have the
  // request).
  void OnSessionClosed(bool reached);
  void Detach() { session_ = nullptr; }

  // From the try's end.
  void OnTryWrote();
  void SetReading(bool on);

  // From the session's callbacks.
  void OnBeginHeaders();
  void OnField(std::string_view name, std::string_view value);
  void OnHeaders(bool end_stream);
  void OnData(const uint8_t* data, size_t length);
  void OnEndStream();
  void OnHeadersSent() { headers_sent_ = true; }
  void OnClose(uint32_t error_code);
  // The worker sent a frame on the stream (HEADERS, DATA, WINDOW_UPDATE):
  // it has the stream.
  void OnHeard();
  // The worker's SETTINGS came: its stream window may have changed.
  void OnSettings();
  // See UpstreamConnection::window_before_heard.
  std::optional<uint32_t> WindowBeforeHeard() const;
  // Reads what the try wrote (the session's send event).
  void Parse();
  // nghttp2's send_data_callback: the DATA frame goes out, its payload moved
  // from body_ to the session's output (whole chains, not copied).
  static int SendBody(nghttp2_session*, nghttp2_frame* frame,
                      const uint8_t* header, size_t length,
                      nghttp2_data_source* source, void*);
  // In the session's list of streams to parse.
  bool parse_scheduled = false;

 private:
  // What the try is to be told (bits of due_), in this order.
  enum Due : uint8_t {
    kFailed = 1,     // the session could not be made
    kConnected = 2,  // the session is ready
    kReadable = 4,   // response bytes in the try's input
    kDrained = 8,    // the try's output fell to its low-water mark
    kEnded = 16,     // no more response bytes (EOF)
  };
  void Tell(uint8_t what);
  bool Take(uint8_t what);
  static void TellCb(evutil_socket_t, short, void* arg);
  void TellTry();
  static void CreditCb(evbuffer*, const evbuffer_cb_info* info, void* arg);
  // nghttp2's data source: how much the next DATA frame carries. The bytes
  // stay in body_ (NGHTTP2_DATA_FLAG_NO_COPY) until SendBody moves them.
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buffer,
                          size_t length, uint32_t* data_flags,
                          nghttp2_data_source* source, void*);

  // net::HttpParser::Handler, for the try's request.
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser&) override;
  void OnBody(net::HttpParser&, const char* data, size_t length) override;
  void OnMessageComplete(net::HttpParser&) override;
  void Submit();
  // The stream is over for the try: what was written reaches it, then EOF
  // (`never_reached`: the try may go to another connection, even a POST).
  void Finish(bool never_reached);
  // The response cannot be carried: the stream is reset (CANCEL) and the try
  // sees its backend close (502, or a cut response).
  void Cancel();
  // The try's input (the response as HTTP/1.1) and output (its request).
  evbuffer* to_try() const { return end_->input(); }
  evbuffer* from_try() const { return end_->output(); }
  size_t body_size() const {
    return body_ ? evbuffer_get_length(body_.get()) : 0;
  }

  H2Session* session_;
  UpstreamConnection* end_ = nullptr;  // the try's end
  net::EventPtr tell_;                 // runs TellTry
  bool* alive_ = nullptr;              // cleared when freed inside TellTry
  net::HttpParser request_{net::HttpParser::Type::kRequest, this};
  net::EvbufferPtr body_;     // request body for DATA frames (made once needed)
  uint64_t lines_bytes_ = 0;  // what the fields came to, kept or not
  uint64_t interim_bytes_ = 0;  // what the interim (1xx) heads came to
  int32_t id_ = -1;
  int status_ = 0;
  uint64_t unconsumed_ = 0;  // DATA bytes whose window was not given back
  uint8_t due_ = 0;
  bool reading_ = true;  // the try reads the response
  bool has_length_ = false;
  bool chunked_ = false;
  bool final_seen_ = false;
  bool request_done_ = false;
  bool deferred_ = false;
  bool headers_sent_ = false;
  bool heard_ = false;  // the worker sent a frame on the stream
  bool finished_ = false;
};

// ---- H2Upstream ---------------------------------------------------------

H2Upstream::H2Upstream(BackendPool& pool, bool tls,
                       uint64_t max_requests_per_connection)
    : pool_(pool),
      tls_(tls),
      max_requests_per_connection_(max_requests_per_connection) {}

H2Upstream::~H2Upstream() {
  for (auto& session : sessions_) session->Close();
  DeleteRetired();
}

void H2Upstream::DeleteRetired() { retired_.clear(); }

void H2Upstream::Retire(H2Session* session) {
  auto it =
      std::find_if(sessions_.begin(), sessions_.end(),
                   [session](const auto& s) { return s.get() == session; });
  if (it == sessions_.end()) return;
  retired_.push_back(std::move(*it));
  sessions_.erase(it);
}

UpstreamConnection* H2Upstream::OpenStream(UpstreamUser* user,
                                           const std::string& preamble,
                                           bool connect) {
  DeleteRetired();
  H2Session* best = nullptr;
  for (auto& session : sessions_) {
    if (session->closed() || session->preamble() != preamble ||
        session->capacity() == 0 || (!connect && !session->ready())) {
      continue;
    }
    if (best == nullptr || (session->ready() && !best->ready())) {
      best = session.get();
    }
  }
  if (best == nullptr) {
    if (!connect) return nullptr;
    sessions_.push_back(std::make_unique<H2Session>(*this, preamble));
    best = sessions_.back().get();
    if (!best->Start()) {
      best->Close();
      return nullptr;
    }
  }
  H2UpstreamStream* stream = best->AddStream(user);
  return stream != nullptr ? stream->end() : nullptr;
}

void H2Upstream::CloseStream(UpstreamConnection* connection) {
  H2UpstreamStream* stream = connection->h2_stream_;
  delete stream;  // frees `connection` too
}

void H2Upstream::CloseIdle(Clock::duration max_age) {
  DeleteRetired();
  const Clock::time_point now = net::TurnClock::Now();
  std::vector<H2Session*> idle;
  for (auto& session : sessions_) {
    Clock::time_point since;
    if (session->idle_since(&since) &&
        (max_age.count() == 0 || now - since >= max_age)) {
      idle.push_back(session.get());
    }
  }
  for (H2Session* session : idle) session->Terminate();
  std::vector<H2Session*> all;
  for (auto& session : sessions_) all.push_back(session.get());
  for (H2Session* session : all) session->CheckLiveness(now);
}

void H2Upstream::Wrote(H2UpstreamStream* stream) { stream->OnTryWrote(); }

void H2Upstream::SetReading(H2UpstreamStream* stream, bool on) {
  stream->SetReading(on);
}

std::optional<uint32_t> H2Upstream::WindowBeforeHeard(
    const H2UpstreamStream* stream) {
  return stream->WindowBeforeHeard();
}

size_t H2Upstream::free_streams() const {
  size_t free = 0;
  for (const auto& session : sessions_) {
    if (session->ready()) free += session->capacity();
  }
  return free;
}

// ---- H2Session ----------------------------------------------------------

H2Session::~H2Session() {
  if (session_ != nullptr) nghttp2_session_del(session_);
}

bool H2Session::Start() {
  nghttp2_option* option = nullptr;
  if (nghttp2_option_new(&option) != 0) return false;
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_no_closed_streams(option, 1);
  nghttp2_option_set_peer_max_concurrent_streams(option, kAssumedStreams);
  const int rv =
      nghttp2_session_client_new2(&session_, Callbacks(), this, option);
  nghttp2_option_del(option);
  if (rv != 0) {
    session_ = nullptr;
    return false;
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings,
                          std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        kConnectionWindow);
  BackendPool& pool = owner_.pool();
  send_event_.reset(event_new(pool.base_, -1, 0, SendCb, this));
  raw_ = pool.ConnectSocket(this, false, preamble_);
  return raw_ != nullptr && send_event_ != nullptr;
}

size_t H2Session::capacity() const {
  if (going_away_ || closed_) return 0;
  uint32_t limit = kAssumedStreams;
  if (session_ != nullptr && ready_) {
    limit = std::min<uint32_t>(
        nghttp2_session_get_remote_settings(
            session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
        10000);
  }
  size_t free = streams_.size() >= limit ? 0 : limit - streams_.size();
  const uint64_t max = owner_.max_requests_per_connection();
  if (max > 0) {
    const uint64_t begun = requests_ + streams_.size();
    free = begun >= max ? 0 : std::min<uint64_t>(free, max - begun);
  }
  return free;
}

H2UpstreamStream* H2Session::AddStream(UpstreamUser* user) {
  auto* stream = new H2UpstreamStream(*this, user, ready_);
  if (stream->end() == nullptr) {
    delete stream;
    return nullptr;
  }
  streams_.push_back(stream);
  return stream;
}

void H2Session::RemoveStream(H2UpstreamStream* stream) {
  streams_.erase(std::remove(streams_.begin(), streams_.end(), stream),
                 streams_.end());
  if (stream->parse_scheduled) {
    parse_.erase(std::remove(parse_.begin(), parse_.end(), stream),
                 parse_.end());
  }
  if (streams_.empty()) {
    idle_since_ = net::TurnClock::Now();
    // A session that can take no stream (going away, or the worker's
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0) ends with its last one: kept
    // idle, it would only hold a socket until idle_timeout, and a worker
    // allowing no stream gets each request on a new connection (its HEADERS
    // leave before the worker's SETTINGS come), one more held per request.
    if (going_away_ || (ready_ && capacity() == 0)) Terminate();
  }
}

void H2Session::CountRequest() {
  ++requests_;
  const uint64_t max = owner_.max_requests_per_connection();
  if (max > 0 && requests_ >= max) going_away_ = true;  // no new stream
  // Client stream ids are odd and end at 2^31 - 1 (RFC 9113 5.1.1): past
  // that a connection opens no stream, so the next request goes elsewhere
  // rather than failing here (about 10^9 requests on one connection).
  if (nghttp2_session_get_next_stream_id(session_) >= kLastStreamId)
    going_away_ = true;
}

void H2Session::ScheduleSend() {
  if (send_event_ && !closed_) event_active(send_event_.get(), EV_TIMEOUT, 0);
}

void H2Session::ScheduleParse(H2UpstreamStream* stream) {
  if (!stream->parse_scheduled) {
    stream->parse_scheduled = true;
    parse_.push_back(stream);
  }
  ScheduleSend();
}

void H2Session::SendCb(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  // (Parse tells the try nothing at once: no stream goes away meanwhile.)
  std::vector<H2UpstreamStream*> parse;
  parse.swap(self->parse_);
  for (H2UpstreamStream* stream : parse) {
    stream->parse_scheduled = false;
    stream->Parse();
  }
  self->Send();
}

void H2Session::Send() {
  if (closed_ || !ready_ || raw_ == nullptr) return;
  evbuffer* out = raw_->output();
  while (evbuffer_get_length(out) < kSessionHighWater) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      Close();
      return;
    }
    if (n == 0) break;
    evbuffer_add(out, data, static_cast<size_t>(n));
  }
  if (evbuffer_get_length(out) > 0) raw_->WriteSoon();
  if (!nghttp2_session_want_read(session_) &&
      !nghttp2_session_want_write(session_) && evbuffer_get_length(out) == 0)
    Close();
}

void H2Session::CheckLiveness(Clock::time_point now) {
  if (closed_ || !ready_) return;
  if (ping_sent_at_ != Clock::time_point{}) {
    if (now - ping_sent_at_ >= kPingTimeout) Close();  // silently gone
    return;
  }
  if (streams_.empty() && now - heard_at_ >= kPingAfter) {
    nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr);
    ping_sent_at_ = now;
    ScheduleSend();
  }
}

void H2Session::Terminate() {
  if (closed_) return;
  going_away_ = true;
  if (!streams_.empty()) return;  // closes when its last stream goes
  if (ready_) {
    nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
    Send();
  }
  Close();
}

void H2Session::Close() {
  if (closed_) return;
  closed_ = true;
  going_away_ = true;
  read_ahead_.Stop();
  for (H2UpstreamStream* stream : parse_) stream->parse_scheduled = false;
  parse_.clear();
  std::vector<H2UpstreamStream*> streams;
  streams.swap(streams_);
  for (H2UpstreamStream* stream : streams) {
    stream->Detach();
    if (ready_) {
      stream->OnSessionClosed(true);
    } else {
      stream->OnSessionFailed(raw_ != nullptr ? raw_->connect_error() : 0);
    }
  }
  if (raw_ != nullptr) {
    owner_.pool().CloseSocket(raw_);
    raw_ = nullptr;
  }
  owner_.Retire(this);
}

void H2Session::OnUpstreamConnected(UpstreamConnection& connection) {
  if (SSL* ssl = connection.ssl()) {
    const unsigned char* alpn = nullptr;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &length);
    if (length != 2 || std::memcmp(alpn, "h2", 2) != 0) {
      // The backend does not speak HTTP/2 over this TLS connection.
      Close();
      return;
    }
  }
  bufferevent_setwatermark(connection.bev(), EV_WRITE, 64 * 1024, 0);
  read_ahead_.Start(connection.bev());
  ready_ = true;
  std::vector<H2UpstreamStream*> streams = streams_;
  for (H2UpstreamStream* stream : streams) stream->OnSessionReady();
  Send();
}

void H2Session::OnUpstreamRead(UpstreamConnection& connection) {
  evbuffer* in = connection.input();
  const size_t bytes = evbuffer_get_length(in);
  heard_at_ = net::TurnClock::Now();
  while (evbuffer_get_length(in) > 0 && !closed_) {
    evbuffer_iovec piece;
    if (evbuffer_peek(in, -1, nullptr, &piece, 1) < 1) break;
    const ssize_t n = nghttp2_session_mem_recv(
        session_, static_cast<const uint8_t*>(piece.iov_base), piece.iov_len);
    if (n < 0) {
      Close();
      return;
    }
    evbuffer_drain(in, static_cast<size_t>(n));
  }
  Send();
  if (!closed_) read_ahead_.AfterRead(bytes);
}

void H2Session::OnUpstreamDrained(UpstreamConnection&) { Send(); }

void H2Session::OnUpstreamClosed(UpstreamConnection& connection, short) {
  if (&connection == raw_) Close();
}

// nghttp2 callbacks.

int H2Session::OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                              void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  self->lines_.clear();
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id)) {
    stream->OnHeard();
    stream->OnBeginHeaders();
  }
  return 0;
}

int H2Session::OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                        const uint8_t* name, size_t name_length,
                        const uint8_t* value, size_t value_length, uint8_t,
                        void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id)) {
    stream->OnField({reinterpret_cast<const char*>(name), name_length},
                    {reinterpret_cast<const char*>(value), value_length});
  }
  return 0;
}

int H2Session::OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                           void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id))
        stream->OnHeaders(end);
      break;
    case NGHTTP2_DATA:
      // Padding is not consumed here: nghttp2 consumes it itself as it
      // reads it (Pad Length field included), automatic WINDOW_UPDATE off or
      // not. Consumed twice, the windows would open by the padding once
      // more per frame, and a worker sending frames of more padding than
      // body could keep its stream window open while the try reads nothing:
      // the response buffered without bound.
      if (end) {
        if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id))
          stream->OnEndStream();
      }
      break;
    case NGHTTP2_PING:
      if (frame->hd.flags & NGHTTP2_FLAG_ACK) self->ping_sent_at_ = {};
      break;
    case NGHTTP2_WINDOW_UPDATE:
      if (frame->hd.stream_id != 0) {
        if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id))
          stream->OnHeard();
      }
      break;
    case NGHTTP2_SETTINGS:
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
        for (H2UpstreamStream* stream : self->streams_) stream->OnSettings();
      }
      break;
    case NGHTTP2_GOAWAY:
      // Streams above its last id are closed by nghttp2 as refused (never
      // reached: retried on another connection); the rest finish.
      self->going_away_ = true;
      break;
    default:
      break;
  }
  return 0;
}

int H2Session::OnFrameSend(nghttp2_session*, const nghttp2_frame* frame,
                           void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (H2UpstreamStream* stream = self->StreamOf(frame->hd.stream_id))
      stream->OnHeadersSent();
  }
  return 0;
}

int H2Session::OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                           const uint8_t* data, size_t length, void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  nghttp2_session_consume_connection(session, length);
  if (H2UpstreamStream* stream = self->StreamOf(stream_id)) {
    stream->OnHeard();
    stream->OnData(data, length);
  } else {
    nghttp2_session_consume_stream(session, stream_id, length);
  }
  return 0;
}

int H2Session::OnStreamClose(nghttp2_session*, int32_t stream_id,
                             uint32_t error_code, void* arg) {
  auto* self = static_cast<H2Session*>(arg);
  if (H2UpstreamStream* stream = self->StreamOf(stream_id)) {
    nghttp2_session_set_stream_user_data(self->session_, stream_id, nullptr);
    stream->OnClose(error_code);
  }
  return 0;
}

nghttp2_session_callbacks* H2Session::Callbacks() {
  static nghttp2_session_callbacks* const callbacks = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
    nghttp2_session_callbacks_set_send_data_callback(
        c, H2UpstreamStream::SendBody);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrameRecv);
    nghttp2_session_callbacks_set_on_frame_send_callback(c, OnFrameSend);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, OnStreamClose);
    return c;
  }();
  return callbacks;
}

// ---- H2UpstreamStream -----------------------------------------------------

H2UpstreamStream::H2UpstreamStream(H2Session& session, UpstreamUser* user,
                                   bool ready)
    : session_(&session) {
  BackendPool& pool = session.owner().pool();
  tell_.reset(event_new(pool.base_, -1, 0, TellCb, this));
  auto* end = new UpstreamConnection(pool, this);
  end->user_ = user;
  end->connected_ = ready;
  end->since_ = net::TurnClock::Now();
  if (tell_ && end->input() != nullptr && end->output() != nullptr) {
    end->output_watch_ =
        evbuffer_add_cb(end->output(), UpstreamConnection::OutputCb, end);
  }
  if (end->output_watch_ == nullptr ||
      evbuffer_add_cb(end->input(), CreditCb, this) == nullptr) {
    delete end;
    return;
  }
  end_ = end;
  request_.set_max_head_bytes(4 * 1024 * 1024);
  request_.set_max_fields(100000);
}

H2UpstreamStream::~H2UpstreamStream() {
  if (alive_ != nullptr) *alive_ = false;
  if (session_ != nullptr) {
    if (id_ > 0) {
      nghttp2_session_set_stream_user_data(session_->session(), id_, nullptr);
      if (!finished_) {
        nghttp2_submit_rst_stream(session_->session(), NGHTTP2_FLAG_NONE, id_,
                                  NGHTTP2_CANCEL);
        session_->ScheduleSend();
      }
    }
    session_->RemoveStream(this);
  }
  delete end_;  // its buffers, and the callbacks on them, with it
}

void H2UpstreamStream::Tell(uint8_t what) {
  due_ |= what;
  event_active(tell_.get(), EV_TIMEOUT, 0);
}

bool H2UpstreamStream::Take(uint8_t what) {
  if ((due_ & what) == 0) return false;
  due_ &= static_cast<uint8_t>(~what);
  return true;
}

void H2UpstreamStream::TellCb(evutil_socket_t, short, void* arg) {
  static_cast<H2UpstreamStream*>(arg)->TellTry();
}

void H2UpstreamStream::TellTry() {
  // Each call may end the try and free this stream.
  bool alive = true;
  alive_ = &alive;
  UpstreamConnection& end = *end_;
  if (Take(kFailed)) {
    due_ = 0;
    end.user_->OnUpstreamClosed(end, BEV_EVENT_ERROR);
  } else {
    if (Take(kConnected)) {
      end.connected_ = true;
      const auto waited = std::chrono::duration_cast<std::chrono::microseconds>(
          net::TurnClock::Now() - end.since_);
      end.pool_.stats_->connect_micros.Add(
          static_cast<uint64_t>(waited.count()));
      end.user_->OnUpstreamConnected(end);
    }
    // As from a socket: nothing is read, nor the end seen, while reading is
    // off; then the bytes first, the end after.
    if (alive && reading_ && Take(kReadable) &&
        evbuffer_get_length(to_try()) > 0) {
      end.user_->OnUpstreamRead(end);
    }
    if (alive && Take(kDrained)) end.user_->OnUpstreamDrained(end);
    if (alive && reading_ && (due_ & kReadable) == 0 && Take(kEnded))
      end.user_->OnUpstreamClosed(end, BEV_EVENT_EOF | BEV_EVENT_READING);
  }
  if (alive) alive_ = nullptr;
}

void H2UpstreamStream::OnSessionReady() {
  Tell(kConnected);
  // (The try writes once it hears; anything already there is read then.)
}

void H2UpstreamStream::OnSessionFailed(int error) {
  end_->connect_error_ = error != 0 ? error : ECONNREFUSED;
  Tell(kFailed);
}

void H2UpstreamStream::OnSessionClosed(bool reached) {
  Finish(!reached || !headers_sent_);
}

void H2UpstreamStream::Finish(bool never_reached) {
  if (finished_) return;
  finished_ = true;
  // A refused stream never reached the backend: the try treats it as a
  // pooled connection found closed (retried, on another connection).
  if (never_reached && status_ == 0) end_->reused_ = true;
  Tell(kEnded);
}

void H2UpstreamStream::OnTryWrote() {
  if (session_ != nullptr && !finished_) session_->ScheduleParse(this);
}

void H2UpstreamStream::SetReading(bool on) {
  reading_ = on;
  if (on && due_ != 0) event_active(tell_.get(), EV_TIMEOUT, 0);
}

void H2UpstreamStream::Parse() {
  if (session_ == nullptr || finished_) return;
  // The body waits in the try's output (which stops the try reading its
  // client) while the frames have enough of it.
  if (body_size() >= kBodyHighWater) return;
  size_t consumed = 0;
  const net::HttpParser::Result result =
      net::Feed(request_, from_try(), &consumed);
  if (result == net::HttpParser::Result::kError) {
    Finish(id_ <= 0);
    return;
  }
  if (consumed > 0 && evbuffer_get_length(from_try()) <= kOutputLowWater)
    Tell(kDrained);
}

net::HttpParser::HeadAction H2UpstreamStream::OnHeadComplete(net::HttpParser&) {
  Submit();
  return net::HttpParser::HeadAction::kContinue;
}

void H2UpstreamStream::Submit() {
  net::H2Fields& fields = session_->fields();
  fields.BuildRequest(request_, session_->owner().tls() ? "https" : "http",
                      session_->owner().pool().address().text);
  nghttp2_data_provider provider;
  provider.source.ptr = this;
  provider.read_callback = ReadBody;
  const bool body = request_.framing() != net::Framing::kNone;
  id_ = nghttp2_submit_request(session_->session(), nullptr, fields.data(),
                               fields.size(), body ? &provider : nullptr, this);
  if (id_ < 0) {
    Finish(true);
    return;
  }
  session_->CountRequest();
  session_->ScheduleSend();
}

void H2UpstreamStream::OnBody(net::HttpParser&, const char* data,
                              size_t length) {
  if (!body_) body_.reset(evbuffer_new());
  evbuffer_add(body_.get(), data, length);
  if (deferred_ && id_ > 0) {
    deferred_ = false;
    nghttp2_session_resume_data(session_->session(), id_);
    session_->ScheduleSend();
  }
}

void H2UpstreamStream::OnMessageComplete(net::HttpParser&) {
  request_done_ = true;
  if (deferred_ && id_ > 0) {
    deferred_ = false;
    nghttp2_session_resume_data(session_->session(), id_);
    session_->ScheduleSend();
  }
}

ssize_t H2UpstreamStream::ReadBody(nghttp2_session* session, int32_t, uint8_t*,
                                   size_t length, uint32_t* data_flags,
                                   nghttp2_data_source* source, void*) {
  auto* self = static_cast<H2UpstreamStream*>(source->ptr);
  const size_t buffered = self->body_size();
  const ssize_t n =
      net::NextDataFrame(buffered, length, self->request_done_, data_flags);
  if (n == NGHTTP2_ERR_DEFERRED) {
    self->deferred_ = true;
    return n;
  }
  const net::HeaderList& trailers = self->request_.trailers();
  if ((*data_flags & NGHTTP2_DATA_FLAG_EOF) != 0 && !trailers.empty()) {
    *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    net::H2Fields& fields = self->session_->fields();
    fields.BuildTrailers(trailers);
    nghttp2_submit_trailer(session, self->id_, fields.data(), fields.size());
  }
  if (buffered - static_cast<size_t>(n) < kBodyLowWater &&
      evbuffer_get_length(self->from_try()) > 0) {
    self->session_->ScheduleParse(self);
  }
  return n;
}

int H2UpstreamStream::SendBody(nghttp2_session*, nghttp2_frame* frame,
                               const uint8_t* header, size_t length,
                               nghttp2_data_source* source, void*) {
  // In the session's Send, right after ReadBody. The stream is still here:
  // nghttp2 calls this only for an open stream, and a freed stream's
  // RST_STREAM goes out before any DATA of it.
  auto* self = static_cast<H2UpstreamStream*>(source->ptr);
  return net::SendDataFrame(*frame, header, length, self->body_.get(),
                            self->session_->output());
}

void H2UpstreamStream::OnBeginHeaders() {
  lines_bytes_ = 0;
  has_length_ = false;
}

void H2UpstreamStream::OnField(std::string_view name, std::string_view value) {
  if (name == ":status") {
    int status = 0;
    std::from_chars(value.data(), value.data() + value.size(), status);
    if (!final_seen_) status_ = status;
    return;
  }
  if (name.empty() || name[0] == ':') return;
  // Kept only up to the response parser's own limit: HPACK lets a few bytes
  // on the wire stand for a field of kilobytes (a bomb of references to one
  // big table entry), and the parser would refuse the head anyway.
  lines_bytes_ += name.size() + value.size() + 4;
  if (lines_bytes_ > net::kDefaultMaxHeadBytes) return;
  if (name == "content-length") has_length_ = true;
  net::AppendField(name, value, &session_->lines());
}

void H2UpstreamStream::Cancel() {
  if (session_ != nullptr && id_ > 0) {
    nghttp2_submit_rst_stream(session_->session(), NGHTTP2_FLAG_NONE, id_,
                              NGHTTP2_CANCEL);
    session_->ScheduleSend();
  }
  Finish(false);
}

void H2UpstreamStream::OnHeaders(bool end_stream) {
  if (finished_) return;  // the try has its answer, or its end
  // A protocol switch cannot come over HTTP/2 (nghttp2 refuses it too).
  if (lines_bytes_ > net::kDefaultMaxHeadBytes || status_ == 101) {
    Cancel();  // too large to carry
    return;
  }
  const std::string& lines = session_->lines();
  std::string& text = session_->text();
  text.clear();
  if (final_seen_) {
    // Trailers: the end of a chunked body carries them.
    if (chunked_) {
      text.append("0\r\n").append(lines).append("\r\n");
      chunked_ = false;
    }
  } else {
    char digits[16];
    const auto [digits_end, ignored] =
        std::to_chars(digits, digits + sizeof(digits), status_);
    text.append("HTTP/1.1 ").append(digits, digits_end).append(" ");
    text.append(net::ReasonPhrase(status_));
    text.append("\r\n");
    text.append(lines);
    const bool interim = status_ >= 100 && status_ < 200;
    if (!interim) {
      final_seen_ = true;
      if (!has_length_) {
        if (end_stream) {
          text.append("content-length: 0\r\n");
        } else if (status_ != 204 && status_ != 304) {
          text.append("transfer-encoding: chunked\r\n");
          chunked_ = true;
        }
      }
    }
    text.append("\r\n");
    // HEADERS frames are not flow-controlled: interim heads go to the try
    // however little it reads (it stops while its client is slow), and
    // HPACK lets a few bytes on the wire stand for a head of 64 KiB. So all
    // of a stream's interim heads together are kept only up to one head's
    // limit; past it the stream is reset. (A try takes 16 of them at most.)
    if (interim) {
      interim_bytes_ += text.size();
      if (interim_bytes_ > net::kDefaultMaxHeadBytes) {
        Cancel();
        return;
      }
    }
  }
  lines_bytes_ = 0;
  has_length_ = false;
  if (!text.empty()) {
    evbuffer_add(to_try(), text.data(), text.size());
    Tell(kReadable);
  }
  if (end_stream) OnEndStream();
}

void H2UpstreamStream::OnData(const uint8_t* data, size_t length) {
  if (finished_) return;
  unconsumed_ += length;
  net::FrameBody(
      chunked_ ? net::Framing::kChunked : net::Framing::kContentLength,
      reinterpret_cast<const char*>(data), length, to_try());
  Tell(kReadable);
}

void H2UpstreamStream::OnEndStream() {
  if (finished_) return;
  if (chunked_) {
    evbuffer_add(to_try(), "0\r\n\r\n", 5);
    chunked_ = false;
    Tell(kReadable);
  }
}

void H2UpstreamStream::CreditCb(evbuffer*, const evbuffer_cb_info* info,
                                void* arg) {
  // The try read response bytes: the stream's window opens by as much.
  auto* self = static_cast<H2UpstreamStream*>(arg);
  if (info->n_deleted == 0 || self->session_ == nullptr || self->id_ <= 0)
    return;
  const uint64_t credit =
      std::min<uint64_t>(info->n_deleted, self->unconsumed_);
  if (credit == 0) return;
  self->unconsumed_ -= credit;
  nghttp2_session_consume_stream(self->session_->session(), self->id_, credit);
  self->session_->ScheduleSend();
}

void H2UpstreamStream::OnHeard() {
  if (heard_) return;
  heard_ = true;
  // The try may have stopped taking the body to keep it for a retry.
  if (!finished_) Tell(kDrained);
}

void H2UpstreamStream::OnSettings() {
  if (!heard_ && !finished_) Tell(kDrained);
}

std::optional<uint32_t> H2UpstreamStream::WindowBeforeHeard() const {
  if (heard_ || finished_ || session_ == nullptr) return std::nullopt;
  return nghttp2_session_get_remote_settings(
      session_->session(), NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE);
}

void H2UpstreamStream::OnClose(uint32_t error_code) {
  const bool never_reached =
      error_code == NGHTTP2_REFUSED_STREAM || !headers_sent_;
  id_ = -1;
  Finish(never_reached && status_ == 0);
}

}  // namespace tandem::dispatcher
