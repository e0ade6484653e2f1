// The demo compute worker (see demo_worker.h): an accept loop and one
// Connection per client, each a state machine with one driver (memcached's
// drive_machine()), requests parsed by the proxy's HTTP/1 codec.
#include "demo/demo_worker.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "net/direct_io.h"
#include "net/http_message.h"
#include "net/http_parser.h"

namespace tandem::demo {
namespace {

constexpr size_t kPieceBytes = 64 * 1024;  // one /bytes piece, one read
constexpr size_t kStreamQueueBytes = 4 * kPieceBytes;  // queued while streaming
constexpr size_t kOutputHighBytes = 1024 * 1024;  // pipelined answers queued
constexpr size_t kInputHighBytes = 256 * 1024;    // unparsed input kept
constexpr size_t kMaxUrlBytes = 8 * 1024;
constexpr size_t kMaxHeaderBytes = 64 * 1024;  // field names and values
// The whole head: the target, the fields and every line's framing. The two
// limits above are what a request is held to; this only bounds the buffer.
constexpr uint64_t kMaxHeadBytes = 4 * (kMaxUrlBytes + kMaxHeaderBytes);
constexpr uint64_t kMaxSleepMs = 600'000;
constexpr int kListenBacklog = 4096;
constexpr int kMaxDrivePasses = 64;
constexpr timeval kIdleTimeout{120, 0};
constexpr timeval kAcceptRetryDelay{0, 100'000};
constexpr std::string_view kTextPlain = "text/plain; charset=utf-8";
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kWebSocketGuid =
    "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

bool StatusHasBody(int status) { return status != 204 && status != 304; }

// A plain decimal number: digits only, no sign or spaces.
std::optional<uint64_t> ParseNumber(std::string_view text) {
  uint64_t value = 0;
  auto [end, error] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() ||
      end != text.data() + text.size()) {
    return std::nullopt;
  }
  return value;
}

// The value of `key` in "a=1&b=2"; nullopt when the key is absent.
std::optional<std::string_view> QueryValue(std::string_view query,
                                           std::string_view key) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view()
                                          : query.substr(amp + 1);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      return eq == std::string_view::npos ? std::string_view()
                                          : pair.substr(eq + 1);
    }
  }
  return std::nullopt;
}

// `key` as a number in [min, max], `fallback` when absent; nullopt when bad.
std::optional<uint64_t> QueryNumber(std::string_view query,
                                    std::string_view key, uint64_t fallback,
                                    uint64_t min, uint64_t max) {
  std::optional<std::string_view> text = QueryValue(query, key);
  if (!text) return fallback;
  std::optional<uint64_t> value = ParseNumber(*text);
  if (!value || *value < min || *value > max) return std::nullopt;
  return value;
}

void AppendNumber(std::string& out, uint64_t value) {
  char digits[24];
  auto result = std::to_chars(digits, digits + sizeof(digits), value);
  out.append(digits, result.ptr);
}

void AppendHex(std::string& out, const unsigned char* data, size_t length) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < length; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0xf]);
  }
}

// "127.0.0.1:PORT" or "[::1]:PORT" (numeric only; PORT may be 0).
bool ParseAddress(std::string_view text, sockaddr_storage& address,
                  socklen_t& length) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string host(text.substr(0, colon));
  std::optional<uint64_t> port = ParseNumber(text.substr(colon + 1));
  if (!port || *port > 65535) return false;
  address = {};
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&address);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(*port));
    length = sizeof(sockaddr_in6);
    return evutil_inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(),
                            &in6->sin6_addr) == 1;
  }
  auto* in4 = reinterpret_cast<sockaddr_in*>(&address);
  in4->sin_family = AF_INET;
  in4->sin_port = htons(static_cast<uint16_t>(*port));
  length = sizeof(sockaddr_in);
  return evutil_inet_pton(AF_INET, host.c_str(), &in4->sin_addr) == 1;
}

bool ValidName(std::string_view name) {
  return !name.empty() && name.size() <= 64 &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
         });
}

}  // namespace

class DemoWorker::Connection : private net::HttpParser::Handler {
 public:
  Connection(DemoWorker* worker, bufferevent* bev)
      : worker_(worker),
        bev_(bev),
        parser_(net::HttpParser::Type::kRequest, this) {
    parser_.set_max_head_bytes(kMaxHeadBytes);
    // Only the bytes of the fields are limited, not their number.
    parser_.set_max_fields(SIZE_MAX);
  }
  ~Connection() {
    worker_->write_behind_->Cancel(&write_slot_);
    EndRequest();
  }

