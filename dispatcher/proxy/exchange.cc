// One request and its response; see exchange.h. The retry rules are
// docs/retries.md, the deadlines docs/limits.md.
#include "dispatcher/proxy/exchange.h"

#include <algorithm>
#include <cmath>

#include "algorithms/hash.h"
#include "dispatcher/loop.h"
#include "net/h2_message.h"
#include "net/http_message.h"
#include "net/posix.h"
#include "net/turn_clock.h"

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;

// try_timeout = "auto": this many times the cluster's recent p99, at least
// the floor (docs/retries.md).
constexpr int64_t kAutoTryFactor = 3;
constexpr std::chrono::milliseconds kAutoTryFloor{1000};
// A retry body kept past this capacity is freed when its exchange ends, so
// one large upload does not stay resident on an idle connection.
constexpr size_t kMaxIdleRetryBodyBytes = 16 * 1024;
// Past retry_buffer, a request body is kept while its HTTP/2 worker has not
// shown it has the stream only if the worker's stream window is at most
// this (docs/retries.md, "Bodies").
constexpr uint32_t kMaxHeldWindow = 1024 * 1024;
// A request above normal priority may join a queue full of its equals and
// betters up to this many times queue_size: queue_size keeps the wait of
// normal and low requests short, and high ones, arriving in bursts, would
// otherwise be turned away while a slot frees every few milliseconds
// (docs/retries.md, "Priorities").
constexpr size_t kHighQueueFactor = 4;

}  // namespace

Exchange::Exchange(Loop& loop, Downstream& downstream)
    : loop_(loop), downstream_(downstream) {
  evtimer_assign(&timer_, loop_.base(), TimerCb, this);
}

Exchange::~Exchange() { Cancel(); }

ClusterRuntime& Exchange::cluster() const {
  return cluster_ != nullptr ? *cluster_ : *downstream_.listener().cluster;
}

// ---- from the downstream ---------------------------------------------------

void Exchange::Begin(bool complete, bool at_upgrade) {
  cluster_ = downstream_.listener().cluster;
  const net::HttpParser& request = downstream_.request();
  state_.request_start = net::TurnClock::Now();
  if (complete) {
    state_.request_complete = true;
    state_.request_done = state_.request_start;
    state_.stopped_at_upgrade = at_upgrade;
  }
  state_.head_request = request.method() == HTTP_HEAD;
  phase_ = Phase::kConnecting;
  Touch();
  if (net::HasUnsupportedExpectation(request)) {
    Respond(417, "only 100-continue is supported", true);
    return;
  }
  state_.upgrade = net::WantsUpgrade(request);
  if (downstream_.grpc()) {
    if (auto timeout = request.headers().Find("grpc-timeout")) {
      if (auto left = net::ParseGrpcTimeout(*timeout)) {
        state_.grpc_deadline =
            state_.request_start +
            std::min<Clock::duration>(
                std::chrono::duration_cast<Clock::duration>(*left),
                cluster().config->request_timeout);
      }
    }
  }
  // The listener's priority, unless the request names its own.
  state_.priority = downstream_.listener().config->priority;
  const std::string& priority_header = cluster().config->priority_header;
  if (!priority_header.empty()) {
    if (auto value = request.headers().Find(priority_header)) {
      state_.priority = conf::ParsePriority(*value).value_or(state_.priority);
    }
  }
  if (!PassRateLimits()) return;
  ++cluster().active_requests;
  state_.counted_request = true;
  Route();
}

std::optional<uint64_t> Exchange::BodyKeptForWorker() const {
  // retry_buffer = 0: no body is kept for a retry, this one neither.
  if (phase_ != Phase::kProxying || attempt_->upstream() == nullptr ||
      cluster().config->retry_buffer_bytes == 0) {
    return std::nullopt;
  }
  const std::optional<uint32_t> window =
      attempt_->upstream()->window_before_heard();
  if (!window || *window > kMaxHeldWindow) return std::nullopt;
  return std::max<uint64_t>(*window, cluster().config->retry_buffer_bytes);
}

bool Exchange::HoldsBody() const {
  if (!state_.body_kept) return false;
  const std::optional<uint64_t> keep = BodyKeptForWorker();
  return keep && state_.retry_body.size() >= *keep;
}

void Exchange::OnRequestBody(const char* data, size_t length) {
  if (state_.body_kept) {
    // Keep a small body so the request can go to another backend, and any
    // body while the try's worker has not shown it has the stream (held to
    // its window, HoldsBody, plus what the client side parsed at once).
    if (state_.retry_body.size() + length <=
            cluster().config->retry_buffer_bytes ||
        BodyKeptForWorker()) {
      state_.retry_body.append(data, length);
    } else {
      state_.body_kept = false;
      std::string().swap(state_.retry_body);
    }
  }
  if (attempt_->upstream() != nullptr) attempt_->SendBody(data, length);
}

void Exchange::OnRequestComplete(bool at_upgrade) {
  if (attempt_->upstream() != nullptr && phase_ == Phase::kProxying)
    attempt_->SendBodyEnd();
  state_.request_complete = true;
  state_.request_done = net::TurnClock::Now();
  state_.stopped_at_upgrade = at_upgrade;
  if (state_.response_complete) {
    Finish();
    return;
  }
  if (!state_.response_started && phase_ == Phase::kProxying) {
    // The whole request is out: the backend's time to answer starts.
    ArmHeadTimer(net::TurnClock::Now());
  }
}

void Exchange::OnRequestError(int status, const char* reason) {
  // The body broke the rules after part of it went to the backend.
  EndTries();
  if (state_.response_started) {
    Log();
    downstream_.ExchangeEnded(Downstream::End::kDestroy);
    return;
  }
  Respond(status, reason, true);
}

