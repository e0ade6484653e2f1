// Tests of RateLimiter and RateLease with time passed in: the burst, the
// refill, the bound on keys, leases and their return.
#include "dispatcher/proxy/rate_limiter.h"

#include <doctest/doctest.h>

#include <string>

namespace tandem::dispatcher {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

conf::RateLimit Limit(double rate, double burst, uint32_t max_keys = 100) {
  conf::RateLimit limit;
  limit.rate = rate;
  limit.burst = burst;
  limit.max_keys = max_keys;
  return limit;
}

TEST_CASE("a bucket gives its burst, then the rate, refilled when looked at") {
  RateLimiter limiter(Limit(10, 5));
  const Clock::time_point t0 = Clock::now();
  Clock::duration wait{};
  CHECK(limiter.Take(1, t0, 100, &wait) == 5);
  CHECK(limiter.Take(1, t0, 1, &wait) == 0);
  // 1 token is due after 100 ms at 10/s.
  CHECK(wait == std::chrono::duration_cast<Clock::duration>(milliseconds(100)));
  CHECK(limiter.Take(1, t0 + milliseconds(250), 100, &wait) == 2);
  // Never more than the burst, however long it waited.
  CHECK(limiter.Take(1, t0 + std::chrono::hours(1), 100, &wait) == 5);
  // Another key has its own bucket.
  CHECK(limiter.Take(2, t0, 100, &wait) == 5);
  CHECK(limiter.keys() == 2);
}

TEST_CASE("without a burst the bucket holds one second of the rate") {
  RateLimiter limiter(Limit(3, 0));
  Clock::duration wait{};
  CHECK(limiter.Take(1, Clock::now(), 100, &wait) == 3);
  RateLimiter slow(Limit(0.5, 0));  // at least one token
  CHECK(slow.Take(1, Clock::now(), 100, &wait) == 1);
}

TEST_CASE("past max_keys the least recently used key is forgotten") {
  RateLimiter limiter(Limit(1, 1, 3));
  const Clock::time_point t0 = Clock::now();
  Clock::duration wait{};
  for (uint64_t key : {1, 2, 3}) CHECK(limiter.Take(key, t0, 1, &wait) == 1);
  CHECK(limiter.Take(1, t0, 1, &wait) == 0);  // 1 is the most recent now
  CHECK(limiter.Take(4, t0, 1, &wait) == 1);  // 2 goes
  CHECK(limiter.keys() == 3);
  CHECK(limiter.Take(1, t0, 1, &wait) == 0);  // kept, still empty
  CHECK(limiter.Take(2, t0, 1, &wait) == 1);  // forgotten: full again
  CHECK(limiter.keys() == 3);
}

TEST_CASE("a lease takes tokens at once and refuses locally until one is due") {
  RateLimiter limiter(Limit(1000, 100));
  RateLease lease(limiter, 1);  // 10 ms of 1000/s: 10 tokens a lease
  const Clock::time_point t0 = Clock::now();
  int allowed = 0;
  for (int i = 0; i < 150; ++i) allowed += lease.Allow("k", t0).allowed ? 1 : 0;
  CHECK(allowed == 100);  // the burst, whatever the lease size
  const RateLease::Decision refused = lease.Allow("k", t0);
  CHECK_FALSE(refused.allowed);
  CHECK(refused.wait > Clock::duration::zero());
  // 20 ms later: 20 tokens were refilled.
  allowed = 0;
  for (int i = 0; i < 50; ++i)
    allowed += lease.Allow("k", t0 + milliseconds(20)).allowed ? 1 : 0;
  CHECK(allowed == 20);
}

TEST_CASE("two leases share one limit") {
  RateLimiter limiter(Limit(100, 10));
  RateLease one(limiter, 2);
  RateLease two(limiter, 2);
  const Clock::time_point t0 = Clock::now();
  int allowed = 0;
  for (int i = 0; i < 20; ++i) {
    allowed += one.Allow("k", t0).allowed ? 1 : 0;
    allowed += two.Allow("k", t0).allowed ? 1 : 0;
  }
  CHECK(allowed == 10);
}

}  // namespace
}  // namespace tandem::dispatcher