  // Sets the bufferevent up and starts reading; false when libevent refuses,
  // and then the caller frees the connection.
  [[nodiscard]] bool Begin() {
    bufferevent* bev = bev_.get();
    bufferevent_setcb(bev, &OnRead, &OnWrite, &OnEvent, this);
    // Reading stops at the high mark while an answer is pending; the write
    // callback runs whenever the output has drained to one piece.
    bufferevent_setwatermark(bev, EV_READ, 0, kInputHighBytes);
    bufferevent_setwatermark(bev, EV_WRITE, kPieceBytes, 0);
    if (bufferevent_set_max_single_read(bev, kPieceBytes) != 0 ||
        bufferevent_set_max_single_write(bev, kStreamQueueBytes) != 0 ||
        bufferevent_set_timeouts(bev, &kIdleTimeout, nullptr) != 0 ||
        bufferevent_enable(bev, EV_READ | EV_WRITE) != 0) {
      return false;
    }
    // One system call per read, and answers written at the end of the turn
    // that made them, as the proxy does (net/direct_io.h): a benchmark's
    // backends should cost their load core as little as they can.
    net::ReadDirectly(bev);
    return true;
  }

 private:
  enum class State {
    kReading,    // parsing requests; most answers are written at once
    kSleeping,   // a /sleep answer is due when the timer fires
    kStreaming,  // writing a /bytes body piece by piece
    kTunnel,     // after 101 on /echo: every byte read is written back
    kClosing,    // reads no more; closes once the output is flushed
  };
  int feedback_weight_ = -2;  // /control/feedback: -2 unchanged, -1 none
  int feedback_state_ = -1;   // -1 unchanged, 0 none, 1 drain, 2 up
  int fail_percent_ = 100;    // /control/fail: the share that fails
  int delay_percent_ = 100;   // /control/delay: the share delayed
  enum class Route {
    kNotFound,
    kHello,
    kHealthz,
    kControlHealth,
    kControlFail,
    kControlFeedback,
    kControlDelay,
    kCompute,
    kBytes,
    kSink,
    kStatus,
    kSleep,
    kStats,
    kEcho,
  };

  static void OnRead(bufferevent*, void* arg) {
    static_cast<Connection*>(arg)->Drive();
  }
  static void OnWrite(bufferevent*, void* arg) {
    static_cast<Connection*>(arg)->Drive();
  }
  static void OnEvent(bufferevent*, short what, void* arg) {
    static_cast<Connection*>(arg)->HandleEvent(what);
  }
  static void OnTimer(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Connection*>(arg);
    self->AnswerSleep();
    self->Drive();
  }
  // The codec's handler: the head routes the request, the body feeds it,
  // and its end answers it.
  net::HttpParser::HeadAction OnHeadComplete(net::HttpParser&) override {
    ResetRequest();
    if (!ReadHead()) return net::HttpParser::HeadAction::kContinue;
    BeginRequest();
    RouteRequest();
    return net::HttpParser::HeadAction::kContinue;
  }
  void OnBody(net::HttpParser&, const char* data, size_t length) override {
    ConsumeBody(std::string_view(data, length));
  }
  void OnMessageComplete(net::HttpParser&) override { Answer(); }

  evbuffer* Input() const { return bufferevent_get_input(bev_.get()); }
  evbuffer* Output() const { return bufferevent_get_output(bev_.get()); }
  size_t OutputLength() const { return evbuffer_get_length(Output()); }

  // The one driver: moves the connection on after any event and frees it
  // when it is done, so it must be the last call of every callback.
  void Drive() {
    for (int pass = 0; pass < kMaxDrivePasses && !aborted_; ++pass) {
      State before = state_;
      switch (state_) {
        case State::kReading:
          ParseInput();
          break;
        case State::kStreaming:
          StreamBytes();
          break;
        case State::kTunnel:
          Echo();
          break;
        case State::kSleeping:
        case State::kClosing:
          break;
      }
      if (state_ == before) break;
    }
    // A peer that has stopped sending gets the answers to everything it sent.
    if (peer_closed_ && evbuffer_get_length(Input()) == 0 &&
        (state_ == State::kReading || state_ == State::kTunnel)) {
      state_ = State::kClosing;
    }
    if (aborted_ || (state_ == State::kClosing && OutputLength() == 0)) {
      worker_->Close(this);  // deletes this
      return;
    }
    if (OutputLength() > 0) {
      worker_->write_behind_->Add(bev_.get(), &write_slot_);
    }
  }

  void HandleEvent(short what) {
    if (what & BEV_EVENT_ERROR) {
      worker_->Close(this);
      return;
    }
    if (what & BEV_EVENT_EOF) {
      peer_closed_ = true;
      Drive();
      return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
      // Idle only counts while the client owes us a request.
      if (state_ == State::kSleeping || state_ == State::kStreaming) {
        if (bufferevent_enable(bev_.get(), EV_READ) == 0) return;
      }
      worker_->Close(this);
    }
  }