void Exchange::Reject(int status, const char* detail, uint32_t flag) {
  cluster_ = downstream_.listener().cluster;
  state_.flags |= flag;
  Respond(status, detail, true);
}

void Exchange::OnDownstreamDrained() {
  if (phase_ == Phase::kProxying) attempt_->ResumeResponse();
}

void Exchange::Abort(uint32_t flag) {
  state_.flags |= flag;
  EndTries();
  if (phase_ != Phase::kIdle || downstream_.request().message_started()) Log();
  if (state_.response_started && !(flag & kFlagClientReset)) {
    // The backend cut the response: deliver what arrived, then end the
    // connection so the client cannot take it as complete.
    downstream_.ExchangeEnded(Downstream::End::kCutOff);
    return;
  }
  downstream_.ExchangeEnded(Downstream::End::kDestroy);
}

void Exchange::EndTunnel(Downstream::End end) {
  EndTries();
  Log();
  downstream_.ExchangeEnded(end);
}

void Exchange::Cancel() {
  event_del(&timer_);
  Dequeue();
  EndTries();
  ReleaseClusterCounts();
  phase_ = Phase::kDone;
}

void Exchange::EndTries() {
  first_.End(false);
  second_.End(false);
}

void Exchange::Reset() {
  event_del(&timer_);
  first_.Reset();
  second_.Reset();
  attempt_ = &first_;
  // The retry body's buffer is kept when it is of the usual size.
  std::string retry_body = std::move(state_.retry_body);
  retry_body.clear();
  if (retry_body.capacity() > kMaxIdleRetryBodyBytes)
    std::string().swap(retry_body);
  state_ = {};
  state_.retry_body = std::move(retry_body);
  phase_ = Phase::kIdle;
  // The next request takes the cluster of its own listener (after a reload,
  // this one's generation may be gone).
  cluster_ = nullptr;
}

uint64_t Exchange::BufferedBytes() const {
  return state_.retry_body.capacity() + first_.BufferedBytes() +
         second_.BufferedBytes();
}

// ---- routing ---------------------------------------------------------------

std::optional<uint64_t> Exchange::RequestHash() const {
  const conf::HashKey& key = cluster().config->hash_key;
  const net::HttpParser& request = downstream_.request();
  std::string_view value;
  switch (key.kind) {
    case conf::HashKey::Kind::kNone:
      return std::nullopt;
    case conf::HashKey::Kind::kHeader: {
      auto header = request.headers().Find(key.name);
      if (!header) return std::nullopt;
      value = *header;
      break;
    }
    case conf::HashKey::Kind::kCookie: {
      // Cookie: a=1; b=2 (RFC 6265 §4.2); several Cookie fields may exist.
      const net::HeaderList& headers = request.headers();
      for (size_t i = 0; i < headers.size() && value.empty(); ++i) {
        if (!net::EqualsIgnoreCase(headers.name(i), "cookie")) continue;
        std::string_view rest = headers.value(i);
        while (!rest.empty()) {
          size_t semi = rest.find(';');
          std::string_view pair = rest.substr(0, semi);
          while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
          size_t eq = pair.find('=');
          if (eq != std::string_view::npos && pair.substr(0, eq) == key.name) {
            value = pair.substr(eq + 1);
            break;
          }
          if (semi == std::string_view::npos) break;
          rest.remove_prefix(semi + 1);
        }
      }
      if (value.empty()) return std::nullopt;
      break;
    }
    case conf::HashKey::Kind::kSourceIp:
      value = downstream_.client_ip();
      break;
    case conf::HashKey::Kind::kPath: {
      value = request.target();
      size_t query = value.find('?');
      if (query != std::string_view::npos) value = value.substr(0, query);
      break;
    }
  }
  return algorithms::Hash64(value);
}

algorithms::PickInput Exchange::PickInputFor(
    const ClusterRuntime& runtime, const algorithms::TriedSet* tried) const {
  algorithms::PickInput input;
  input.inflight = runtime.inflight;
  input.latency_us = runtime.latency_us;
  input.tried = tried;
  if (runtime.config->hash_key.kind != conf::HashKey::Kind::kNone)
    input.hash = RequestHash();
  return input;
}

void Exchange::HeadArrived(size_t backend, std::chrono::microseconds after) {
  const size_t suspect = state_.unanswered_backend;
  if (suspect == SIZE_MAX || suspect == backend) return;
  state_.unanswered_backend = SIZE_MAX;
  loop_.SuspectUnanswered(cluster(), suspect, state_.unanswered_for, backend,
                          after);
}

size_t Exchange::PassOverSlow(ClusterRuntime& runtime,
                              algorithms::PickInput input, size_t pick) {
  BackendRuntime& slow = runtime.backends[pick];
  const Clock::time_point now = net::TurnClock::Now();
  if (now - slow.slow_probe_at >= algorithms::kSlowProbeInterval) {
    slow.slow_probe_at = now;  // a probe: its answer refreshes the estimate
    return pick;
  }
  algorithms::TriedSet skip = state_.tried;
  for (size_t b = 0; b < runtime.slow.size(); ++b) {
    if (runtime.slow[b]) skip.Insert(b);
  }
  input.tried = &skip;
  const std::optional<size_t> other = runtime.picker->Pick(input);
  if (!other || skip.Contains(*other)) return pick;
  slow.stats->passed_over_slow.Add();
  return *other;
}

