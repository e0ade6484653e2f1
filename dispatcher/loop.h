// One event-loop thread: its own event_base, SO_REUSEPORT listeners, client
// connections, backend pools and pickers. Other threads talk to it only by
// posting a message (queue + wake-up, as memcached's notify_worker()); the
// request path takes no lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "algorithms/p2c_ewma.h"
#include "algorithms/picker.h"
#include "algorithms/rng.h"
#include "algorithms/slow_backends.h"
#include "conf/config.h"
#include "dispatcher/proxy/access_log.h"
#include "dispatcher/proxy/adaptive_limiter.h"
#include "dispatcher/proxy/latency_window.h"
#include "dispatcher/proxy/rate_limiter.h"
#include "dispatcher/proxy/stats.h"
#include "dispatcher/proxy/upstream.h"
#include "health/snapshot.h"
#include "net/event_ptr.h"
#include "net/http_parser.h"
#include "net/message_queue.h"
#include "net/tls_client.h"
#include "net/tls_server.h"

namespace tandem::health {
class HealthMonitor;
}

namespace tandem::dispatcher {

class Attempt;
class Exchange;
class FrontConnection;
class ParkedConnection;
class Loop;

// Counters one backend shares across threads, for its max_inflight and
// max_connections limits only (a backend without limits never touches them).
struct SharedLimits {
  std::atomic<uint32_t> inflight{0};
  std::atomic<uint32_t> connections{0};
  // A cluster's circuit breakers (its entry has an empty address).
  std::atomic<uint32_t> requests{0};
  std::atomic<uint32_t> pending{0};
  std::atomic<uint32_t> retries{0};
  // A rate limit's buckets (its entry is keyed "rate:cluster" or
  // "rate:listener" and the name); set before the entry is shared.
  std::shared_ptr<RateLimiter> rate_limiter;
  // A cluster's adaptive concurrency limiter (its own entry); set before
  // the entry is shared.
  std::shared_ptr<AdaptiveLimiter> adaptive;
};

// A listener's or cluster's rate limit on one loop (docs/retries.md).
struct RateLimitRuntime {
  std::shared_ptr<SharedLimits> shared;  // holds the RateLimiter
  std::unique_ptr<RateLease> lease;      // null: no limit
  RateLimitStats* stats = nullptr;
};

// Takes one unit of `counter` below `limit`, atomically across threads.
inline bool TakeShared(std::atomic<uint32_t>& counter, uint32_t limit) {
  uint32_t current = counter.load(std::memory_order_relaxed);
  do {
    if (current >= limit) return false;
  } while (!counter.compare_exchange_weak(current, current + 1,
                                          std::memory_order_relaxed));
  return true;
}

// Outcomes seen on one backend since the last report to health/.
struct OutcomeCounts {
  uint32_t successes = 0;
  uint32_t failures = 0;
  health::TrafficFailure kind = health::TrafficFailure::kConnect;
  bool refused = false;
};

struct BackendRuntime {
  const conf::Backend* config = nullptr;
  BackendPool* pool = nullptr;
  BackendStats* stats = nullptr;
  std::shared_ptr<SharedLimits> limits;  // null when the backend has no limit
  bool eligible = false;  // the last health snapshot lets it take requests
  // Requests sent to it that await their response head, oldest first
  // (intrusive, through Attempt): hang detection's view.
  Attempt* awaiting_first = nullptr;
  Attempt* awaiting_last = nullptr;
  // This loop suspects it hung until then: no new requests (zero: not
  // suspected). docs/retries.md, "Hang detection".
  std::chrono::steady_clock::time_point suspected_until{};
  // When the newest request it answered was sent: peers that answer
  // requests younger than a backend's oldest waiting one are what make that
  // one suspect (a whole cluster slowing down suspects nobody).
  std::chrono::steady_clock::time_point answered_sent_at{};
  // p2c-ewma: this thread's recent response times from it.
  algorithms::PeakEwma latency;
  // Slow-backend avoidance: passed over since (zero: it is not), and when a
  // request last went to it while passed over (a probe).
  std::chrono::steady_clock::time_point slow_since{};
  std::chrono::steady_clock::time_point slow_probe_at{};
};

// TLS contexts of one config, built once by the server and shared by every
// loop (SSL_CTX is thread-safe for making SSL objects).
struct TlsContexts {
  std::map<std::string, std::shared_ptr<net::TlsServerContext>>
      listeners;  // by name
  std::map<std::string, std::shared_ptr<net::TlsClientContext>> clusters;
};

struct ClusterRuntime {
  size_t index = 0;  // in the config
  const conf::Cluster* config = nullptr;
  std::unique_ptr<algorithms::Picker> picker;
  // Healthy backups the policy keeps in reserve: a request whose every
  // eligible backend refused the connection goes here rather than failing
  // while health/ is still counting to `fall`.
  std::unique_ptr<algorithms::Picker> fallback;
  bool has_fallback = false;
  std::vector<BackendRuntime> backends;
  std::vector<uint32_t> inflight;  // this thread's requests per backend
  // p2c-ewma: each backend's PeakEwma value in µs, as pickers read it.
  std::vector<uint32_t> latency_us;
  // Slow-backend avoidance (off: avoid_slow false): each backend's recent
  // times to response head on this thread, which of them the picks pass
  // over, and how many.
  bool avoid_slow = false;
  std::vector<algorithms::SlowView> slow_views;
  std::vector<uint8_t> slow;
  std::vector<uint8_t> slow_next;  // the tick's scratch
  size_t slow_count = 0;
  std::vector<OutcomeCounts> outcomes;
  bool outcomes_pending = false;
  // This thread's recent times from request sent to response head.
  LatencyWindow head_times;
  uint32_t active_requests = 0;  // this thread's exchanges in progress
  uint32_t active_retries = 0;   // of which retries
  // Envoy's retry budget: retries may be retry_budget of the requests in
  // flight, but never fewer than 3 at once.
  bool RetryBudgetLeft() const {
    double budget = std::max(3.0, config->retry_budget * active_requests);
    return active_retries + 1 <= budget && !RetryBreakerFull();
  }
  // max_retries_in_flight is reached across threads.
  bool RetryBreakerFull() const {
    return breakers && config->max_retries_in_flight > 0 &&
           breakers->retries.load(std::memory_order_relaxed) >=
               config->max_retries_in_flight;
  }
  // The cluster's circuit breakers, shared by every loop (null: none).
  std::shared_ptr<SharedLimits> breakers;
  // concurrency = "adaptive": the limiter (in breakers), and this loop's
  // samples not yet handed to it.
  AdaptiveLimiter* adaptive = nullptr;
  std::vector<uint32_t> adaptive_samples;
  std::chrono::steady_clock::time_point adaptive_window{};
  // The limit on tries in flight across threads now (0: none).
  uint32_t RequestLimit() const {
    uint32_t limit = config->max_requests;
    if (adaptive != nullptr) {
      const uint32_t now = adaptive->limit();
      if (limit == 0 || now < limit) limit = now;
    }
    return limit;
  }
  RateLimitRuntime rate;
  bool has_limits = false;    // some backend has max_inflight/max_connections
  bool activating = false;    // a cold backup is being started
  bool cold_standby = false;  // a cold backup could still be started
  // Requests waiting for a backend below its limit, oldest first.
  std::deque<Exchange*> queue;
  // Requests whose retry waits for the retry budget, oldest first.
  std::deque<Exchange*> retry_waiters;
  ClusterStats* stats = nullptr;
};

struct ListenerRuntime {
  const conf::Listener* config = nullptr;
  std::shared_ptr<net::TlsServerContext> tls;  // null: plain HTTP
  ClusterRuntime* cluster = nullptr;
  ListenerStats* stats = nullptr;
  RateLimitRuntime rate;
};

// One configuration as one loop uses it. Connections accepted under it keep
// it alive (a plain count: only this loop's thread touches it) until they
// close, so a reload never changes the rules under a request in flight.
class Generation {
 public:
  Generation(Loop& loop, std::shared_ptr<const conf::Config> config,
             const TlsContexts& tls);
  const conf::Config& config() const { return *config_; }
  // Feeds a health snapshot to the pickers (backends matched by cluster name
  // and address, so a snapshot of another config applies too). Backends the
  // snapshot does not know take traffic only when their cluster has no
  // active checks.
  void ApplyHealth(const health::HealthSnapshot* snapshot);
  bool Holds(const ClusterRuntime& runtime) const {
    return !clusters_.empty() && &runtime >= clusters_.data() &&
           &runtime < clusters_.data() + clusters_.size();
  }
  ListenerRuntime& listener(size_t index) { return listeners_[index]; }
  ClusterRuntime& cluster(size_t index) { return clusters_[index]; }
  size_t cluster_count() const { return clusters_.size(); }

