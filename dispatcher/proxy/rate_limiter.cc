// Rate limits; see rate_limiter.h.
#include "dispatcher/proxy/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <thread>

#include "algorithms/hash.h"

namespace tandem::dispatcher {

RateLimiter::Bucket& RateLimiter::Find(uint64_t key, Clock::time_point now) {
  auto it = buckets_.find(key);
  if (it != buckets_.end()) {
    recent_.splice(recent_.begin(), recent_, it->second.recent);
    return it->second;
  }
  // A new key starts full; past max_keys the least recently used one goes
  // (it starts full again when it comes back).
  if (buckets_.size() >= config_.max_keys && !recent_.empty()) {
    buckets_.erase(recent_.back());
    recent_.pop_back();
  }
  recent_.push_front(key);
  Bucket& bucket = buckets_[recent_.front()];
  bucket.tokens = config_.bucket();
  bucket.at = now;
  bucket.recent = recent_.begin();
  return bucket;
}

uint32_t RateLimiter::Take(uint64_t key, Clock::time_point now, uint32_t want,
                           Clock::duration* wait, uint64_t returned_key,
                           uint32_t returned) {
  std::lock_guard<std::mutex> lock(mutex_);
  const double size = config_.bucket();
  if (returned > 0) {
    auto it = buckets_.find(returned_key);
    if (it != buckets_.end())
      it->second.tokens = std::min(size, it->second.tokens + returned);
  }
  Bucket& bucket = Find(key, now);
  const double elapsed = std::chrono::duration<double>(now - bucket.at).count();
  if (elapsed > 0) {
    bucket.tokens = std::min(size, bucket.tokens + elapsed * config_.rate);
    bucket.at = now;
  }
  const auto taken =
      static_cast<uint32_t>(std::min<double>(want, std::floor(bucket.tokens)));
  bucket.tokens -= taken;
  if (taken == 0) {
    *wait = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>((1.0 - bucket.tokens) / config_.rate));
  }
  return taken;
}

size_t RateLimiter::keys() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return buckets_.size();
}

RateLease::RateLease(RateLimiter& limiter, size_t threads) : limiter_(limiter) {
  // About 10 ms of the rate shared among the threads, at least one token:
  // what one thread may hold that another cannot use at that moment.
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const double share =
      limiter.config().rate * 0.01 / static_cast<double>(threads);
  lease_ = static_cast<uint32_t>(std::clamp(share, 1.0, 1000.0));
}

RateLease::Decision RateLease::Allow(std::string_view key,
                                     Clock::time_point now) {
  const uint64_t hash = algorithms::Hash64(key);
  Slot& slot = slots_[hash % slots_.size()];
  const bool mine = slot.used && slot.key == hash;
  if (mine && slot.tokens > 0) {
    --slot.tokens;
    return {};
  }
  if (mine && now < slot.refused_until)
    return {false, slot.refused_until - now};
  // Back to the shared bucket: what another key held in this slot goes back
  // with the same lock.
  Clock::duration wait{};
  const uint32_t taken = limiter_.Take(hash, now, lease_, &wait, slot.key,
                                       mine || !slot.used ? 0 : slot.tokens);
  if (!mine) {
    slot.key = hash;
    slot.used = true;
  }
  if (taken == 0) {
    slot.tokens = 0;
    slot.refused_until = now + wait;
    return {false, wait};
  }
  slot.tokens = taken - 1;
  slot.refused_until = {};
  return {};
}

}  // namespace tandem::dispatcher