bool Exchange::PassRateLimits() {
  for (RateLimitRuntime* rate :
       {&downstream_.listener().rate, &cluster().rate}) {
    if (!rate->lease) continue;
    const conf::RateLimit& limit = rate->shared->rate_limiter->config();
    std::string_view key;
    switch (limit.key) {
      case conf::RateLimit::Key::kGlobal:
        break;
      case conf::RateLimit::Key::kSourceIp:
        key = downstream_.client_ip();
        break;
      case conf::RateLimit::Key::kHeader: {
        // A request without the header is not limited by it.
        auto value = downstream_.request().headers().Find(limit.header);
        if (!value) continue;
        key = *value;
        break;
      }
    }
    const RateLease::Decision decision =
        rate->lease->Allow(key, state_.request_start);
    if (decision.allowed) {
      rate->stats->results[kRateAllowed].Add();
      continue;
    }
    state_.flags |= kFlagRateLimited;
    if (limit.dry_run) {
      rate->stats->results[kRateDryRun].Add();
      continue;
    }
    rate->stats->results[kRateLimited].Add();
    // Whole seconds until a token is due, at least one.
    const auto seconds = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(
               std::chrono::duration<double>(decision.wait).count())));
    const std::string fields =
        "Retry-After: " + std::to_string(seconds) + "\r\n";
    Respond(429, "rate limit exceeded", false, fields);
    return false;
  }
  return true;
}

void Exchange::EnterQueue(ClusterRuntime& runtime, Clock::duration timeout) {
  attempt_->ReleaseRequest(false);
  if (runtime.breakers && runtime.config->max_pending > 0) {
    if (!TakeShared(runtime.breakers->pending, runtime.config->max_pending) &&
        !(ShedLower(runtime) &&
          TakeShared(runtime.breakers->pending, runtime.config->max_pending))) {
      state_.flags |= kFlagCircuitBreaker;
      runtime.stats->breaker_overflows[kBreakerPending].Add();
      RespondBusy("the cluster's queue is at max_pending");
      return;
    }
    state_.counted_pending = true;
  }
  phase_ = Phase::kQueued;
  state_.queued = true;
  JoinQueue(runtime, false);
  runtime.stats->queued.Add(1);
  state_.queued_since = net::TurnClock::Now();
  loop_.WatchQueue();
  ArmTimer(timeout);
}

void Exchange::RequeueAtFront(ClusterRuntime& runtime) {
  attempt_->ReleaseRequest(false);
  if (runtime.breakers && runtime.config->max_pending > 0 &&
      !state_.counted_pending) {
    // Still counted as waiting (RetryFromQueue gave the count back for its
    // turn): the limit was checked when it joined.
    runtime.breakers->pending.fetch_add(1, std::memory_order_relaxed);
    state_.counted_pending = true;
  }
  phase_ = Phase::kQueued;
  state_.queued = true;
  JoinQueue(runtime, true);
}

void Exchange::Overflow(ClusterRuntime& runtime, bool retry,
                        const char* detail) {
  if (state_.from_queue) {
    // Still full: back to the head of the line, the timeout unchanged.
    RequeueAtFront(runtime);
    return;
  }
  uint32_t queue_size = runtime.config->queue_size;
  if (queue_size == 0 && runtime.adaptive != nullptr &&
      runtime.adaptive->measuring()) {
    // While minRTT is measured the limit stands at its floor for a moment:
    // requests over it wait rather than get 503 (envoy#8337).
    queue_size = runtime.config->adaptive.max_limit;
  }
  if (queue_size > 0 && !retry &&
      (runtime.queue.size() < queue_size || ShedLower(runtime) ||
       (state_.priority < conf::kNormalPriority &&
        runtime.queue.size() < kHighQueueFactor * queue_size))) {
    EnterQueue(runtime, runtime.config->queue_timeout);
    return;
  }
  RespondBusy(detail);
}

void Exchange::JoinQueue(ClusterRuntime& runtime, bool ahead_of_equals) {
  auto& queue = runtime.queue;
  auto it = queue.end();
  if (!runtime.config->priority_header.empty()) {
    it = std::find_if(queue.begin(), queue.end(), [&](const Exchange* other) {
      return ahead_of_equals ? other->priority() >= state_.priority
                             : other->priority() > state_.priority;
    });
  } else if (ahead_of_equals) {
    it = queue.begin();
  }
  queue.insert(it, this);
}

bool Exchange::ShedLower(ClusterRuntime& runtime) {
  auto& queue = runtime.queue;
  for (auto it = queue.rbegin(); it != queue.rend(); ++it) {
    Exchange* victim = *it;
    if (victim->priority() <= state_.priority) continue;
    victim->Dequeue();
    runtime.stats->shed[victim->priority()].Add();
    victim->state_.flags |= kFlagOverflow;
    victim->RespondBusy("shed for a request of higher priority");
    return true;
  }
  return false;
}

