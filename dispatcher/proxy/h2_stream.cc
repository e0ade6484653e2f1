// One HTTP/2 stream; see h2_stream.h.
#include "dispatcher/proxy/h2_stream.h"

#include <algorithm>
#include <string>

#include "dispatcher/loop.h"
#include "dispatcher/proxy/h2_connection.h"
#include "net/http_io.h"
#include "net/http_message.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

// Response body a stream buffers before its backend is read no more: the
// streams of one connection share its socket, so each holds little.
constexpr size_t kStreamOutputHighWater = 64 * 1024;
constexpr size_t kStreamOutputLowWater = 16 * 1024;

}  // namespace

H2Stream::H2Stream(H2Connection& connection, int32_t id)
    : connection_(connection),
      id_(id),
      generation_(connection.generation_),
      listener_(connection.listener_),
      request_(
          connection.loop().TakeParser(net::HttpParser::Type::kRequest, this)),
      trailers_(listener_->config->max_header_size_bytes),
      out_(evbuffer_new()),
      began_(net::TurnClock::Now()),
      exchange_(connection.loop(), *this) {
  connection_.loop().Hold(generation_);
  request_->set_max_head_bytes(listener_->config->max_header_size_bytes);
  request_->set_max_body_bytes(listener_->config->max_body_size_bytes);
}

H2Stream::~H2Stream() {
  exchange_.Cancel();
  exchange_.Reset();
  connection_.loop().ReturnParser(std::move(request_));
  connection_.loop().Release(generation_);
}

uint64_t H2Stream::BufferedBytes() const {
  return (in_ ? evbuffer_get_length(in_.get()) : 0) +
         evbuffer_get_length(out_.get()) + request_->HeldBytes() +
         exchange_.BufferedBytes();
}

// ---- the request -----------------------------------------------------------

void H2Stream::AddTrailer(std::string_view name, std::string_view value) {
  trailers_.Add(name, value);
}

evbuffer* H2Stream::input() {
  if (!in_) in_.reset(evbuffer_new());
  return in_.get();
}

void H2Stream::OnHead(net::H2RequestHead& head, bool end_stream) {
  head_done_ = true;
  --connection_.heads_waiting_;
  end_stream_ = end_stream;
  grpc_ = head.grpc();
  std::string& text = connection_.loop().scratch();
  if (!head.Write(end_stream, &text, &chunked_)) {
    RejectHead(head.error_status(), head.error_reason());
    return;
  }
  if (exchange_ended_) return;
  if (end_stream && request_->TakeSimpleRequestHead(text)) {
    OnRequestHead(true);  // as Execute() would end, at kComplete
    return;
  }
  // Parsed where it lies; only what the parser leaves is kept (the exchange
  // the head begins may use the scratch text).
  size_t consumed = 0;
  const net::HttpParser::Result result =
      request_->Execute(text.data(), text.size(), &consumed);
  if (consumed < text.size() && result != net::HttpParser::Result::kError)
    evbuffer_add(input(), text.data() + consumed, text.size() - consumed);
  OnParsed(result, 0);
}

void H2Stream::OnData(const uint8_t* data, size_t length) {
  if (exchange_ended_) {
    connection_.Consume(id_, length);  // nobody reads it any more
    return;
  }
  unconsumed_ += length;
  const auto* bytes = reinterpret_cast<const char*>(data);
  net::FrameBody(
      chunked_ ? net::Framing::kChunked : net::Framing::kContentLength, bytes,
      length, input());
  if (begun_) exchange_.Touch();
  if (MayFeed()) ParseRequest();
}

void H2Stream::OnEndStream() {
  end_stream_ = true;
  if (exchange_ended_) return;
  if (trailers_.too_large()) {
    if (begun_) {
      exchange_.OnRequestError(431, "request trailer fields too large");
    } else {
      RejectHead(431, "request trailer fields too large");
    }
    return;
  }
  if (chunked_) {
    std::string& text = connection_.loop().scratch();
    trailers_.Write(&text);
    evbuffer_add(input(), text.data(), text.size());
  }
  if (MayFeed()) ParseRequest();
}

void H2Stream::Credit(uint64_t bytes) {
  bytes = std::min(bytes, unconsumed_);
  unconsumed_ -= bytes;
  connection_.Consume(id_, bytes);
}

bool H2Stream::MayFeed() const {
  // As on HTTP/1.1: the body waits until a backend takes it.
  if (!begun_) return !head_pending_;
  return exchange_.sending() && !exchange_.request_complete() &&
         !paused_at_head_ && !blocked_;
}

void H2Stream::ParseRequest() {
  if (exchange_ended_) return;
  const uint64_t before = request_->body_bytes();
  size_t consumed = 0;
  OnParsed(in_ ? net::Feed(*request_, in_.get(), &consumed)
               : net::HttpParser::Result::kNeedMore,
           before);
}