 private:
  friend class Loop;
  std::shared_ptr<const conf::Config> config_;
  std::vector<ClusterRuntime> clusters_;
  std::vector<ListenerRuntime> listeners_;
  int connections_ = 0;
};

// A bound listening socket handed to a loop: one per listener per loop.
struct ListenSocket {
  std::string listener_name;
  evutil_socket_t fd = -1;
};

class Loop {
 public:
  // A null `access_log`: no access log. Nothing starts until Run().
  Loop(size_t index, std::shared_ptr<const AccessLogFile> access_log,
       conf::AccessLogFormat access_log_format);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Creates the event base and the message queue. Call before Run(), on any
  // thread. Returns false and sets `error` on failure.
  bool Init(std::string* error);

  // The thread body: runs until Stop() or the end of a shutdown.
  void Run();

  // Thread-safe: runs `fn` on this loop's thread, after what was posted
  // before it. Dropped before Init() and once the loop is destroyed.
  void Post(std::function<void(Loop&)> fn) { messages_.Post(std::move(fn)); }

  // Loop thread: serve `config` from now on, accepting on `sockets` (owned
  // from now on; listeners of the previous generation not among them close).
  void ApplyConfig(std::shared_ptr<const conf::Config> config,
                   std::vector<ListenSocket> sockets,
                   std::shared_ptr<const TlsContexts> tls);