void Exchange::Route(const Retry* again) {
  ClusterRuntime& runtime = cluster();
  const bool retry = again != nullptr;
  if (!attempt_->AcquireRequest(runtime)) {
    // The cluster's circuit breaker: max_requests in flight across threads,
    // or the adaptive limit below it. (Counted once per request, not at each
    // turn it takes from the queue.)
    const bool adaptive =
        runtime.RequestLimit() != runtime.config->max_requests;
    if (!state_.from_queue) {
      runtime.stats
          ->breaker_overflows[adaptive ? kBreakerAdaptive : kBreakerRequests]
          .Add();
    }
    state_.flags |= adaptive ? kFlagAdaptive : kFlagCircuitBreaker;
    Overflow(runtime, retry,
             adaptive ? "the cluster is at its adaptive concurrency limit"
                      : "the cluster is at max_requests");
    return;
  }
  algorithms::PickInput input = PickInputFor(runtime, &state_.tried);
  constexpr size_t kNone = SIZE_MAX;
  size_t pick = runtime.picker->Pick(input).value_or(kNone);
  if (pick != kNone && runtime.slow_count > 0 && runtime.slow[pick])
    pick = PassOverSlow(runtime, input, pick);
  if (pick != kNone && retry && again->other_backend &&
      state_.tried.Contains(pick))
    pick = kNone;
  if (pick == kNone && retry && runtime.has_fallback) {
    // Every eligible backend failed this request (typically: refused, before
    // health/ has counted to `fall`): a healthy backup in reserve is better
    // than an error.
    pick = runtime.fallback->Pick(input).value_or(kNone);
    if (pick != kNone && state_.tried.Contains(pick)) pick = kNone;
  }
  if (pick != kNone && runtime.has_limits &&
      !attempt_->Acquire(runtime.backends[pick])) {
    // Full: look for another backend below its limit, treating the full ones
    // as tried for this pick only.
    algorithms::TriedSet skip = state_.tried;
    size_t full = pick;
    pick = kNone;
    for (size_t n = 0; n < runtime.backends.size(); ++n) {
      skip.Insert(full);
      input.tried = &skip;
      size_t candidate = runtime.picker->Pick(input).value_or(kNone);
      if (candidate == kNone || skip.Contains(candidate)) break;
      if (attempt_->Acquire(runtime.backends[candidate])) {
        pick = candidate;
        break;
      }
      full = candidate;
    }
    if (pick == kNone) {
      state_.flags |= kFlagOverflow;
      Overflow(runtime, retry, "every backend is at its request limit");
      return;
    }
  }
  // A cold backup is starting for want of backends, or every eligible backend
  // failed a retryable request and a cold backup stands by: wait (within
  // request_timeout) for health/ to bring it in rather than failing requests
  // it will serve. (A retry got here only if DecideRetry allowed it.)
  const bool standby_may_come =
      runtime.activating || (retry && runtime.cold_standby);
  if (pick == kNone && standby_may_come) {
    if (state_.from_queue) {
      RequeueAtFront(runtime);
      return;
    }
    if (runtime.queue.size() <
        std::max<size_t>(runtime.config->queue_size, 1024)) {
      if (retry) {
        // Resumed as the retry it is (RetryFromQueue): the backends it
        // already failed on stay excluded, and this answer stands if none
        // comes.
        state_.pending_status = again->status;
        if (again->detail != state_.detail.c_str())
          state_.detail = again->detail;
      }
      state_.waiting_activation = true;
      EnterQueue(runtime, state_.request_start +
                              runtime.config->request_timeout -
                              net::TurnClock::Now());
      return;
    }
  }
  if (pick == kNone) {
    if (retry) {
      state_.retry_note = "no other backend";
      Respond(again->status, again->detail, !state_.request_complete);
      return;
    }
    state_.flags |= kFlagNoBackend;
    runtime.stats->no_backend.Add();
    Respond(503, "no eligible backend", !state_.request_complete);
    return;
  }
  StartAttempt(pick);
}

void Exchange::StartAttempt(size_t pick) {
  ClusterRuntime& runtime = cluster();
  state_.last_backend = runtime.backends[pick].config;
  state_.last_backend_index = pick;
  if (++state_.tries > 1) {
    state_.flags |= kFlagRetried;
    runtime.stats->retries[static_cast<size_t>(state_.last_failure)].Add();
    CountRetry(runtime);
  }
  phase_ = Phase::kConnecting;
  switch (attempt_->Begin(pick)) {
    case Attempt::Start::kSending:
      SendRequest();
      return;
    case Attempt::Start::kConnecting:
      ArmTimer(attempt_->start() + runtime.config->connect_timeout -
               net::TurnClock::Now());
      return;
    case Attempt::Start::kFailed:
      FailAttempt(*attempt_, FailureKind::kConnect, 502,
                  "cannot open a connection to the backend");
      return;
  }
}

void Exchange::OnConnected(Attempt& attempt) {
  if (&attempt != attempt_) {
    // A hedge: the request is whole, it goes out as it is.
    if (!attempt.SendHead())
      FailAttempt(attempt, FailureKind::kConnect, 502,
                  "cannot use the backend connection");
    return;
  }
  if (phase_ != Phase::kConnecting) return;
  SendRequest();
}

void Exchange::SendRequest() {
  phase_ = Phase::kProxying;
  if (!attempt_->SendHead()) {
    FailAttempt(*attempt_, FailureKind::kConnect, 502,
                "cannot use the backend connection");
    return;
  }
  if (state_.request_complete) {
    ArmHeadTimer(net::TurnClock::Now());
  } else {
    ArmIdleTimer();
  }
  downstream_.ContinueRequest();
}

void Exchange::OnUpstreamDrained() {
  if (phase_ == Phase::kProxying) downstream_.RequestDrained();
}

// ---- hedging ---------------------------------------------------------------

std::optional<Clock::time_point> Exchange::HedgeDue() const {
  const ClusterRuntime& runtime = cluster();
  if (!runtime.config->hedge || state_.hedged || phase_ != Phase::kProxying ||
      !state_.request_complete || state_.response_started || state_.upgrade ||
      !attempt_->on() || attempt_->connecting() || Other(*attempt_).on()) {
    return std::nullopt;
  }
  const std::optional<std::chrono::microseconds> p95 = runtime.head_times.p95();
  if (!p95) return std::nullopt;
  // A hedge is a retry before the fact: only where a failed try would be
  // retried (idempotent, a replayable body, tries and retry budget left,
  // another backend).
  if (!RetryAllowedNow(FailureKind::kTimeout)) return std::nullopt;
  return TryDeadline(*attempt_, *p95);
}

