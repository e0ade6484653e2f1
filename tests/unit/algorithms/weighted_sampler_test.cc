// The alias table behind random and p2c.
#include "algorithms/weighted_sampler.h"

#include <doctest/doctest.h>

#include <vector>

#include "test_util.h"

namespace tandem::algorithms {
namespace {

using testing::CheckShares;
using testing::Views;

std::vector<size_t> CountDraws(const WeightedSampler& sampler, Rng& rng,
                               const TriedSet* tried, size_t exclude,
                               size_t backends, size_t draws) {
  std::vector<size_t> counts(backends, 0);
  for (size_t i = 0; i < draws; ++i) {
    const std::optional<size_t> p = sampler.Draw(rng, tried, exclude);
    REQUIRE(p.has_value());
    ++counts[sampler.index(*p)];
  }
  return counts;
}

TEST_CASE("the alias table gives every position exactly its weight") {
  WeightedSampler sampler;
  Rng scenario(99);
  for (int round = 0; round < 50; ++round) {
    std::vector<BackendView> views(1 + scenario.Below(300));
    for (BackendView& view : views) {
      view.eligible = true;
      view.weight = static_cast<uint32_t>(1 + scenario.Below(100000));
    }
    sampler.Build(views);
    for (size_t p = 0; p < sampler.size(); ++p) {
      REQUIRE(sampler.Mass(p) == uint64_t{sampler.weight(p)} * sampler.size());
    }
  }
}

TEST_CASE("the alias table draws in proportion to skewed weights") {
  WeightedSampler sampler;
  sampler.Build(Views({3, 10, 100, 1000}));
  Rng rng(17);
  CheckShares(CountDraws(sampler, rng, nullptr, WeightedSampler::kNoPosition, 4,
                         2000000),
              {3, 10, 100, 1000}, 0.05);
}

TEST_CASE("a draw that excludes a position never returns it") {
  WeightedSampler sampler;
  sampler.Build(Views({1, 1000}));
  Rng rng(17);
  const std::vector<size_t> counts =
      CountDraws(sampler, rng, nullptr, 1, 2, 1000);
  CHECK(counts[0] == 1000);
  CHECK(sampler.Draw(rng, nullptr, 0) == 1u);
  WeightedSampler single;
  single.Build(Views({3}));
  CHECK_FALSE(single.Draw(rng, nullptr, 0).has_value());
}

TEST_CASE("a draw among rare untried backends falls back to an exact scan") {
  WeightedSampler sampler;
  sampler.Build(Views({1000, 1000, 1, 3}));
  TriedSet tried;
  tried.Insert(0);
  tried.Insert(1);
  Rng rng(23);
  const std::vector<size_t> counts =
      CountDraws(sampler, rng, &tried, WeightedSampler::kNoPosition, 4, 100000);
  CHECK(counts[0] == 0);
  CHECK(counts[1] == 0);
  CheckShares({counts[2], counts[3]}, {1, 3}, 0.02);
}

}  // namespace
}  // namespace tandem::algorithms
