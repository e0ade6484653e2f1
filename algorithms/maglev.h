// Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), with
// weights as Envoy's maglev_lb.cc: a backend fills the lookup table in turns,
// as often as its weight relative to the heaviest allows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/hash_walk.h"
#include "algorithms/picker.h"
#include "algorithms/smooth_wrr.h"

namespace tandem::algorithms {

class Maglev final : public Picker {
 public:
  // A `maglev_table_size` that is not prime is raised to the next prime:
  // the permutations need it to cover the table.
  explicit Maglev(const PickerOptions& options);

  // Rebuilds the table over the pickable backends (in the order of their
  // ids, so a reload that reorders the file changes nothing). Backend `id`
  // tries slots offset + j * skip, offset = HashWords(id, 0, 0) % M, skip =
  // HashWords(id, 0, 1) % (M - 1) + 1. O(M log M); allocates.
  void Update(std::span<const BackendView> backends) override;

  // With input.hash: table[hash % M]; past a tried backend or, with bounded
  // load, one at capacity, walks the table slot by slot (see
  // ChooseAlongWalk). Without: smooth WRR. O(1) when the home backend is
  // taken.
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

  size_t table_size() const { return table_size_; }

 private:
  uint32_t table_size_;
  double balance_factor_;
  std::vector<HashEntry> entries_;
  uint64_t total_weight_ = 0;
  std::vector<uint32_t> table_;  // positions in entries_; empty: none
  SmoothWrr unkeyed_;
};

}  // namespace tandem::algorithms