void Exchange::StartHedge() {
  state_.hedged = true;
  ClusterRuntime& runtime = cluster();
  Attempt& hedge = Other(*attempt_);
  algorithms::TriedSet skip = state_.tried;
  skip.Insert(attempt_->backend());
  const std::optional<size_t> pick =
      runtime.picker->Pick(PickInputFor(runtime, &skip));
  if (!pick || skip.Contains(*pick)) return;
  if (!hedge.AcquireRequest(runtime)) return;
  if (runtime.has_limits && !hedge.Acquire(runtime.backends[*pick])) {
    hedge.ReleaseRequest(false);
    return;
  }
  state_.flags |= kFlagHedged;
  ++state_.tries;
  CountRetry(runtime);
  switch (hedge.Begin(*pick)) {
    case Attempt::Start::kSending:
      if (!hedge.SendHead())
        FailAttempt(hedge, FailureKind::kConnect, 502,
                    "cannot use the backend connection");
      return;
    case Attempt::Start::kConnecting:
      return;  // ArmHeadTimer() covers its connect deadline
    case Attempt::Start::kFailed:
      FailAttempt(hedge, FailureKind::kConnect, 502,
                  "cannot open a connection to the backend");
      return;
  }
}

void Exchange::ArmHeadTimer(Clock::time_point now) {
  const conf::Cluster& config = *cluster().config;
  const Clock::duration try_timeout = TryTimeout();
  Clock::time_point next = RequestDeadline();
  for (const Attempt* attempt : {&first_, &second_}) {
    if (!attempt->on()) continue;
    next = std::min(next, attempt->connecting()
                              ? attempt->start() + config.connect_timeout
                              : TryDeadline(*attempt, try_timeout));
  }
  if (const auto due = HedgeDue()) next = std::min(next, *due);
  ArmTimer(next - now);
}

// ---- the queue and the retry budget ----------------------------------------

void Exchange::Dequeue() {
  if (phase_ == Phase::kRetryWait) {
    auto& waiters = cluster().retry_waiters;
    auto it = std::find(waiters.begin(), waiters.end(), this);
    if (it != waiters.end()) waiters.erase(it);
  }
  if (!state_.queued) return;
  ClusterRuntime& runtime = cluster();
  auto it = std::find(runtime.queue.begin(), runtime.queue.end(), this);
  if (it != runtime.queue.end()) runtime.queue.erase(it);
  LeftQueue(runtime, state_.queued_since);
}

void Exchange::LeftQueue(ClusterRuntime& runtime, Clock::time_point since) {
  state_.queued = false;
  ReleasePending(runtime);
  runtime.stats->queued.Add(-1);
  runtime.stats->queue_wait.Observe(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(
          net::TurnClock::Now() - since)
          .count()));
}

void Exchange::ReleasePending(ClusterRuntime& runtime) {
  if (!state_.counted_pending) return;
  state_.counted_pending = false;
  runtime.breakers->pending.fetch_sub(1, std::memory_order_relaxed);
}

bool Exchange::RetryFromQueue() {
  // Leaves the queue for this try; Route() puts it back at the head when
  // every backend is still full (its timer, armed when it joined, stands).
  ClusterRuntime& runtime = cluster();
  const Clock::time_point since = state_.queued_since;
  runtime.queue.erase(
      std::find(runtime.queue.begin(), runtime.queue.end(), this));
  state_.queued = false;
  ReleasePending(runtime);
  state_.from_queue = true;
  phase_ = Phase::kConnecting;
  if (state_.tries > 0) {
    const Retry again{state_.pending_status, state_.detail.c_str()};
    Route(&again);
  } else {
    Route();
  }
  // Still from_queue only when put back: the exchange may have ended, and
  // the connection's next one begun, inside Route().
  if (state_.queued && state_.from_queue) {
    state_.from_queue = false;
    return false;
  }
  state_.from_queue = false;
  LeftQueue(runtime, since);
  return true;
}

void Exchange::ResumeRetry() {
  event_del(&timer_);
  phase_ = Phase::kConnecting;
  const Retry again{state_.pending_status, state_.detail.c_str()};
  Route(&again);
}

void Exchange::RespondBusy(const char* detail) {
  cluster().stats->no_backend.Add();
  Respond(503, detail, false, "Retry-After: 1\r\n");
}

// ---- deadlines and the retry decision --------------------------------------

Clock::duration Exchange::TryTimeout() const {
  const ClusterRuntime& runtime = cluster();
  const conf::Cluster& config = *runtime.config;
  if (!config.try_timeout_auto) return config.try_timeout;
  // "auto": 3 x the cluster's recent p99 on this loop, at least a second.
  const std::optional<std::chrono::microseconds> p99 = runtime.head_times.p99();
  if (!p99) return config.request_timeout;
  return std::clamp<Clock::duration>(kAutoTryFactor * *p99, kAutoTryFloor,
                                     config.request_timeout);
}

Clock::time_point Exchange::TryDeadline(const Attempt& attempt,
                                        Clock::duration try_timeout) const {
  // From when both the try began and the whole request was out.
  return std::max(attempt.start(), state_.request_done) + try_timeout;
}

Clock::time_point Exchange::RequestDeadline() const {
  const Clock::time_point deadline =
      std::max(state_.request_done, state_.request_start) +
      cluster().config->request_timeout;
  // A gRPC client's own deadline, when it is sooner (docs/http2.md).
  return state_.grpc_deadline != Clock::time_point{}
             ? std::min(deadline, state_.grpc_deadline)
             : deadline;
}