void H2Stream::OnParsed(net::HttpParser::Result result, uint64_t before) {
  // What the backend took opens the stream's window by as much.
  Credit(request_->body_bytes() - before);
  switch (result) {
    case net::HttpParser::Result::kNeedMore:
      break;
    case net::HttpParser::Result::kPausedHead:
      head_pending_ = false;
      paused_at_head_ = true;
      OnRequestHead(false);
      return;
    case net::HttpParser::Result::kUpgrade:
    case net::HttpParser::Result::kComplete:
      if (head_pending_) {
        head_pending_ = false;
        OnRequestHead(true);
        return;
      }
      exchange_.OnRequestComplete(false);
      return;
    case net::HttpParser::Result::kError: {
      const std::string reason(request_->error_reason());
      if (!begun_) {
        RejectHead(request_->error_status(), reason.c_str());
      } else {
        exchange_.OnRequestError(request_->error_status(), reason.c_str());
      }
      return;
    }
  }
  if (begun_ && exchange_.sending() && exchange_.UpstreamOutputFull())
    blocked_ = true;
}

net::HttpParser::HeadAction H2Stream::OnHeadComplete(net::HttpParser&) {
  head_pending_ = true;
  return request_->framing() == net::Framing::kNone
             ? net::HttpParser::HeadAction::kContinue
             : net::HttpParser::HeadAction::kPause;
}

void H2Stream::OnBody(net::HttpParser&, const char* data, size_t length) {
  exchange_.OnRequestBody(data, length);
}

void H2Stream::OnRequestHead(bool complete) {
  begun_ = true;
  expect_continue_ = net::ExpectsContinue(*request_);
  exchange_.Begin(complete, false);
}

void H2Stream::RejectHead(int status, const char* reason) {
  begun_ = true;
  exchange_.Reject(status, reason, 0);
}

void H2Stream::ContinueRequest() {
  if (expect_continue_ && !continue_sent_) {
    continue_sent_ = true;
    net::H2Fields& fields = connection_.fields();
    fields.BuildStatus(100);
    nghttp2_submit_headers(connection_.session(), NGHTTP2_FLAG_NONE, id_,
                           nullptr, fields.data(), fields.size(), nullptr);
    connection_.ScheduleSend();
  }
  if (exchange_.request_complete()) return;
  if (paused_at_head_) {
    paused_at_head_ = false;
    request_->Resume();
  }
  ParseRequest();
}

void H2Stream::RequestDrained() {
  if (!blocked_) return;
  exchange_.Touch();
  blocked_ = false;
  ParseRequest();
}

// ---- the response ----------------------------------------------------------

std::string_view H2Stream::client_address() const {
  return connection_.client_address();
}
std::string_view H2Stream::client_ip() const { return connection_.client_ip(); }
const net::ProxyTlvs* H2Stream::proxy_tlvs() const {
  return connection_.proxy_tlvs();
}
const std::string& H2Stream::ProxyHeader(int version) {
  return connection_.ProxyHeader(version);
}

const char* H2Stream::CannotCarry(const net::HttpParser& response) const {
  if (!response.transfer_codings().empty())
    return "a transfer coding HTTP/2 cannot carry";
  if (response.status_code() == 101)
    return "a protocol switch HTTP/2 cannot carry";
  return nullptr;
}

void H2Stream::SendInterim(const net::HttpParser& response) {
  // tandem sends its own 100 Continue; 103 Early Hints go on.
  if (response.status_code() == 100 || closed_) return;
  net::H2Fields& fields = connection_.fields();
  fields.Build(response, false);
  nghttp2_submit_headers(connection_.session(), NGHTTP2_FLAG_NONE, id_, nullptr,
                         fields.data(), fields.size(), nullptr);
  connection_.ScheduleSend();
}

void H2Stream::SubmitHead(bool no_body) {
  response_submitted_ = true;
  net::H2Fields& fields = connection_.fields();
  nghttp2_data_provider provider;
  provider.source.ptr = this;
  provider.read_callback = ReadResponse;
  nghttp2_submit_response(connection_.session(), id_, fields.data(),
                          fields.size(), no_body ? nullptr : &provider);
  connection_.ScheduleSend();
}

void H2Stream::SendResponseHead(const net::HttpParser& response) {
  if (closed_) return;
  connection_.fields().Build(response, exchange_.head_request());
  const int status = response.status_code();
  // No body: the HEADERS frame ends the stream (a gRPC Trailers-Only
  // answer must come so, its status in that one frame).
  const bool no_body = exchange_.head_request() || status == 204 ||
                       status == 304 ||
                       (response.framing() == net::Framing::kContentLength &&
                        response.content_length() == 0);
  if (no_body) response_ended_ = true;
  SubmitHead(no_body);
}

void H2Stream::SendResponseBody(const char* data, size_t length) {
  if (closed_ || response_ended_) return;
  evbuffer_add(out_.get(), data, length);
  if (data_deferred_) {
    data_deferred_ = false;
    nghttp2_session_resume_data(connection_.session(), id_);
    connection_.ScheduleSend();
  }
}

