// How a try on a backend failed, and whether the request goes on elsewhere: a
// pure decision over plain values, as Envoy's RetryStateImpl and nginx's
// ngx_http_upstream_next(). The rules and their reasons: docs/retries.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "health/backend_health.h"

namespace tandem::dispatcher {

// How one try failed.
enum class FailureKind : uint8_t {
  kConnect,   // the connection could not be made (or timed out connecting)
  kRefused,   // the connection was refused
  kPoolRace,  // a reused connection closed before any answer: the backend
              // closed it while idle, the request never reached it
  kReset,     // closed or reset after the request was sent
  kTimeout,   // try_timeout passed without a response head
  kStatus,    // answered 502, 503 or 504
  kInvalid,   // an unparseable response
  kHung,      // no response head while the backend was suspected hung
};

// Why an exchange ended badly, for the access log (Envoy's response flags).
enum ExchangeFlag : uint32_t {
  kFlagNoBackend = 1 << 0,        // UH: no eligible backend
  kFlagConnectFailure = 1 << 1,   // UF: connect failed
  kFlagUpstreamTimeout = 1 << 2,  // UT
  kFlagUpstreamReset = 1 << 3,    // UC: backend closed or reset
  kFlagClientReset = 1 << 4,      // DC: client went away
  kFlagInvalidResponse = 1 << 5,  // UP: unparseable response
  kFlagRetried = 1 << 6,          // RT: more than one try
  kFlagClientTimeout = 1 << 7,    // DT: client too slow
  kFlagRetried5xx = 1 << 8,       // R5: a 502/503/504 answer was retried
  kFlagOverflow = 1 << 9,         // UO: every backend at its limit
  kFlagHedged = 1 << 10,          // HD: a hedge raced the first try
  kFlagCircuitBreaker = 1 << 11,  // CB: a circuit breaker was reached
  kFlagRateLimited = 1 << 12,     // RL: over a rate limit (dry_run too)
  kFlagAdaptive = 1 << 13,        // AC: over the adaptive concurrency limit
};

// The access-log names of the flags, in bit order.
inline constexpr std::array<std::string_view, 14> kExchangeFlagNames = {
    "UH", "UF", "UT", "UC", "DC", "UP", "RT",
    "DT", "R5", "UO", "HD", "CB", "RL", "AC"};

// Everything the rest of tandem says about one failure kind.
struct FailureTraits {
  std::string_view trail_code;    // failed_tries= in the access log
  std::string_view retry_reason;  // tandem_retries_total{reason}
  uint32_t flag;                  // ExchangeFlag set on the exchange (or 0)
  health::TrafficFailure health;  // what health/ is told
  bool reached_worker;            // the request may have been processed
};

// One row per FailureKind, in its order.
inline constexpr std::array<FailureTraits, 8> kFailureTraits = {{
    {"UF", "connect_failure", kFlagConnectFailure,
     health::TrafficFailure::kConnect, false},
    {"UF", "connect_refused", kFlagConnectFailure,
     health::TrafficFailure::kConnect, false},
    {"PR", "pooled_connection_closed", kFlagUpstreamReset,
     health::TrafficFailure::kReset, false},
    {"UC", "reset", kFlagUpstreamReset, health::TrafficFailure::kReset, true},
    {"UT", "try_timeout", kFlagUpstreamTimeout,
     health::TrafficFailure::kTimeout, true},
    {"R5", "status_5xx", 0, health::TrafficFailure::kStatus5xx, true},
    {"UP", "invalid_response", kFlagInvalidResponse,
     health::TrafficFailure::kReset, true},
    {"HG", "suspected_hang", kFlagUpstreamTimeout,
     health::TrafficFailure::kTimeout, true},
}};

inline const FailureTraits& Traits(FailureKind kind) {
  return kFailureTraits[static_cast<size_t>(kind)];
}

// What one exchange knows when a try has failed.
struct RetryInput {
  FailureKind failure = FailureKind::kConnect;
  bool response_started = false;  // bytes of a response reached the client
  bool deadline_passed = false;   // request_timeout is spent
  bool idempotent = false;        // the method may be repeated
  // Failed tries that reached a worker, this one included.
  uint32_t reached_failures = 0;
  uint32_t retries = 0;         // the cluster's `retries`
  bool has_body = false;        // the request has body bytes
  bool body_replayable = true;  // all of them are kept for a replay
  // An eligible backend this request has not tried, or standby capacity
  // (a backup in reserve, a cold backup that may be started).
  bool other_backend = false;
  // The retry budget has room, or this exchange already holds a retry slot.
  bool budget_left = true;
};

enum class RetryAction {
  kRetry,          // try again now
  kWaitForBudget,  // retry once the budget has room (until request_timeout)
  kGiveUp,         // answer with the failure; `reason` says why
};

struct RetryDecision {
  RetryAction action = RetryAction::kGiveUp;
  std::string_view reason;  // for kGiveUp: not_retried= in the access log
};

// The rules of docs/retries.md, in their order. Pure; any thread.
[[nodiscard]] RetryDecision DecideRetry(const RetryInput& input);

}  // namespace tandem::dispatcher