bool Exchange::RetryAllowedNow(FailureKind failure) const {
  const bool reached = Traits(failure).reached_worker;
  return DecideRetry(
             RetryFacts(failure, state_.reached_failures + (reached ? 1 : 0)))
             .action == RetryAction::kRetry;
}

bool Exchange::WouldRetryStatus(const Attempt& attempt) const {
  // A hedge still racing may do better.
  if (Other(attempt).on()) return true;
  // This answer is a failed try that reached a worker: count it.
  return DecideRetry(
             RetryFacts(FailureKind::kStatus, state_.reached_failures + 1))
             .action != RetryAction::kGiveUp;
}

RetryInput Exchange::RetryFacts(FailureKind failure,
                                uint32_t reached_failures) const {
  const ClusterRuntime& runtime = cluster();
  const net::HttpParser& request = downstream_.request();
  RetryInput input;
  input.failure = failure;
  input.response_started = state_.response_started;
  input.deadline_passed = net::TurnClock::Now() >= RequestDeadline();
  input.idempotent = net::IsIdempotent(request);
  input.reached_failures = reached_failures;
  input.retries = runtime.config->retries;
  input.has_body = request.body_bytes() > 0;
  input.body_replayable = state_.body_kept;
  // Another eligible backend this request has not tried yet? (The set may
  // have changed since the last try: compare backend by backend.)
  input.other_backend = runtime.has_fallback || runtime.cold_standby;
  for (size_t b = 0; b < runtime.backends.size() && !input.other_backend; ++b) {
    input.other_backend = runtime.backends[b].eligible &&
                          !state_.tried.Contains(b) &&
                          !(first_.on() && b == first_.backend()) &&
                          !(second_.on() && b == second_.backend());
  }
  input.budget_left = state_.counted_retry || runtime.RetryBudgetLeft();
  return input;
}

bool Exchange::RetryOffHungBackend(Attempt& attempt) {
  if (phase_ != Phase::kProxying || !attempt.AwaitingSince() ||
      (!Other(attempt).on() && !RetryAllowedNow(FailureKind::kHung))) {
    return false;
  }
  FailAttempt(attempt, FailureKind::kHung, 504, "backend suspected hung");
  return true;
}

void Exchange::FailAttempt(Attempt& attempt, FailureKind failure, int status,
                           const char* detail) {
  const FailureTraits& traits = Traits(failure);
  state_.flags |= traits.flag;
  ClusterRuntime& runtime = cluster();
  if (attempt.on()) {
    const BackendRuntime& backend = runtime.backends[attempt.backend()];
    if (!state_.trail.empty()) state_.trail.push_back(',');
    state_.trail.append(backend.config->address.text);
    state_.trail.push_back(':');
    state_.trail.append(traits.trail_code);
    BackendStats* stats = backend.stats;
    if (failure == FailureKind::kConnect || failure == FailureKind::kRefused) {
      stats->connect_failures.Add();
    } else if (failure == FailureKind::kReset ||
               failure == FailureKind::kPoolRace) {
      stats->upstream_resets.Add();
    } else if (failure == FailureKind::kTimeout) {
      stats->upstream_timeouts.Add();
      if (std::optional<Clock::time_point> since = attempt.AwaitingSince()) {
        state_.unanswered_backend = attempt.backend();
        state_.unanswered_for = net::TurnClock::Now() - *since;
      }
    }
    // A pooled connection closing under us says nothing about the backend:
    // it is not reported, and the first time not marked tried either, so
    // the retry goes to the same backend on a fresh connection and a keyed
    // request keeps its home. A second race in one exchange does mark it,
    // so a backend that keeps doing this cannot hold the request in a loop.
    if (failure != FailureKind::kPoolRace)
      attempt.ReportOutcome(false, failure);
    if (failure != FailureKind::kPoolRace || state_.pool_race_seen)
      state_.tried.Insert(attempt.backend());
  }
  if (failure == FailureKind::kPoolRace) state_.pool_race_seen = true;
  state_.last_failure = failure;
  if (traits.reached_worker) ++state_.reached_failures;
  Attempt& other = Other(attempt);
  if (other.on()) {
    // A hedge race: the other try is still out and carries the request on.
    attempt.End(false);
    if (&attempt == attempt_) {
      attempt_ = &other;
      if (other.connecting()) phase_ = Phase::kConnecting;
    }
    runtime.stats->hedges[kHedgeFailed].Add();
    ArmHeadTimer(net::TurnClock::Now());
    return;
  }
  RetryDecision decision =
      DecideRetry(RetryFacts(failure, state_.reached_failures));
  if (decision.action == RetryAction::kWaitForBudget) {
    // Too many retries in flight: wait for one to finish, within
    // request_timeout, so a burst of timeouts on one frozen worker is not
    // turned into errors while the cluster is not hammered either.
    if (runtime.RetryBreakerFull()) {
      state_.flags |= kFlagCircuitBreaker;
      runtime.stats->breaker_overflows[kBreakerRetries].Add();
    }
    attempt.End(false);
    auto deadline = RequestDeadline();
    if (net::TurnClock::Now() < deadline) {
      state_.pending_status = status;
      if (detail != state_.detail.c_str()) state_.detail = detail;
      phase_ = Phase::kRetryWait;
      runtime.retry_waiters.push_back(this);
      loop_.WatchQueue();
      ArmTimer(deadline - net::TurnClock::Now());
      return;
    }
    decision = {RetryAction::kGiveUp, "retry budget spent"};
  }
  const bool same_backend_ok = failure == FailureKind::kPoolRace;
  if (failure == FailureKind::kPoolRace && attempt.upstream() != nullptr) {
    // The backend closed an idle connection under us; its other idle ones
    // (a restart, a crash) are likely gone too: don't try them one by one.
    attempt.upstream()->pool().CloseIdle(Clock::duration::zero());
  }
  attempt.End(false);
  attempt_ = &attempt;
  if (decision.action == RetryAction::kRetry) {
    phase_ = Phase::kConnecting;
    const Retry again{status, detail, !same_backend_ok};
    Route(&again);
    return;
  }
  state_.retry_note = decision.reason;
  Respond(status, detail, !state_.request_complete);
}