void H2Stream::SendResponseEnd(const net::HeaderList& trailers) {
  if (closed_ || response_ended_) return;
  response_ended_ = true;
  if (!trailers.empty()) {
    has_trailers_ = true;
    // Copied: the response parser moves on before the DATA is all out.
    for (size_t i = 0; i < trailers.size(); ++i)
      response_trailers_.Add(trailers.name(i), trailers.value(i));
  }
  if (data_deferred_) {
    data_deferred_ = false;
    nghttp2_session_resume_data(connection_.session(), id_);
  }
  connection_.ScheduleSend();
}

bool H2Stream::ResponseOutputFull() const {
  const bool full = evbuffer_get_length(out_.get()) >= kStreamOutputHighWater;
  if (full) full_reported_ = true;  // ReadResponse says when it drained
  return full;
}

ssize_t H2Stream::ReadResponse(nghttp2_session* session, int32_t, uint8_t*,
                               size_t length, uint32_t* data_flags,
                               nghttp2_data_source* source, void*) {
  auto* self = static_cast<H2Stream*>(source->ptr);
  const size_t buffered = evbuffer_get_length(self->out_.get());
  const ssize_t n =
      net::NextDataFrame(buffered, length, self->response_ended_, data_flags);
  if (n == NGHTTP2_ERR_DEFERRED) {
    self->data_deferred_ = true;
    return n;
  }
  if ((*data_flags & NGHTTP2_DATA_FLAG_EOF) != 0 && self->has_trailers_) {
    *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    net::H2Fields& fields = self->connection_.fields();
    fields.BuildTrailers(self->response_trailers_);
    nghttp2_submit_trailer(session, self->id_, fields.data(), fields.size());
  }
  if (self->full_reported_ &&
      buffered - static_cast<size_t>(n) < kStreamOutputLowWater) {
    self->full_reported_ = false;
    self->connection_.NoteDrained(self);
  }
  return n;
}

int H2Stream::SendData(nghttp2_session*, nghttp2_frame* frame,
                       const uint8_t* header, size_t length,
                       nghttp2_data_source* source, void*) {
  // In the connection's Send. The stream is still here: nghttp2 calls this
  // only while the stream is open, and closed streams are deleted after.
  auto* self = static_cast<H2Stream*>(source->ptr);
  return net::SendDataFrame(*frame, header, length, self->out_.get(),
                            self->connection_.output());
}

Downstream::LocalReply H2Stream::SendLocalResponse(
    int status, const char* detail, bool close, std::string_view extra_fields) {
  // (`close` ends only this stream: OnResponseSent resets what the client
  // still sends.)
  if (closed_) return {close, 0};
  net::H2Fields& fields = connection_.fields();
  response_ended_ = true;
  if (grpc()) {
    // A gRPC client reads the outcome from grpc-status, not from the HTTP
    // status (Trailers-Only: one HEADERS frame that ends the stream).
    const bool overload =
        extra_fields.find("Retry-After") != std::string_view::npos;
    fields.BuildGrpcStatus(net::GrpcStatusFor(status, overload), detail);
    SubmitHead(true);
    return {close, 0};
  }
  std::string& body = connection_.loop().scratch();
  net::AppendSimpleBody(status, detail, &body);
  fields.BuildLocal(status, "text/plain; charset=utf-8", body.size(),
                    extra_fields);
  evbuffer_add(out_.get(), body.data(), body.size());
  SubmitHead(false);
  return {close, body.size()};
}

void H2Stream::StartTunnel() {
  // Never asked for: an HTTP/2 request carries no Upgrade.
  exchange_.EndTunnel(End::kDestroy);
}

// ---- the end
// -----------------------------------------------------------------

void H2Stream::Reset(uint32_t code) {
  if (closed_) return;
  nghttp2_submit_rst_stream(connection_.session(), NGHTTP2_FLAG_NONE, id_,
                            code);
  connection_.ScheduleSend();
}

void H2Stream::ExchangeEnded(End end) {
  if (!exchange_ended_ && !closed_) ++connection_.lingering_;
  exchange_ended_ = true;
  ended_at_ = net::TurnClock::Now();
  // Request body nobody will read: its window opens for the rest.
  if (in_) evbuffer_drain(in_.get(), evbuffer_get_length(in_.get()));
  Credit(unconsumed_);
  switch (end) {
    case End::kNext:
    case End::kClose:
      // The response ends the stream once it is out (OnResponseSent).
      if (!response_submitted_) Reset(NGHTTP2_INTERNAL_ERROR);
      break;
    case End::kCutOff:
    case End::kDestroy:
      Reset(NGHTTP2_INTERNAL_ERROR);
      break;
  }
  connection_.ScheduleSend();
}

void H2Stream::OnResponseSent() {
  // A response that ended before its request did: the client need not send
  // the rest (RFC 9113 §8.1).
  if (!end_stream_) Reset(NGHTTP2_NO_ERROR);
}

void H2Stream::Abort() {
  // The client reset the stream, nghttp2 closed it, or the connection ends
  // under it: a request in progress ends as DC.
  closed_ = true;
  if (!exchange_ended_ && begun_) exchange_.Abort(kFlagClientReset);
  exchange_ended_ = true;
}

}  // namespace tandem::dispatcher