  void ParseInput() {
    evbuffer* input = Input();
    while (state_ == State::kReading && OutputLength() < kOutputHighBytes &&
           evbuffer_get_length(input) > 0) {
      evbuffer_iovec chunk;
      if (evbuffer_peek(input, -1, nullptr, &chunk, 1) < 1) return;
      const char* data = static_cast<const char*>(chunk.iov_base);
      size_t used = 0;
      switch (parser_.Execute(data, chunk.iov_len, &used)) {
        case net::HttpParser::Result::kNeedMore:
          break;
        case net::HttpParser::Result::kUpgrade:
          // Accepted, the rest is not HTTP (the state left kReading);
          // refused and answered, HTTP goes on with the next request.
          if (state_ == State::kReading) parser_.ResumeAfterUpgrade();
          break;
        case net::HttpParser::Result::kComplete:
        case net::HttpParser::Result::kPausedHead:
          parser_.Resume();
          break;
        case net::HttpParser::Result::kError:
          Reject(parser_.error_status());
          used = chunk.iov_len;
          break;
      }
      if (evbuffer_drain(input, used) != 0) Abort();
    }
  }

  // Request head callbacks.
  void ResetRequest() {
    expect_continue_ = false;
    upgrade_websocket_ = false;
    websocket_key_.clear();
    route_ = Route::kNotFound;
    allow_ = {};
    query_error_ = {};
    number_ = 0;
    chunked_ = false;
    body_bytes_ = 0;
    digest_ok_ = true;
  }

  // Holds the head to the worker's limits and notes the fields it acts on
  // (the last of each wins); false when it refused the request.
  bool ReadHead() {
    if (parser_.target().size() > kMaxUrlBytes) {
      parser_.Reject(414, "request target too long");
      return false;
    }
    const net::HeaderList& fields = parser_.headers();
    size_t header_bytes = 0;
    for (size_t i = 0; i < fields.size(); ++i) {
      std::string_view name = fields.name(i);
      std::string_view value = fields.value(i);
      header_bytes += name.size() + value.size();
      if (net::EqualsIgnoreCase(name, "expect")) {
        expect_continue_ = net::EqualsIgnoreCase(value, "100-continue");
      } else if (net::EqualsIgnoreCase(name, "upgrade")) {
        upgrade_websocket_ = net::EqualsIgnoreCase(value, "websocket");
      } else if (net::EqualsIgnoreCase(name, "sec-websocket-key")) {
        websocket_key_.assign(value);
      }
    }
    if (header_bytes > kMaxHeaderBytes) {
      parser_.Reject(431, "request header too large");
      return false;
    }
    return true;
  }

  // Picks the endpoint once the head is in, so the body goes where it belongs.
  void RouteRequest() {
    std::string_view url = parser_.target();
    size_t question = url.find('?');
    std::string_view path = url.substr(0, question);
    std::string_view query = question == std::string_view::npos
                                 ? std::string_view()
                                 : url.substr(question + 1);
    auto method = static_cast<llhttp_method_t>(parser_.method());
    bool get = method == HTTP_GET || method == HTTP_HEAD;
    bool post = method == HTTP_POST || method == HTTP_PUT;

    if (path == "/") {
      Allow(Route::kHello, get, "GET, HEAD");
    } else if (path == "/healthz") {
      Allow(Route::kHealthz, get, "GET, HEAD");
    } else if (path == "/control/health") {
      Allow(Route::kControlHealth, post, "POST, PUT");
      SetNumber(QueryNumber(query, "status", 0, 200, 599),
                "status must be a number from 200 to 599");
      if (!QueryValue(query, "status")) query_error_ = "status is missing";
    } else if (path == "/control/fail") {
      Allow(Route::kControlFail, post, "POST, PUT");
      std::optional<uint64_t> status = QueryNumber(query, "status", 0, 0, 599);
      SetNumber(
          status && (*status == 0 || *status >= 200) ? status : std::nullopt,
          "status must be 0 or a number from 200 to 599");
      if (!QueryValue(query, "status")) query_error_ = "status is missing";
      std::optional<uint64_t> percent =
          QueryNumber(query, "percent", 100, 1, 100);
      if (!percent && query_error_.empty())
        query_error_ = "percent must be a number from 1 to 100";
      fail_percent_ = static_cast<int>(percent.value_or(100));
    } else if (path == "/control/delay") {
      Allow(Route::kControlDelay, post, "POST, PUT");
      SetNumber(QueryNumber(query, "ms", 0, 0, 600000),
                "ms must be a number from 0 to 600000");
      if (!QueryValue(query, "ms")) query_error_ = "ms is missing";
      std::optional<uint64_t> percent =
          QueryNumber(query, "percent", 100, 1, 100);
      if (!percent && query_error_.empty())
        query_error_ = "percent must be a number from 1 to 100";
      delay_percent_ = static_cast<int>(percent.value_or(100));
    } else if (path == "/control/feedback") {
      // What /healthz tells tandem about this worker's load: weight=N (a
      // percentage, -1 = none) and state=drain|up|none.
      Allow(Route::kControlFeedback, post, "POST, PUT");
      std::optional<std::string_view> weight = QueryValue(query, "weight");
      std::optional<std::string_view> state = QueryValue(query, "state");
      feedback_weight_ = -2;
      feedback_state_ = -1;
      if (weight) {
        auto value = ParseNumber(*weight);
        if (*weight == "-1") {
          feedback_weight_ = -1;
        } else if (value && *value <= 1000) {
          feedback_weight_ = static_cast<int>(*value);
        } else {
          query_error_ = "weight must be -1 or a percentage from 0 to 1000";
        }
      }
      if (state) {
        if (*state == "none") {
          feedback_state_ = 0;
        } else if (*state == "drain") {
          feedback_state_ = 1;
        } else if (*state == "up") {
          feedback_state_ = 2;
        } else {
          query_error_ = "state must be drain, up or none";
        }
      }
    } else if (path == "/compute") {
      Allow(Route::kCompute, get || post, "GET, HEAD, POST, PUT");
      SetNumber(QueryNumber(query, "rounds", kDefaultRounds, 1, kMaxRounds),
                "rounds must be a number from 1 to 10000000");
      StartDigest();
    } else if (path == "/bytes") {
      Allow(Route::kBytes, get, "GET, HEAD");
      SetNumber(QueryNumber(query, "n", 0, 0, UINT64_MAX),
                "n must be a byte count");
      std::optional<std::string_view> chunked = QueryValue(query, "chunked");
      chunked_ = chunked && *chunked != "0" && *chunked != "false";
    } else if (path == "/sink") {
      Allow(Route::kSink, post, "POST, PUT");
    } else if (path.starts_with("/status/")) {
      route_ = Route::kStatus;
      std::optional<uint64_t> status = ParseNumber(path.substr(8));
      SetNumber(
          status && *status >= 200 && *status <= 599 ? status : std::nullopt,
          "the status must be a number from 200 to 599");
    } else if (path == "/sleep") {
      Allow(Route::kSleep, get, "GET, HEAD");
      SetNumber(QueryNumber(query, "ms", 0, 0, kMaxSleepMs),
                "ms must be a number from 0 to 600000");
    } else if (path == "/stats") {
      Allow(Route::kStats, get, "GET, HEAD");
    } else if (path == "/echo") {
      Allow(Route::kEcho, method == HTTP_GET, "GET");
    }

    bool has_body = parser_.framing() == net::Framing::kChunked ||
                    (parser_.framing() == net::Framing::kContentLength &&
                     parser_.content_length() > 0);
    if (expect_continue_ && has_body && parser_.http_major() == 1 &&
        parser_.http_minor() == 1) {
      static constexpr std::string_view kContinue =
          "HTTP/1.1 100 Continue\r\n\r\n";
      if (evbuffer_add(Output(), kContinue.data(), kContinue.size()) != 0) {
        Abort();
      }
    }
  }