  // Loop thread: access log lines go to `file` (null: off) from now on.
  void SetAccessLog(std::shared_ptr<const AccessLogFile> file,
                    conf::AccessLogFormat format) {
    access_log_->SetDestination(std::move(file), format);
  }

  // Loop thread: stop accepting, close idle connections, and leave Run()
  // once the last connection is gone or `grace` has passed.
  void BeginShutdown(std::chrono::milliseconds grace);

  // Thread-safe: the number of client connections open (approximate).
  int64_t open_connections() const { return open_connections_.Get(); }

  // For connections, on the loop thread.
  event_base* base() const { return base_.get(); }
  size_t index() const { return index_; }
  AccessLog& access_log() { return *access_log_; }
  // Client connections' writes, at the end of the turn: one write carries
  // all of a turn's answers on a connection.
  net::WriteBehind& write_behind() { return *write_behind_; }
  // Backend connections' writes (their pools' write-behind) go at the end of
  // the HTTP/2 client read that queued them, else of the turn.
  // docs/performance.md, "Backend writes".
  void FlushBackendWrites() { backend_write_behind_->Flush(); }
  LoopStats& stats() { return stats_; }
  algorithms::Rng& rng() { return rng_; }
  // A scratch buffer for building heads; valid until the next call.
  std::string& scratch() {
    // One huge head (a large trailer section, say) must not stay resident.
    if (scratch_.capacity() > kMaxScratchBytes) std::string().swap(scratch_);
    scratch_.clear();
    return scratch_;
  }
  bool shutting_down() const { return shutting_down_; }
  // The pool of `backend` as `cluster` reaches it (TLS pools are separate).
  BackendPool& PoolFor(const conf::Cluster& cluster,
                       const conf::Backend& backend, BackendStats* stats,
                       const std::shared_ptr<net::TlsClientContext>& tls);
  // Limits shared across threads for (cluster, address); set by the server
  // before a config is applied.
  std::shared_ptr<SharedLimits> LimitsFor(const std::string& cluster,
                                          const std::string& address) const;
  // A rate limit's shared buckets ("rate:cluster" or "rate:listener" and
  // the name) with this loop's lease of them.
  RateLimitRuntime RateLimitFor(const std::string& kind,
                                const std::string& name, size_t threads);

