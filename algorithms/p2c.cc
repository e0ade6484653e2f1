// Power of two choices over weighted candidates; see docs/algorithms.md for
// why not Envoy's unequal-weight scheduler.
#include "algorithms/p2c.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void P2c::Update(std::span<const BackendView> backends) {
  sampler_.Build(backends);
}

std::optional<size_t> P2c::Pick(const PickInput& input) {
  const TriedSet* tried = TriedOf(input);
  std::optional<size_t> first = sampler_.Draw(rng_, tried);
  if (!first && tried != nullptr) {
    tried = nullptr;  // all tried: choose among them
    first = sampler_.Draw(rng_, nullptr);
  }
  if (!first) return std::nullopt;
  const std::optional<size_t> second = sampler_.Draw(rng_, tried, *first);
  if (!second) return sampler_.index(*first);

  const size_t a = sampler_.index(*first);
  const size_t b = sampler_.index(*second);
  return LessLoaded(InflightAt(input, b), sampler_.weight(*second),
                    InflightAt(input, a), sampler_.weight(*first))
             ? b
             : a;
}

}  // namespace tandem::algorithms