// ---- the response ----------------------------------------------------------

void Exchange::OnResponseHead(Attempt& attempt,
                              const net::HttpParser& response) {
  Attempt& other = Other(attempt);
  if (other.on()) {
    // The first head ends a hedge race; the other try is cancelled, and
    // neither health nor the access log's failed tries hear of it.
    other.End(false);
    cluster()
        .stats->hedges[&attempt == attempt_ ? kHedgeLost : kHedgeWon]
        .Add();
  }
  if (&attempt != attempt_) {
    attempt_ = &attempt;
    state_.last_backend = cluster().backends[attempt.backend()].config;
    state_.last_backend_index = attempt.backend();
  }
  state_.status = response.status_code();
  downstream_.SendResponseHead(response);
  state_.response_started = true;
  // From here on only silence ends the exchange.
  Touch();
  ArmIdleTimer();
}

void Exchange::OnResponseBody(const char* data, size_t length) {
  state_.response_body_bytes += length;
  downstream_.SendResponseBody(data, length);
}

void Exchange::OnResponseEnd(const net::HeaderList& trailers) {
  downstream_.SendResponseEnd(trailers);
  state_.response_complete = true;
}

void Exchange::OnResponseComplete() {
  if (!state_.request_complete) {
    // The backend answered before the request ended (an early 413, say): the
    // backend connection can't be reused and the client's is closed.
    EndTries();
    Log();
    downstream_.ExchangeEnded(Downstream::End::kClose);
    return;
  }
  Finish();
}

void Exchange::EnterTunnel() {
  phase_ = Phase::kTunnel;
  Touch();
  ArmTimer(cluster().config->idle_timeout);
  downstream_.StartTunnel();
}

void Exchange::Respond(int status, const char* detail, bool close,
                       std::string_view extra_fields) {
  if (state_.response_started) {
    Abort(0);
    return;
  }
  EndTries();
  if (!state_.request_complete) close = true;
  const Downstream::LocalReply reply =
      downstream_.SendLocalResponse(status, detail, close, extra_fields);
  state_.status = status;
  state_.response_body_bytes = reply.body_bytes;
  state_.response_started = true;
  state_.response_complete = true;
  if (reply.close) {
    Log();
    downstream_.ExchangeEnded(Downstream::End::kClose);
    return;
  }
  Finish();
}

void Exchange::Finish() {
  attempt_->End(attempt_->Reusable() && state_.response_complete &&
                state_.request_complete && !state_.stopped_at_upgrade);
  Log();
  downstream_.ExchangeEnded(Downstream::End::kNext);
}

// ---- timers ----------------------------------------------------------------

std::optional<Clock::time_point> Exchange::IdleDeadline() const {
  if (downstream_.grpc()) {
    // A streaming call may be quiet for long (docs/http2.md): only its own
    // deadline, when it set one, ends it.
    if (state_.grpc_deadline == Clock::time_point{}) return std::nullopt;
    return state_.grpc_deadline;
  }
  return last_activity_ + cluster().config->idle_timeout;
}

void Exchange::ArmIdleTimer() {
  const std::optional<Clock::time_point> deadline = IdleDeadline();
  if (!deadline) {
    event_del(&timer_);
    return;
  }
  // A timer due sooner (the try's deadline, when the response head comes)
  // stays: OnTimer then finds the idle deadline not reached and arms it.
  // One timer update less per response.
  if (evtimer_pending(&timer_, nullptr) && timer_due_ <= *deadline) return;
  ArmTimer(*deadline - net::TurnClock::Now());
}

void Exchange::ArmTimer(Clock::duration delay) {
  delay = std::max(delay, Clock::duration::zero());
  timer_due_ = net::TurnClock::Now() + delay;
  timeval tv = net::ToTimeval(delay);
  event_add(&timer_, &tv);
}

void Exchange::TimerCb(evutil_socket_t, short, void* arg) {
  static_cast<Exchange*>(arg)->OnTimer();
}

