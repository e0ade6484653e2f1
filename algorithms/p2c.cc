// Power of two choices over weighted candidates; see docs/algorithms.md for
// why not Envoy's unequal-weight scheduler.
#include "algorithms/p2c.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void P2c::Update(std::span<const BackendView> backends) {
  sampler_.Build(backends);
}

std::optional<size_t> P2c::Pick(const PickInput& input) {
  const std::optional<TwoChoices> choices =
      DrawTwo(sampler_, rng_, TriedOf(input));
  if (!choices) return std::nullopt;
  const size_t a = sampler_.index(choices->first);
  if (!choices->second) return a;
  const size_t b = sampler_.index(*choices->second);
  return LessLoaded(InflightAt(input, b), sampler_.weight(*choices->second),
                    InflightAt(input, a), sampler_.weight(choices->first))
             ? b
             : a;
}

}  // namespace tandem::algorithms