  void Allow(Route route, bool method_allowed, std::string_view allow) {
    route_ = route;
    if (!method_allowed) allow_ = allow;
  }

  void SetNumber(std::optional<uint64_t> value, std::string_view error) {
    if (value) {
      number_ = *value;
    } else {
      query_error_ = error;
    }
  }

  void StartDigest() {
    if (!digest_) digest_.reset(EVP_MD_CTX_new());
    digest_ok_ =
        digest_ != nullptr &&
        EVP_DigestInit_ex(digest_.get(), worker_->sha256_.get(), nullptr) == 1;
  }

  void ConsumeBody(std::string_view piece) {
    body_bytes_ += piece.size();
    if (route_ == Route::kCompute && digest_ok_ && allow_.empty()) {
      digest_ok_ =
          EVP_DigestUpdate(digest_.get(), piece.data(), piece.size()) == 1;
    }
  }

  // Counts a request in flight from its head on, for /stats.
  void BeginRequest() {
    if (in_flight_) return;
    in_flight_ = true;
    DemoWorkerShared& shared = *worker_->shared_;
    uint64_t now = shared.in_flight.fetch_add(1, std::memory_order_relaxed) + 1;
    uint64_t most = shared.max_concurrent.load(std::memory_order_relaxed);
    while (most < now && !shared.max_concurrent.compare_exchange_weak(
                             most, now, std::memory_order_relaxed)) {
    }
  }