void Exchange::OnTimer() {
  Clock::time_point now = net::TurnClock::Now();
  const conf::Cluster& config = *cluster().config;
  switch (phase_) {
    case Phase::kIdle:
    case Phase::kDone:
      return;
    case Phase::kRetryWait:
      Dequeue();
      state_.retry_note = "retry budget spent until request_timeout";
      Respond(state_.pending_status, state_.detail.c_str(),
              !state_.request_complete);
      return;
    case Phase::kQueued:
      Dequeue();
      cluster().stats->queue_timeouts.Add();
      if (state_.waiting_activation) {
        state_.flags |= kFlagNoBackend;
        Respond(503,
                "no eligible backend (a cold backup did not come up in time)",
                !state_.request_complete);
      } else {
        RespondBusy("no backend slot freed up within queue_timeout");
      }
      return;
    case Phase::kConnecting:
      state_.flags |= kFlagUpstreamTimeout;
      FailAttempt(*attempt_, FailureKind::kConnect, 502,
                  "connection to backend timed out");
      return;
    case Phase::kProxying: {
      if (!state_.request_complete || state_.response_started) {
        const std::optional<Clock::time_point> idle_end = IdleDeadline();
        if (!idle_end) return;  // a gRPC call without a deadline
        if (now < *idle_end) {
          ArmTimer(*idle_end - now);
          return;
        }
        if (!state_.response_started) {
          state_.flags |= kFlagClientTimeout;
          Respond(408, "request body not received in time", true);
        } else {
          Abort(kFlagUpstreamTimeout);
        }
        return;
      }
      if (now >= RequestDeadline()) {
        // The whole budget is spent: DecideRetry allows no retry.
        Attempt& hedge = Other(*attempt_);
        if (hedge.on()) hedge.End(false);
        FailAttempt(*attempt_, FailureKind::kTimeout, 504,
                    "backend did not answer within request_timeout");
        return;
      }
      // A hedge racing the first try has deadlines of its own.
      Attempt& hedge = Other(*attempt_);
      if (hedge.on() && hedge.connecting() &&
          now >= hedge.start() + config.connect_timeout) {
        state_.flags |= kFlagUpstreamTimeout;
        FailAttempt(hedge, FailureKind::kConnect, 502,
                    "connection to backend timed out");
        return;
      }
      const Clock::duration try_timeout = TryTimeout();
      if (hedge.on() && now >= TryDeadline(hedge, try_timeout)) {
        FailAttempt(hedge, FailureKind::kTimeout, 504,
                    "backend did not answer within try_timeout");
        return;
      }
      if (now >= TryDeadline(*attempt_, try_timeout)) {
        // "auto" cuts only a try that may be retried (or is raced): a cut
        // could only turn the others into errors, so they wait for
        // request_timeout.
        if (config.try_timeout_auto && !hedge.on() &&
            !RetryAllowedNow(FailureKind::kTimeout)) {
          ArmTimer(RequestDeadline() - now);
          return;
        }
        FailAttempt(*attempt_, FailureKind::kTimeout, 504,
                    "backend did not answer within try_timeout");
        return;
      }
      if (const auto due = HedgeDue(); due && now >= *due) StartHedge();
      ArmHeadTimer(now);
      return;
    }
    case Phase::kTunnel: {
      auto idle_for = now - last_activity_;
      if (idle_for < config.idle_timeout) {
        ArmTimer(config.idle_timeout - idle_for);
        return;
      }
      EndTunnel(Downstream::End::kDestroy);
      return;
    }
  }
}

// ---- accounting ------------------------------------------------------------

void Exchange::CountRetry(ClusterRuntime& runtime) {
  if (state_.counted_retry) return;
  state_.counted_retry = true;
  ++runtime.active_retries;
  if (runtime.breakers && runtime.config->max_retries_in_flight > 0) {
    // Checked by RetryBudgetLeft() before: another thread may pass the limit
    // by one at the same instant.
    runtime.breakers->retries.fetch_add(1, std::memory_order_relaxed);
    state_.counted_shared_retry = true;
  }
}

void Exchange::ReleaseClusterCounts() {
  if (!state_.counted_request && !state_.counted_retry &&
      !state_.counted_pending) {
    return;
  }
  ClusterRuntime& runtime = cluster();
  if (state_.counted_request) --runtime.active_requests;
  if (state_.counted_retry) --runtime.active_retries;
  if (state_.counted_shared_retry)
    runtime.breakers->retries.fetch_sub(1, std::memory_order_relaxed);
  ReleasePending(runtime);
  state_.counted_request = state_.counted_retry = false;
  state_.counted_shared_retry = false;
}

std::string_view Exchange::FlagsText() {
  flags_text_.clear();
  for (size_t bit = 0; bit < kExchangeFlagNames.size(); ++bit) {
    if ((state_.flags & (1u << bit)) == 0) continue;
    if (!flags_text_.empty()) flags_text_.push_back(',');
    flags_text_.append(kExchangeFlagNames[bit]);
  }
  return flags_text_;
}

void Exchange::Log() {
  ReleaseClusterCounts();
  event_del(&timer_);
  if (state_.logged) return;
  state_.logged = true;
  phase_ = Phase::kDone;
  auto now = net::TurnClock::Now();
  if (state_.request_start.time_since_epoch().count() == 0)
    state_.request_start = now;
  uint64_t micros = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(
          now - state_.request_start)
          .count());
  ListenerRuntime& listener = downstream_.listener();
  ClusterRuntime& runtime = *listener.cluster;
  listener.stats->requests[StatusClass(state_.status)].Add();
  listener.stats->bytes_sent.Add(state_.response_body_bytes);
  runtime.stats->request_duration.Observe(micros);
  if (state_.last_backend != nullptr) {
    BackendStats& backend = *runtime.backends[state_.last_backend_index].stats;
    backend.responses[StatusClass(state_.status)].Add();
    backend.request_duration.Observe(micros);
  }
  AccessLog& log = loop_.access_log();
  if (!log.enabled()) return;
  const net::HttpParser& request = downstream_.request();
  AccessLogEntry entry;
  entry.client = downstream_.client_address();
  entry.method =
      request.in_head() ? std::string_view("-") : request.method_name();
  entry.target = request.in_head() ? std::string_view("-") : request.target();
  entry.protocol = downstream_.protocol();
  entry.status = state_.status;
  entry.bytes_sent = state_.response_body_bytes;
  entry.bytes_received = request.body_bytes();
  entry.duration_micros = micros;
  entry.listener = listener.config->name;
  entry.cluster = runtime.config->name;
  entry.backend = state_.last_backend != nullptr
                      ? std::string_view(state_.last_backend->address.text)
                      : std::string_view();
  entry.tries = state_.tries;
  entry.flags = FlagsText();
  entry.note = state_.retry_note;
  entry.trail = state_.trail;
  entry.proxy = downstream_.proxy_tlvs();
  log.Write(entry);
}

}  // namespace tandem::dispatcher