  // Wiring, before Run(): where outcomes go, and the shared limit counters.
  void set_health(health::HealthMonitor* monitor) { health_monitor_ = monitor; }
  void set_limits(
      std::shared_ptr<const std::map<std::pair<std::string, std::string>,
                                     std::shared_ptr<SharedLimits>>>
          limits) {
    limits_ = std::move(limits);
  }
  // Loop thread: a new health snapshot for every generation.
  void ApplyHealth(std::shared_ptr<const health::HealthSnapshot> snapshot);
  // Loop thread: one exchange's outcome on a backend, batched to health/ (at
  // once when something failed, else a few times a second).
  void ReportOutcome(ClusterRuntime& cluster, size_t backend, bool success,
                     health::TrafficFailure kind, bool refused);
  // Parsers are only needed while a connection reads a message: a free list
  // per type keeps idle connections light without allocating per request.
  // A parser taken is reset, its limits at their defaults.
  std::unique_ptr<net::HttpParser> TakeParser(
      net::HttpParser::Type type, net::HttpParser::Handler* handler);
  void ReturnParser(std::unique_ptr<net::HttpParser> parser);
  // Socket bufferevents for plain client connections, kept between a parked
  // connection and the next one resumed. Take sets `fd` (closed when the
  // bufferevent is freed); Return takes one whose fd was set to -1.
  net::BufferEventPtr TakeClientBufferEvent(evutil_socket_t fd);
  void ReturnClientBufferEvent(net::BufferEventPtr bev);
  // Loop thread: a request joined `cluster`'s queue; the loop polls queues
  // while any is non-empty (slots free up on other threads too).
  void WatchQueue();
  // Loop thread: a slot may have freed up: let queued requests try again.
  void DrainQueue(ClusterRuntime& cluster);
  // Loop thread: a request awaits a response head; the loop looks for hung
  // backends while any does (Loop::CheckHangs, dispatcher/hang_watch.cc).
  void WatchHangs() {
    if (!hang_watch_armed_) ArmHangWatch();
  }
  // Loop thread: a request waited `waited` on backend `suspect` of `runtime`
  // without a response head, then `answered_by` answered it in
  // `answered_in`. Past the hang threshold, and much faster elsewhere, that
  // makes `suspect` suspected hung (dispatcher/hang_watch.cc): with few
  // requests in flight nothing else would show it.
  void SuspectUnanswered(ClusterRuntime& runtime, size_t suspect,
                         std::chrono::steady_clock::duration waited,
                         size_t answered_by,
                         std::chrono::steady_clock::duration answered_in);
  // Tick: the memory gauges of LoopStats.
  void SampleMemory();
  // A connection of either kind came, or is gone: the counts, and what
  // they free.
  void Count(Generation* generation);
  void Forget(Generation* generation);
  void Attach(FrontConnection* connection, Generation* generation);
  void AttachParked(ParkedConnection* connection, Generation* generation);
  // The one lifetime rule for what a loop owns: a connection that ends
  // (often inside one of its own callbacks) leaves its list at once and is
  // deleted by the loop once this turn's callbacks are done, as Envoy's
  // deferredDelete; its destructor then calls Forget().
  void Retire(FrontConnection* connection);
  void Retire(ParkedConnection* connection);
  // Between requests: the generation and listener a kept-alive connection
  // should serve its next request under (the newest config, when it still
  // has the listener), moving the connection's count over.
  void Rebind(Generation** generation, ListenerRuntime** listener);
  // An HTTP/2 stream keeps the generation it began under until it ends,
  // while its connection may move on to a newer one.
  void Hold(Generation* generation) { ++generation->connections_; }
  void Release(Generation* generation);

 private:
  struct BoundListener {
    std::string listener_name;
    net::ListenerPtr listener;
    ListenerStats* stats = nullptr;
    bool paused = false;  // disabled by PauseAccepting()
  };

