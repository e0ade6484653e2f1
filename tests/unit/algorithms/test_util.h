// Helpers shared by the algorithms/ tests: building backend views, counting
// picks, and checking shares against weights.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "algorithms/hash.h"
#include "algorithms/picker.h"

namespace tandem::algorithms::testing {

// Eligible backends with the given configured weights, identified by
// address so consistent hashing can be checked across reloads.
inline std::vector<BackendView> Views(std::initializer_list<uint32_t> weights) {
  std::vector<BackendView> views;
  for (uint32_t weight : weights) {
    views.push_back({ScaledWeight(weight), true,
                     Hash64("10.0.0." + std::to_string(views.size()) + ":80")});
  }
  return views;
}

inline std::vector<BackendView> EqualViews(size_t count) {
  std::vector<BackendView> views;
  for (size_t i = 0; i < count; ++i) {
    views.push_back(
        {ScaledWeight(1), true, Hash64("10.0.0." + std::to_string(i) + ":80")});
  }
  return views;
}

// The hash of the i-th test key, as the dispatcher would compute it.
inline uint64_t KeyHash(size_t i) {
  return Hash64("user-" + std::to_string(i));
}

// Letters for backend indices: "a a b a c a a".
inline std::string Sequence(Picker& picker, int picks,
                            const PickInput& input = {}) {
  std::string out;
  for (int i = 0; i < picks; ++i) {
    const std::optional<size_t> picked = picker.Pick(input);
    if (!out.empty()) out += ' ';
    out += picked ? static_cast<char>('a' + *picked) : '-';
  }
  return out;
}

// Picks per backend over `picks` unkeyed picks with `input`.
inline std::vector<size_t> CountPicks(Picker& picker, size_t backends,
                                      size_t picks,
                                      const PickInput& input = {}) {
  std::vector<size_t> counts(backends, 0);
  for (size_t i = 0; i < picks; ++i) {
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    ++counts.at(*picked);
  }
  return counts;
}

// Picks per backend, one keyed pick for each of `keys` keys.
inline std::vector<size_t> CountKeyedPicks(Picker& picker, size_t backends,
                                           size_t keys) {
  std::vector<size_t> counts(backends, 0);
  for (size_t i = 0; i < keys; ++i) {
    PickInput input;
    input.hash = KeyHash(i);
    const std::optional<size_t> picked = picker.Pick(input);
    REQUIRE(picked.has_value());
    ++counts.at(*picked);
  }
  return counts;
}

// Every backend's share of the picks is within `relative` (0.02 = 2 %) of
// its share of the weight.
inline void CheckShares(const std::vector<size_t>& counts,
                        std::initializer_list<uint32_t> weights,
                        double relative) {
  REQUIRE(counts.size() == weights.size());
  double total_weight = 0;
  for (uint32_t weight : weights) total_weight += weight;
  double total_picks = 0;
  for (size_t count : counts) total_picks += static_cast<double>(count);
  size_t i = 0;
  for (uint32_t weight : weights) {
    const double expected = weight / total_weight;
    const double observed = static_cast<double>(counts[i]) / total_picks;
    INFO("backend " << i << ": observed " << observed << ", expected "
                    << expected);
    CHECK(std::abs(observed - expected) <= relative * expected);
    ++i;
  }
}

}  // namespace tandem::algorithms::testing
