// Per-thread counters for the data path. Each value has one writer (its loop
// thread) and is read by the metrics scrape: a relaxed load and store, never a
// read-modify-write, so counting costs no lock prefix and shares no cache line.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "dispatcher/proxy/retry_policy.h"

namespace tandem::dispatcher {

class LocalCounter {
 public:
  void Add(uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n,
                 std::memory_order_relaxed);
  }
  uint64_t Get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class LocalGauge {
 public:
  void Add(int64_t n) {
    value_.store(value_.load(std::memory_order_relaxed) + n,
                 std::memory_order_relaxed);
  }
  void Set(int64_t n) { value_.store(n, std::memory_order_relaxed); }
  int64_t Get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Request durations in fixed buckets (seconds), as Prometheus histograms.
class LocalHistogram {
 public:
  static constexpr std::array<double, 14> kBounds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,  0.5,    1,     2.5,  5,     10};

  void Observe(uint64_t micros) {
    double seconds = static_cast<double>(micros) / 1e6;
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    buckets_[i].Add();
    sum_micros_.Add(micros);
  }
  // Count in bucket i (not cumulative); i == kBounds.size() is +Inf.
  uint64_t bucket(size_t i) const { return buckets_[i].Get(); }
  uint64_t sum_micros() const { return sum_micros_.Get(); }

 private:
  std::array<LocalCounter, kBounds.size() + 1> buckets_;
  LocalCounter sum_micros_;
};

// Status classes: index 0 = no response (client went away), 1..5 = 1xx..5xx.
inline size_t StatusClass(int status) {
  return status >= 100 && status < 600 ? static_cast<size_t>(status / 100) : 0;
}

struct BackendStats {
  std::array<LocalCounter, 6> responses;  // by StatusClass
  // Request head to the end of the response, for exchanges that ended here.
  LocalHistogram request_duration;
  LocalCounter connect_failures;
  LocalCounter upstream_resets;
  LocalCounter upstream_timeouts;
  LocalCounter stray_closes;      // pooled connections that spoke while idle
  LocalCounter hang_suspicions;   // times a loop suspected it hung
  LocalCounter passed_over_slow;  // picks that went elsewhere: it is slow
  LocalCounter connections_opened;
  LocalCounter connect_micros;  // total connect time, for an average
  LocalGauge inflight;
  LocalGauge connections_open;  // connecting, in use or idle
  LocalGauge idle_connections;
};

// What became of a hedge (docs/retries.md): it answered first, the first try
// answered first, or one of the two racing tries failed and the other went on.
enum HedgeResult : size_t { kHedgeWon, kHedgeLost, kHedgeFailed };
inline constexpr const char* kHedgeResults[] = {"won", "lost", "failed"};

// Which circuit breaker turned a request away or made it wait.
enum BreakerLimit : size_t {
  kBreakerRequests,
  kBreakerPending,
  kBreakerRetries,
  kBreakerAdaptive,  // the adaptive concurrency limit
};
inline constexpr const char* kBreakerLimits[] = {
    "max_requests", "max_pending", "max_retries_in_flight", "adaptive"};

// What a rate limit said: allowed, refused (429), or over the limit in
// dry_run (counted only).
enum RateResult : size_t { kRateAllowed, kRateLimited, kRateDryRun };
inline constexpr const char* kRateResults[] = {"allowed", "limited", "dry_run"};
struct RateLimitStats {
  std::array<LocalCounter, std::size(kRateResults)> results;
};

struct ClusterStats {
  LocalHistogram request_duration;
  // By the failure that caused them (kFailureTraits' retry_reason).
  std::array<LocalCounter, kFailureTraits.size()> retries;
  std::array<LocalCounter, std::size(kHedgeResults)> hedges;
  std::array<LocalCounter, std::size(kBreakerLimits)> breaker_overflows;
  // Queued requests answered 503 for one of higher priority, by priority.
  std::array<LocalCounter, 8> shed;
  RateLimitStats rate;
  LocalCounter no_backend;
  LocalGauge queued;
  LocalCounter queue_timeouts;
  LocalHistogram queue_wait;
};

// Why TLS handshakes with clients failed (net::HandshakeFailureReason() texts).
inline constexpr const char* kHandshakeFailures[] = {
    "protocol_version",       "plain_http",     "no_shared_cipher",
    "bad_client_certificate", "unexpected_eof", "other"};

// What became of connections on a listener with proxy_protocol: a client's
// address taken from the header, a LOCAL (or UNKNOWN) header, a malformed
// header, none within proxy_protocol_timeout, a peer outside trusted_proxies,
// a peer that closed before its header ended.
enum class ProxyResult {
  kProxied,
  kLocal,
  kInvalid,
  kTimeout,
  kUntrusted,
  kClosed
};
inline constexpr const char* kProxyResults[] = {
    "proxied", "local", "invalid", "timeout", "untrusted", "closed"};

// Why tandem ended or refused an HTTP/2 connection: the error code of the
// GOAWAY it sent, or a session dropped without one (a flood of frames that
// must be answered, a preface that is not HTTP/2's).
enum class H2Error : uint8_t {
  kNoError,
  kProtocol,
  kEnhanceYourCalm,
  kInternal,
  kFlood,
  kBadPreface
};
inline constexpr const char* kH2Errors[] = {
    "no_error",       "protocol_error", "enhance_your_calm",
    "internal_error", "flood",          "bad_preface"};

struct ListenerStats {
  std::array<LocalCounter, 6> requests;  // by StatusClass of the final answer
  RateLimitStats rate;
  LocalCounter tls_handshakes;
  std::array<LocalCounter, std::size(kHandshakeFailures)>
      tls_handshake_failures;
  LocalCounter connections_accepted;
  LocalGauge connections_open;
  LocalGauge accept_paused;  // 1 while this loop's socket does not accept
  LocalCounter bytes_received;
  LocalCounter bytes_sent;
  std::array<LocalCounter, std::size(kProxyResults)> proxy_protocol;
  void CountProxy(ProxyResult result) {
    proxy_protocol[static_cast<size_t>(result)].Add();
  }
  LocalCounter h2_connections;      // connections that spoke HTTP/2
  LocalCounter h2_streams;          // streams begun by clients
  LocalCounter h2_resets_received;  // RST_STREAM frames from clients
  std::array<LocalCounter, std::size(kH2Errors)> h2_errors;
  void CountH2Error(H2Error error) {
    h2_errors[static_cast<size_t>(error)].Add();
  }
};

// Why accepting paused (index: Loop's AcceptPauseReason()).
inline constexpr const char* kAcceptPauseReasons[] = {"emfile", "enfile",
                                                      "enobufs", "enomem"};

// One loop's counters, by name. Entries are created when a config is applied
// (under the mutex) and never removed, so the data path keeps plain pointers.
class LoopStats {
 public:
  // Times accepting paused for lack of descriptors or memory, by reason.
  std::array<LocalCounter, std::size(kAcceptPauseReasons)> accept_pauses;
  // Sampled once a second by the loop: bytes waiting in its connections'
  // buffers (client and backend, both directions, kept retry bodies), and
  // bytes its pools hold between exchanges (spare parsers, scratch).
  LocalGauge buffered_bytes;
  LocalGauge pooled_bytes;
  // Client connections parked between requests (ParkedConnection).
  LocalGauge parked_connections;

  BackendStats* Backend(const std::string& cluster, const std::string& address);
  ClusterStats* Cluster(const std::string& cluster);
  ListenerStats* Listener(const std::string& listener);

  // For the scrape: calls `fn` for every entry, under the mutex.
  void VisitBackends(const std::function<void(const std::string& cluster,
                                              const std::string& address,
                                              const BackendStats&)>& fn) const;
  void VisitClusters(const std::function<void(const std::string& cluster,
                                              const ClusterStats&)>& fn) const;
  void VisitListeners(
      const std::function<void(const std::string& listener,
                               const ListenerStats&)>& fn) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<BackendStats>>
      backends_;
  std::map<std::string, std::unique_ptr<ClusterStats>> clusters_;
  std::map<std::string, std::unique_ptr<ListenerStats>> listeners_;
};

}  // namespace tandem::dispatcher
