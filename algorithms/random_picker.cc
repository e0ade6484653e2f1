// Weighted random choice through the alias table.
#include "algorithms/random_picker.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void RandomPicker::Update(std::span<const BackendView> backends) {
  sampler_.Build(backends);
}

std::optional<size_t> RandomPicker::Pick(const PickInput& input) {
  const TriedSet* tried = TriedOf(input);
  std::optional<size_t> position = sampler_.Draw(rng_, tried);
  if (!position && tried != nullptr) position = sampler_.Draw(rng_, nullptr);
  if (!position) return std::nullopt;
  return sampler_.index(*position);
}

}  // namespace tandem::algorithms
