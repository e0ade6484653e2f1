// Maglev lookup table, populated as Envoy's
// MaglevTable::constructMaglevTableInternal() does for unequal weights.
#include "algorithms/maglev.h"

#include <algorithm>

#include "algorithms/pick_util.h"

namespace tandem::algorithms {
namespace {

bool IsPrime(uint32_t n) {
  if (n < 2) return false;
  for (uint32_t d = 2; static_cast<uint64_t>(d) * d <= n; ++d) {
    if (n % d == 0) return false;
  }
  return true;
}

uint32_t NextPrime(uint32_t n) {
  while (!IsPrime(n)) ++n;
  return n;
}

}  // namespace

Maglev::Maglev(const PickerOptions& options)
    : table_size_(NextPrime(std::max<uint32_t>(options.maglev_table_size, 2))),
      balance_factor_(options.hash_balance_factor) {}

void Maglev::Update(std::span<const BackendView> backends) {
  unkeyed_.Update(backends);

  entries_.clear();
  total_weight_ = 0;
  std::vector<uint64_t> ids;
  uint64_t max_weight = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!Pickable(backends[i])) continue;
    entries_.push_back({i, backends[i].weight});
    ids.push_back(BackendId(backends[i], i));
    total_weight_ += backends[i].weight;
    max_weight = std::max<uint64_t>(max_weight, backends[i].weight);
  }
  table_.clear();
  if (entries_.empty()) return;

  struct Builder {
    uint32_t entry;
    uint64_t weight;
    uint64_t slot;  // offset + next * skip, mod M
    uint64_t skip;
    uint64_t target = 0;
  };
  const uint64_t m = table_size_;
  std::vector<Builder> builders;
  for (size_t e = 0; e < entries_.size(); ++e) {
    builders.push_back({static_cast<uint32_t>(e), entries_[e].weight,
                        HashWords(ids[e], 0, 0) % m,
                        HashWords(ids[e], 0, 1) % (m - 1) + 1});
  }
  std::stable_sort(builders.begin(), builders.end(),
                   [&](const Builder& a, const Builder& b) {
                     return ids[a.entry] < ids[b.entry];
                   });

  constexpr uint32_t kEmpty = UINT32_MAX;
  table_.assign(m, kEmpty);
  uint64_t filled = 0;
  // A backend of the heaviest weight takes a turn every round; one of a
  // third of it, every third round (Envoy's target_weight_). Every backend
  // takes its first turn in round one, so each owns a slot when M >= N.
  for (uint64_t round = 1; filled < m; ++round) {
    for (Builder& b : builders) {
      if (filled == m) break;
      if (round * b.weight < b.target) continue;
      b.target += max_weight;
      while (table_[b.slot] != kEmpty) {
        b.slot += b.skip;
        if (b.slot >= m) b.slot -= m;
      }
      table_[b.slot] = b.entry;
      ++filled;
    }
  }
}

std::optional<size_t> Maglev::Pick(const PickInput& input) {
  if (!input.hash) return unkeyed_.Pick(input);
  if (table_.empty()) return std::nullopt;

  const size_t m = table_.size();
  const size_t slot = static_cast<size_t>(*input.hash % m);
  return ChooseAlongWalk(entries_, input, balance_factor_, total_weight_,
                         std::min(m, kMaxHashWalk), [&](size_t step) {
                           size_t k = slot + step;
                           if (k >= m) k -= m;
                           return static_cast<size_t>(table_[k]);
                         });
}

}  // namespace tandem::algorithms