  static void AcceptCb(evconnlistener* listener, evutil_socket_t fd,
                       sockaddr* address, int length, void* arg);
  static void AcceptErrorCb(evconnlistener* listener, void* arg);
  static void TickCb(evutil_socket_t, short, void* arg);
  static void GraceCb(evutil_socket_t, short, void* arg);
  static void AcceptRetryCb(evutil_socket_t, short, void* arg);
  static void FlushOutcomesCb(evutil_socket_t, short, void* arg);
  static void QueuePollCb(evutil_socket_t, short, void* arg);
  static void HangWatchCb(evutil_socket_t, short, void* arg);
  static void DeleteRetiredCb(evutil_socket_t, short, void* arg);
  void DeleteRetired();
  template <typename T>
  void DeferDelete(T* object) {
    retired_objects_.emplace_back(object,
                                  [](void* p) { delete static_cast<T*>(p); });
    if (retired_objects_.size() == 1 && retire_event_)
      event_active(retire_event_.get(), EV_TIMEOUT, 0);
  }
  void ArmHangWatch();
  // Suspects the backends of `generation` whose oldest request awaiting a
  // response head is far older than their cluster's recent p99, and retries
  // what waits on suspected ones; true while there is anything to watch.
  bool CheckHangs(Generation& generation,
                  std::chrono::steady_clock::time_point now);
  // Retries elsewhere the requests awaiting `backend` that may go now.
  static void RetryAwaiting(BackendRuntime& backend);
  // Takes `backend` out of this loop's picks for a while and tells health/.
  void Suspect(ClusterRuntime& runtime, BackendRuntime& backend,
               std::chrono::steady_clock::time_point now,
               const std::string& reason);
  // Which backends of `runtime` the picks pass over as slow (logged when
  // that changes).
  void UpdateSlow(ClusterRuntime& runtime,
                  std::chrono::steady_clock::time_point now);
  void FlushOutcomes();
  void FlushOutcomes(Generation& generation);
  void OnAccept(evconnlistener* listener, evutil_socket_t fd, sockaddr* address,
                int length);
  void ReleaseGeneration(Generation* generation);
  // Out of descriptors or memory (`reason` indexes kAcceptPauseReasons):
  // stop accepting on every listener of this loop until the retry timer
  // fires or a connection closes, as nginx and HAProxy do; a level-triggered
  // listener left enabled would fail again at once.
  void PauseAccepting(size_t reason, int error);
  void ResumeAccepting();
  void SetPaused(BoundListener& bound, bool paused);
  void MaybeFinishShutdown();

  size_t index_;
  std::shared_ptr<const AccessLogFile> access_log_file_;  // until Init()
  conf::AccessLogFormat access_log_format_;
  net::EventBasePtr base_;
  net::MessageQueue<Loop> messages_;
  net::EventPtr tick_event_;
  net::EventPtr grace_event_;
  net::EventPtr flush_event_;
  net::EventPtr queue_poll_event_;
  net::EventPtr accept_retry_event_;
  bool accept_paused_ = false;
  // The next pause's length: doubled while accepting keeps failing, back to
  // the shortest once a connection is accepted.
  std::chrono::milliseconds accept_retry_;
  std::chrono::steady_clock::time_point accept_pause_logged_;
  uint64_t accept_pauses_unlogged_ = 0;
  bool queue_poll_armed_ = false;
  net::EventPtr hang_watch_event_;
  bool hang_watch_armed_ = false;
  bool flush_pending_ = false;
  health::HealthMonitor* health_monitor_ = nullptr;
  std::shared_ptr<const health::HealthSnapshot> health_;
  std::shared_ptr<const std::map<std::pair<std::string, std::string>,
                                 std::shared_ptr<SharedLimits>>>
      limits_;
  std::unique_ptr<AccessLog> access_log_;
  std::unique_ptr<net::WriteBehind> write_behind_;
  std::unique_ptr<net::WriteBehind> backend_write_behind_;
  LoopStats stats_;
  algorithms::Rng rng_;
  static constexpr size_t kMaxScratchBytes = 64 * 1024;
  static constexpr size_t kMaxIdleParserBytes = 16 * 1024;
  std::string scratch_;
  std::array<std::vector<std::unique_ptr<net::HttpParser>>, 2> spare_parsers_;
  std::vector<net::BufferEventPtr> spare_bevs_;

  std::unique_ptr<Generation> current_;
  std::vector<std::unique_ptr<Generation>> retired_;
  std::vector<BoundListener> listeners_;
  std::unordered_map<std::string, std::unique_ptr<BackendPool>>
      pools_;                               // by address
  FrontConnection* connections_ = nullptr;  // intrusive list head
  ParkedConnection* parked_ = nullptr;      // intrusive list head
  LocalGauge open_connections_;
  bool shutting_down_ = false;
  // Retired objects and how to delete each, until DeleteRetiredCb.
  std::vector<std::pair<void*, void (*)(void*)>> retired_objects_;
  net::EventPtr retire_event_;
};

}  // namespace tandem::dispatcher