  // The answer is queued (or the connection is going away).
  void EndRequest() {
    if (!in_flight_) return;
    in_flight_ = false;
    worker_->shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  // A failure switched on by /control/fail hits everything but the probes
  // and the switches themselves.
  // Called once per request: it counts the requests a percentage applies to.
  bool Failing() const {
    DemoWorkerShared& shared = *worker_->shared_;
    if (shared.fail_status.load(std::memory_order_relaxed) == 0 ||
        route_ == Route::kHealthz || route_ == Route::kStats ||
        route_ == Route::kControlHealth || route_ == Route::kControlFail ||
        route_ == Route::kControlFeedback || route_ == Route::kControlDelay) {
      return false;
    }
    return InShare(shared.fail_percent, shared.fail_counter);
  }

  // Whether the next request counted by `counter` is among `percent` of
  // them, spread evenly: request n is when floor(n × P / 100) steps up.
  static bool InShare(const std::atomic<int>& percent_setting,
                      std::atomic<uint64_t>& counter) {
    const uint64_t percent =
        static_cast<uint64_t>(percent_setting.load(std::memory_order_relaxed));
    if (percent >= 100) return true;
    const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
    return (n * percent) / 100 != ((n + 1) * percent) / 100;
  }

  // Whether this "/" request is one of the delayed share (called once per
  // request, as Failing()).
  bool Delayed() const {
    DemoWorkerShared& shared = *worker_->shared_;
    return InShare(shared.delay_percent, shared.delay_counter);
  }

  // Answers a complete request.
  void Answer() {
    worker_->shared_->requests_served.fetch_add(1, std::memory_order_relaxed);
    keep_alive_ = parser_.keep_alive();
    http10_ = parser_.http_major() == 1 && parser_.http_minor() == 0;
    head_only_ = parser_.method() == HTTP_HEAD;
    // An upgrade we do not take leaves the rest of the stream unparseable.
    if (parser_.upgrade() && route_ != Route::kEcho) {
      keep_alive_ = false;
    }

    if (!allow_.empty()) {
      std::string extra = "Allow: ";
      extra.append(allow_).append("\r\n");
      WriteAnswer(405, "method not allowed\n", kTextPlain, extra);
    } else if (!query_error_.empty()) {
      std::string body(query_error_);
      body.push_back('\n');
      WriteAnswer(400, body);
    } else if (Failing()) {
      WriteAnswer(worker_->shared_->fail_status.load(std::memory_order_relaxed),
                  "failing on purpose\n");
    } else {
      switch (route_) {
        case Route::kNotFound:
          WriteAnswer(404, "not found\n");
          break;
        case Route::kHello: {
          const int delay =
              worker_->shared_->delay_ms.load(std::memory_order_relaxed);
          if (delay > 0 && Delayed()) {
            number_ = static_cast<uint64_t>(delay);
            StartSleep();  // a slow worker: "/" answers after the delay
          } else {
            WriteAnswer(200, worker_->hello_body_);
          }
          break;
        }
        case Route::kHealthz: {
          int status =
              worker_->shared_->health_status.load(std::memory_order_relaxed);
          std::string feedback;
          int weight =
              worker_->shared_->feedback_weight.load(std::memory_order_relaxed);
          int state =
              worker_->shared_->feedback_state.load(std::memory_order_relaxed);
          if (weight >= 0)
            feedback += "Tandem-Weight: " + std::to_string(weight) + "%\r\n";
          if (state == 1) feedback += "Tandem-State: drain\r\n";
          if (state == 2) feedback += "Tandem-State: up\r\n";
          WriteAnswer(status, status == 200 ? "ok\n" : "unhealthy\n",
                      kTextPlain, feedback);
          break;
        }
        case Route::kControlFeedback:
          if (feedback_weight_ != -2) {
            worker_->shared_->feedback_weight.store(feedback_weight_,
                                                    std::memory_order_relaxed);
          }
          if (feedback_state_ != -1) {
            worker_->shared_->feedback_state.store(feedback_state_,
                                                   std::memory_order_relaxed);
          }
          WriteAnswer(200, "feedback set\n");
          break;
        case Route::kControlHealth:
          worker_->SetHealthStatus(static_cast<int>(number_));
          body_.assign("healthz answers ");
          AppendNumber(body_, number_);
          body_.push_back('\n');
          WriteAnswer(200, body_);
          break;
        case Route::kControlDelay:
          worker_->shared_->delay_percent.store(delay_percent_,
                                                std::memory_order_relaxed);
          worker_->shared_->delay_ms.store(static_cast<int>(number_),
                                           std::memory_order_relaxed);
          body_.assign("/ answers after ");
          AppendNumber(body_, number_);
          body_.append(" ms");
          if (delay_percent_ < 100) {
            body_.append(" (");
            AppendNumber(body_, static_cast<uint64_t>(delay_percent_));
            body_.append(" % of requests)");
          }
          body_.push_back('\n');
          WriteAnswer(200, body_);
          break;
        case Route::kControlFail:
          worker_->shared_->fail_percent.store(fail_percent_,
                                               std::memory_order_relaxed);
          worker_->SetFailStatus(static_cast<int>(number_));
          body_.assign("requests answer ");
          AppendNumber(body_, number_);
          body_.push_back('\n');
          WriteAnswer(200, body_);
          break;
        case Route::kCompute:
          AnswerCompute();
          break;
        case Route::kBytes:
          AnswerBytes();
          break;
        case Route::kSink:
          body_.assign("{\"worker\":\"").append(worker_->name_);
          body_.append("\",\"bytes\":");
          AppendNumber(body_, body_bytes_);
          body_.append("}\n");
          WriteAnswer(200, body_, kJson);
          break;
        case Route::kStatus:
          body_.assign("status ");
          AppendNumber(body_, number_);
          body_.push_back('\n');
          WriteAnswer(static_cast<int>(number_), body_);
          break;
        case Route::kSleep:
          StartSleep();
          break;
        case Route::kStats:
          AnswerStats();
          break;
        case Route::kEcho:
          AnswerEcho();
          break;
      }
    }

    if (state_ != State::kSleeping && state_ != State::kStreaming) {
      EndRequest();
    }
    if (state_ == State::kReading && !keep_alive_) state_ = State::kClosing;
  }

  void AnswerCompute() {
    EVP_MD_CTX* ctx = digest_.get();
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    bool ok = digest_ok_;
    if (ok && body_bytes_ == 0) {
      ok = EVP_DigestUpdate(ctx, worker_->name_.data(),
                            worker_->name_.size()) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, digest, &length) == 1;
    const EVP_MD* sha256 = worker_->sha256_.get();
    for (uint64_t round = 1; ok && round < number_; ++round) {
      ok = EVP_DigestInit_ex(ctx, sha256, nullptr) == 1 &&
           EVP_DigestUpdate(ctx, digest, length) == 1 &&
           EVP_DigestFinal_ex(ctx, digest, &length) == 1;
    }
    if (!ok) {
      WriteAnswer(500, "SHA-256 failed\n");
      return;
    }
    body_.assign("{\"worker\":\"").append(worker_->name_);
    body_.append("\",\"rounds\":");
    AppendNumber(body_, number_);
    body_.append(",\"bytes\":");
    AppendNumber(body_, body_bytes_);
    body_.append(",\"sha256\":\"");
    AppendHex(body_, digest, length);
    body_.append("\"}\n");
    WriteAnswer(200, body_, kJson);
  }

  void AnswerBytes() {
    // HTTP/1.0 has no chunked coding.
    chunked_ = chunked_ && !http10_;
    bytes_left_ = number_;
    if (!WriteHead(200, "application/octet-stream",
                   chunked_ ? std::nullopt : std::optional(number_))) {
      return;
    }
    if (head_only_) return;
    state_ = State::kStreaming;
  }

  // Queues pieces until kStreamQueueBytes are waiting; the write callback
  // calls again once they have drained to one piece.
  void StreamBytes() {
    evbuffer* output = Output();
    const std::vector<char>& pattern = worker_->pattern_;
    while (bytes_left_ > 0 && evbuffer_get_length(output) < kStreamQueueBytes) {
      size_t piece =
          static_cast<size_t>(std::min<uint64_t>(bytes_left_, kPieceBytes));
      if (chunked_) {
        char line[24];
        auto end = std::to_chars(line, line + sizeof(line) - 2, piece, 16).ptr;
        *end++ = '\r';
        *end++ = '\n';
        if (evbuffer_add(output, line, static_cast<size_t>(end - line)) != 0) {
          return Abort();
        }
      }
      // Pieces start at multiples of kPieceBytes, where the pattern restarts.
      if (evbuffer_add_reference(output, pattern.data(), piece, nullptr,
                                 nullptr) != 0 ||
          (chunked_ && evbuffer_add(output, "\r\n", 2) != 0)) {
        return Abort();
      }
      bytes_left_ -= piece;
    }
    if (bytes_left_ > 0) return;
    if (chunked_ && evbuffer_add(output, "0\r\n\r\n", 5) != 0) return Abort();
    FinishAsync();
  }

  void StartSleep() {
    if (!timer_) {
      timer_.reset(
          evtimer_new(bufferevent_get_base(bev_.get()), &OnTimer, this));
    }
    timeval delay{static_cast<time_t>(number_ / 1000),
                  static_cast<suseconds_t>(number_ % 1000 * 1000)};
    if (!timer_ || evtimer_add(timer_.get(), &delay) != 0) {
      WriteAnswer(500, "cannot arm a timer\n");
      return;
    }
    state_ = State::kSleeping;
  }

  void AnswerSleep() {
    if (route_ == Route::kHello) {
      WriteAnswer(200, worker_->hello_body_);
      FinishAsync();
      return;
    }
    body_.assign("slept ");
    AppendNumber(body_, number_);
    body_.append(" ms\n");
    WriteAnswer(200, body_);
    FinishAsync();
  }

  void AnswerStats() {
    const DemoWorkerShared& shared = *worker_->shared_;
    body_.assign("{\"worker\":\"").append(worker_->name_);
    body_.append("\",\"connections_accepted\":");
    AppendNumber(body_,
                 shared.connections_accepted.load(std::memory_order_relaxed));
    body_.append(",\"requests_served\":");
    AppendNumber(body_, shared.requests_served.load(std::memory_order_relaxed));
    body_.append(",\"health_status\":");
    AppendNumber(body_, static_cast<uint64_t>(shared.health_status.load(
                            std::memory_order_relaxed)));
    body_.append(",\"fail_status\":");
    AppendNumber(body_, static_cast<uint64_t>(shared.fail_status.load(
                            std::memory_order_relaxed)));
    body_.append(",\"in_flight\":");
    AppendNumber(body_, shared.in_flight.load(std::memory_order_relaxed));
    body_.append(",\"max_concurrent\":");
    AppendNumber(body_, shared.max_concurrent.load(std::memory_order_relaxed));
    body_.append("}\n");
    WriteAnswer(200, body_, kJson);
  }

  // RFC 6455 section 4.2.2: the accept value proves the key was read. After
  // the 101 the bytes are echoed as they come, frames unparsed.
  void AnswerEcho() {
    if (!parser_.upgrade() || !upgrade_websocket_ || websocket_key_.empty()) {
      WriteAnswer(426, "upgrade to websocket\n", kTextPlain,
                  "Upgrade: websocket\r\n");
      return;
    }
    std::string source = websocket_key_;
    source.append(kWebSocketGuid);
    unsigned char sha1[EVP_MAX_MD_SIZE];
    unsigned int sha1_length = 0;
    unsigned char accept[64];
    if (EVP_Digest(source.data(), source.size(), sha1, &sha1_length, EVP_sha1(),
                   nullptr) != 1) {
      WriteAnswer(500, "SHA-1 failed\n");
      return;
    }
    int accept_length =
        EVP_EncodeBlock(accept, sha1, static_cast<int>(sha1_length));
    head_.assign("HTTP/1.1 101 Switching Protocols\r\nX-Worker: ");
    head_.append(worker_->name_);
    head_.append(
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: ");
    head_.append(reinterpret_cast<const char*>(accept),
                 static_cast<size_t>(accept_length));
    head_.append("\r\n\r\n");
    if (evbuffer_add(Output(), head_.data(), head_.size()) != 0) {
      return Abort();
    }
    state_ = State::kTunnel;
  }

  void Echo() {
    if (OutputLength() >= kOutputHighBytes)
      return;  // the write callback resumes
    if (evbuffer_add_buffer(Output(), Input()) != 0) Abort();
  }

  void FinishAsync() {
    EndRequest();
    state_ = keep_alive_ ? State::kReading : State::kClosing;
  }

  // A request the codec or our limits refused: answer and close.
  void Reject(int status) {
    EndRequest();
    keep_alive_ = false;
    head_only_ = false;
    http10_ = false;
    body_.assign(net::ReasonPhrase(status));
    body_.push_back('\n');
    WriteAnswer(status, body_);
    state_ = State::kClosing;
  }

  void Abort() {
    aborted_ = true;
    state_ = State::kClosing;
  }

  // Puts the status line and headers in head_; `content_length` nullopt
  // means chunked.
  void AppendHead(int status, std::string_view content_type,
                  std::optional<uint64_t> content_length,
                  std::string_view extra_headers) {
    head_.assign("HTTP/1.1 ");
    AppendNumber(head_, static_cast<uint64_t>(status));
    head_.push_back(' ');
    head_.append(net::ReasonPhrase(status));
    head_.append("\r\nX-Worker: ");
    head_.append(worker_->name_);
    head_.append("\r\n");
    if (StatusHasBody(status)) {
      head_.append("Content-Type: ").append(content_type).append("\r\n");
      if (content_length) {
        head_.append("Content-Length: ");
        AppendNumber(head_, *content_length);
        head_.append("\r\n");
      } else {
        head_.append("Transfer-Encoding: chunked\r\n");
      }
    }
    if (!keep_alive_) {
      head_.append("Connection: close\r\n");
    } else if (http10_) {
      head_.append("Connection: keep-alive\r\n");
    }
    head_.append(extra_headers);
    head_.append("\r\n");
  }

  bool WriteHead(int status, std::string_view content_type,
                 std::optional<uint64_t> content_length) {
    AppendHead(status, content_type, content_length, {});
    if (evbuffer_add(Output(), head_.data(), head_.size()) != 0) {
      Abort();
      return false;
    }
    return true;
  }

  void WriteAnswer(int status, std::string_view body,
                   std::string_view content_type = kTextPlain,
                   std::string_view extra_headers = {}) {
    AppendHead(status, content_type, body.size(), extra_headers);
    if (!head_only_ && StatusHasBody(status)) head_.append(body);
    if (evbuffer_add(Output(), head_.data(), head_.size()) != 0) Abort();
  }

  DemoWorker* worker_;
  net::BufferEventPtr bev_;
  net::WriteBehind::Slot write_slot_;  // bev_'s output, queued for writing
  net::EventPtr timer_;
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> digest_;
  net::HttpParser parser_;
  State state_ = State::kReading;
  bool peer_closed_ = false;
  bool aborted_ = false;
  bool in_flight_ = false;  // counted in DemoWorkerShared::in_flight

  // The request being read.
  bool expect_continue_ = false;
  bool upgrade_websocket_ = false;
  std::string websocket_key_;
  Route route_ = Route::kNotFound;
  std::string_view allow_;        // non-empty: the method is not allowed
  std::string_view query_error_;  // non-empty: answer 400 with it
  uint64_t number_ = 0;           // rounds, n, status, ms
  bool chunked_ = false;
  uint64_t body_bytes_ = 0;
  bool digest_ok_ = true;

  // The answer being written.
  bool keep_alive_ = true;
  bool http10_ = false;
  bool head_only_ = false;
  uint64_t bytes_left_ = 0;
  std::string head_;
  std::string body_;
};

void DemoWorker::MdDeleter::operator()(evp_md_st* md) const { EVP_MD_free(md); }

DemoWorker::DemoWorker(event_base* base, std::string name,
                       std::shared_ptr<DemoWorkerShared> shared)
    : base_(base),
      name_(std::move(name)),
      hello_body_("hello from " + name_ + "\n"),
      shared_(shared ? std::move(shared)
                     : std::make_shared<DemoWorkerShared>()),
      sha256_(EVP_MD_fetch(nullptr, "SHA256", nullptr)),
      pattern_(kPieceBytes),
      write_behind_(std::make_unique<net::WriteBehind>(base)) {
  for (size_t i = 0; i < pattern_.size(); ++i) {
    pattern_[i] = kBytesPattern[i % kBytesPattern.size()];
  }
}

DemoWorker::~DemoWorker() = default;

DemoWorkerStart DemoWorker::Start(const std::string& listen_address,
                                  bool reuse_port) {
  DemoWorkerStart result;
  if (listener_) {
    result.error = "the worker is already listening";
    return result;
  }
  if (!ValidName(name_)) {
    result.error = "worker name \"" + name_ +
                   "\" must be 1 to 64 characters of [A-Za-z0-9._-]";
    return result;
  }
  if (!sha256_) {
    result.error = "OpenSSL has no SHA-256";
    return result;
  }
  sockaddr_storage address{};
  socklen_t address_length = 0;
  if (!ParseAddress(listen_address, address, address_length)) {
    result.error = "\"" + listen_address +
                   "\" is not a numeric IPv4:PORT or [IPv6]:PORT address";
    return result;
  }
  accept_retry_.reset(evtimer_new(base_, &OnAcceptRetry, this));
  if (!accept_retry_ || !write_behind_->ok()) {
    result.error = "cannot create a timer event";
    return result;
  }
  unsigned flags =
      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
  if (reuse_port) flags |= LEV_OPT_REUSEABLE_PORT;
  listener_.reset(evconnlistener_new_bind(
      base_, &OnAccept, this, flags, kListenBacklog,
      reinterpret_cast<sockaddr*>(&address), static_cast<int>(address_length)));
  if (!listener_) {
    result.error = "cannot listen on " + listen_address + ": " +
                   evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
    return result;
  }
  evconnlistener_set_error_cb(listener_.get(), &OnAcceptError);

  sockaddr_storage bound{};
  socklen_t bound_length = sizeof(bound);
  if (getsockname(evconnlistener_get_fd(listener_.get()),
                  reinterpret_cast<sockaddr*>(&bound), &bound_length) != 0) {
    result.error = std::string("getsockname: ") + std::strerror(errno);
    listener_.reset();
    return result;
  }
  port_ = ntohs(bound.ss_family == AF_INET6
                    ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                    : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  result.port = port_;
  return result;
}

void DemoWorker::SetHealthStatus(int status) {
  if (status >= 200 && status <= 599) {
    shared_->health_status.store(status, std::memory_order_relaxed);
  }
}

void DemoWorker::SetFailStatus(int status) {
  if (status == 0 || (status >= 200 && status <= 599)) {
    shared_->fail_status.store(status, std::memory_order_relaxed);
  }
}

void DemoWorker::OnAccept(evconnlistener*, int fd, sockaddr*, int, void* arg) {
  static_cast<DemoWorker*>(arg)->Accept(fd);
}

void DemoWorker::OnAcceptError(evconnlistener* listener, void* arg) {
  auto* self = static_cast<DemoWorker*>(arg);
  int error = EVUTIL_SOCKET_ERROR();
  if (error != EMFILE && error != ENFILE && error != ENOBUFS &&
      error != ENOMEM) {
    return;  // the client's trouble (ECONNABORTED and the like)
  }
  // Out of descriptors: a ready listener would spin, so pause accepting.
  if (evconnlistener_disable(listener) == 0 &&
      evtimer_add(self->accept_retry_.get(), &kAcceptRetryDelay) != 0) {
    evconnlistener_enable(listener);
  }
}

void DemoWorker::OnAcceptRetry(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<DemoWorker*>(arg);
  if (evconnlistener_enable(self->listener_.get()) != 0 &&
      evtimer_add(self->accept_retry_.get(), &kAcceptRetryDelay) != 0) {
    // Neither works: there is nothing left to try.
    self->listener_.reset();
  }
}

void DemoWorker::Accept(int fd) {
  shared_->connections_accepted.fetch_add(1, std::memory_order_relaxed);
  int one = 1;
  // Answers are written whole; a failure here costs latency, not correctness.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  bufferevent* bev = bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE);
  if (bev == nullptr) {
    evutil_closesocket(fd);
    return;
  }
  auto connection = std::make_unique<Connection>(this, bev);
  if (!connection->Begin()) return;  // frees the bufferevent and the socket
  Connection* key = connection.get();
  connections_.emplace(key, std::move(connection));
}

void DemoWorker::Close(Connection* connection) {
  connections_.erase(connection);
}

}  // namespace tandem::demo
