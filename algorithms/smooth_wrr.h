// Smooth weighted round robin, as nginx's ngx_http_upstream_get_peer() in
// src/http/ngx_http_upstream_round_robin.c: weights {5,1,1} give a a b a c a a.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/pick_util.h"
#include "algorithms/picker.h"

namespace tandem::algorithms {

class SmoothWrr final : public Picker {
 public:
  // Keeps the rotation state of backends that stay pickable when the backend
  // count is unchanged (a health snapshot), so an update does not restart
  // the sequence; a backend that becomes pickable starts from zero.
  void Update(std::span<const BackendView> backends) override;

  // Every pickable backend gains its weight, the highest current weight wins
  // (the first on ties) and pays back the total. Tried backends sit out,
  // unless all are tried. O(pickable backends), as nginx.
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

 private:
  std::optional<size_t> PickUntried(const TriedSet& tried);
  size_t PickAll();

  // The pickable backends, in backend order, as parallel arrays so the
  // common pass streams through two of them.
  SmoothState<int64_t> state_;
  int64_t total_weight_ = 0;
};

}  // namespace tandem::algorithms
