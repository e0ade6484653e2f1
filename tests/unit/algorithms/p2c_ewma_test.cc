// p2c-ewma: of two candidates, the lower (latency + 1) × (in-flight + 1)
// wins; weights act through the draw; the peak EWMA rises at once and falls
// with time.
#include "algorithms/p2c_ewma.h"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using std::chrono::microseconds;
using std::chrono::seconds;
using testing::EqualViews;

size_t PickWith(P2cEwma& picker, std::vector<uint32_t> latency,
                std::vector<uint32_t> inflight) {
  PickInput input;
  input.latency_us = latency;
  input.inflight = inflight;
  return picker.Pick(input).value();
}

TEST_CASE("of two backends the faster, the less loaded, the lower product") {
  Rng rng(3);
  P2cEwma picker(rng);
  picker.Update(EqualViews(2));
  for (int i = 0; i < 100; ++i) {
    CHECK(PickWith(picker, {1000, 20000}, {0, 0}) == 0u);
    CHECK(PickWith(picker, {500, 500}, {5, 0}) == 1u);
    // 101 × 21 = 2121 against 1001 × 1 = 1001.
    CHECK(PickWith(picker, {100, 1000}, {20, 0}) == 1u);
    // Unmeasured (0) is tried.
    CHECK(PickWith(picker, {300, 0}, {0, 0}) == 1u);
  }
}

TEST_CASE("a slow backend among three gets a small share under load") {
  Rng rng(9);
  P2cEwma picker(rng);
  picker.Update(EqualViews(3));
  std::vector<size_t> counts(3);
  // Backend 2 answers 20 times slower; the in-flight counts follow (a
  // queue as long as its latency under the same arrival rate).
  for (int i = 0; i < 30000; ++i) {
    ++counts[PickWith(picker, {1000, 1000, 20000}, {2, 2, 8})];
  }
  CHECK(counts[2] < 30000 / 20);
  CHECK(counts[0] > 12000);
  CHECK(counts[1] > 12000);
}

TEST_CASE("the peak EWMA rises at once and falls with the decay") {
  const PeakEwma::Clock::time_point t0{};
  PeakEwma ewma;
  CHECK(ewma.Value(t0) == 0);
  ewma.Observe(microseconds(1000), t0);
  CHECK(ewma.Value(t0) == doctest::Approx(1000));
  ewma.Observe(microseconds(5000), t0);
  CHECK(ewma.Value(t0) == doctest::Approx(5000));  // the peak, at once
  // A faster answer one decay later pulls it down by 1 - 1/e.
  ewma.Observe(microseconds(1000), t0 + PeakEwma::kDecay);
  const double expected = 5000 * std::exp(-1.0) + 1000 * (1 - std::exp(-1.0));
  CHECK(ewma.Value(t0 + PeakEwma::kDecay) == doctest::Approx(expected));
  // Unpicked, the value decays with time so the backend is tried again.
  CHECK(ewma.Value(t0 + 2 * PeakEwma::kDecay) ==
        doctest::Approx(expected * std::exp(-1.0)));
  CHECK(ewma.Value(t0 + seconds(1000)) < 1.0);
}

}  // namespace
}  // namespace tandem::algorithms
