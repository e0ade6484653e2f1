// Rate limits (docs/retries.md, "Rate limits"): token buckets per key,
// refilled lazily when a key is looked at (never by a timer, so a limit of
// 15,000/s is 15,000/s: envoy#29857), one limit for the whole process.
// RateLimiter is shared by every loop thread behind a mutex; each loop takes
// tokens from it in leases (RateLease), so a thread locks once per lease, not
// once per request, and a key it has just found empty is refused locally
// until a token is due. Keys are kept as their 64-bit hash (XXH64), so a
// key's size costs nothing however long the header value it came from.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "conf/config.h"

namespace tandem::dispatcher {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit RateLimiter(const conf::RateLimit& config) : config_(config) {}
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Takes up to `want` whole tokens of `key` at `now` and returns how many
  // it took; when none, `*wait` is how long until one is due. Gives back
  // `returned` tokens of `returned_key` first (a lease let go). Any thread.
  uint32_t Take(uint64_t key, Clock::time_point now, uint32_t want,
                Clock::duration* wait, uint64_t returned_key = 0,
                uint32_t returned = 0);
  // Keys tracked now (at most max_keys). Any thread.
  size_t keys() const;
  const conf::RateLimit& config() const { return config_; }

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point at;
    std::list<uint64_t>::iterator recent;  // into recent_
  };
  Bucket& Find(uint64_t key, Clock::time_point now);

  const conf::RateLimit config_;
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, Bucket> buckets_;
  std::list<uint64_t> recent_;  // most recently used first
};

// One loop's leases of one RateLimiter: a small table of keys with the
// tokens this thread holds for each. No lock while a lease lasts. One
// loop's thread only.
class RateLease {
 public:
  using Clock = std::chrono::steady_clock;
  struct Decision {
    bool allowed = true;
    Clock::duration wait{};  // when refused: until a token is due
  };
  RateLease(RateLimiter& limiter, size_t threads);
  Decision Allow(std::string_view key, Clock::time_point now);

 private:
  struct Slot {
    uint64_t key = 0;
    uint32_t tokens = 0;
    Clock::time_point refused_until{};
    bool used = false;
  };
  RateLimiter& limiter_;
  uint32_t lease_;  // tokens taken at once
  std::array<Slot, 256> slots_;
};

}  // namespace tandem::dispatcher
