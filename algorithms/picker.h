// The selection interface every balancing algorithm implements, after Envoy's
// envoy/upstream/load_balancer.h and Pingora's BackendSelection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/rng.h"

namespace tandem::algorithms {

// Indices of the backends one request has already failed on. Backends are few
// (one cluster), so the first 64 live in a word and only larger clusters
// allocate, once, when the set is sized.
class TriedSet {
 public:
  void Clear() {
    small_ = 0;
    large_.clear();
    count_ = 0;
  }
  void Insert(size_t index) {
    if (Contains(index)) return;
    if (index < 64) {
      small_ |= uint64_t{1} << index;
    } else {
      if (large_.size() <= index - 64) large_.resize(index - 64 + 1, false);
      large_[index - 64] = true;
    }
    ++count_;
  }
  bool Contains(size_t index) const {
    if (index < 64) return (small_ >> index) & 1;
    return index - 64 < large_.size() && large_[index - 64];
  }
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }

 private:
  uint64_t small_ = 0;
  std::vector<bool> large_;
  size_t count_ = 0;
};

// Weights in a BackendView are in 1/kWeightScale of a configured weight unit,
// so slow start can ramp even a weight-1 backend in small steps (HAProxy's
// BE_WEIGHT_SCALE). Only ring hash depends on the absolute value (its point
// count); every other algorithm depends on ratios alone.
inline constexpr uint32_t kWeightScale = 100;

// A configured weight in BackendView units, saturating.
constexpr uint32_t ScaledWeight(uint32_t configured_weight) {
  constexpr uint32_t kMax = UINT32_MAX / kWeightScale;
  return configured_weight > kMax ? UINT32_MAX
                                  : configured_weight * kWeightScale;
}

// One backend as a picker sees it: plain values taken from the health
// snapshot after the standby policy ran. A backend with weight 0 is never
// picked, whatever `eligible` says.
struct BackendView {
  uint32_t weight = kWeightScale;  // effective weight: slow start and feedback
                                   // applied, in kWeightScale units
  bool eligible = false;           // the policy lets it take traffic now
  // Stable identity across updates and reloads, e.g. Hash64 of the address.
  // Consistent hashing places a backend by it, so a backend keeps its keys
  // when others come, go or change position. 0: derived from the position.
  uint64_t id = 0;
};

// What one pick may look at. Spans point into the caller's storage and are
// valid for the duration of the call only.
struct PickInput {
  std::optional<uint64_t> hash;        // ring-hash and maglev; nullopt: no key
  std::span<const uint32_t> inflight;  // in-flight requests per backend; a
                                       // backend past its end counts as 0
  const TriedSet* tried = nullptr;     // backends this request already failed
                                       // on; nullptr: none
  // p2c-ewma: each backend's recent response time (a peak EWMA, in µs); a
  // backend past its end counts as 0.
  std::span<const uint32_t> latency_us;
  // In-flight requests over the whole cluster, when the caller keeps that
  // count. Bounded-load hashing needs it; without it, it sums `inflight`
  // over the eligible backends, O(backends) per pick.
  std::optional<uint64_t> total_inflight;
};

enum class Algorithm {
  kRoundRobin,
  kLeastConn,
  kP2c,
  kP2cEwma,
  kRingHash,
  kMaglev,
  kRandom
};

// The algorithm's name as the config writes it ("p2c-ewma").
const char* AlgorithmName(Algorithm algorithm);

struct PickerOptions {
  Algorithm algorithm = Algorithm::kRoundRobin;
  // Bounded-load consistent hashing (HAProxy's hash-balance-factor, as a
  // ratio): no backend takes more than this factor of the average in-flight
  // load. 0 turns it off; values in (0, 1) act as 1. ring-hash and maglev
  // only. The exact rule is in bounded_load.h.
  double hash_balance_factor = 0;
  // Ring hash: points per configured unit of weight, i.e. per kWeightScale
  // of BackendView::weight (nginx uses 160, Envoy a ring of at least 1024
  // entries).
  uint32_t ring_points_per_weight = 160;
  // Maglev lookup table size; must be prime (Envoy's default) and should be
  // well above the backend count (Envoy: 100 times it) for even shares.
  uint32_t maglev_table_size = 65537;
};

// One per cluster per event-loop thread, never shared between threads.
class Picker {
 public:
  virtual ~Picker() = default;

  // Replaces the backend set. Called off the request path, when a health
  // snapshot or a config arrives; may allocate. Indices in later picks refer
  // to positions in `backends`.
  virtual void Update(std::span<const BackendView> backends) = 0;

  // Picks an eligible backend, preferring one not in `input.tried`; returns a
  // tried one only when every eligible backend has been tried. nullopt when
  // no backend is eligible. No lock, atomic or allocation.
  [[nodiscard]] virtual std::optional<size_t> Pick(const PickInput& input) = 0;
};

// Builds the picker for `options.algorithm`. `rng` must outlive the picker.
std::unique_ptr<Picker> MakePicker(const PickerOptions& options, Rng& rng);

}  // namespace tandem::algorithms
