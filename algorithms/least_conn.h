// Least connections relative to weight, as nginx's least_conn
// (ngx_http_upstream_get_least_conn_peer()): fewest in-flight per unit of
// weight wins; equals share by smooth weighted round robin.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/pick_util.h"
#include "algorithms/picker.h"

namespace tandem::algorithms {

class LeastConn final : public Picker {
 public:
  // Keeps the tie-break rotation of backends that stay pickable when the
  // backend count is unchanged.
  void Update(std::span<const BackendView> backends) override;

  // Least inflight/weight among the pickable, untried backends (all of them
  // when every one is tried), compared by cross-multiplication. Several at
  // the same load rotate by smooth WRR among themselves, so an idle cluster
  // is served in weight proportion rather than always by the first backend.
  // O(pickable backends).
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

 private:
  // Picks among the entries not in `tried` (nullptr: all); nullopt when none.
  template <typename InflightOf>
  std::optional<size_t> PickAmong(const TriedSet* tried,
                                  InflightOf inflight_of);

  // The pickable backends, in backend order, as parallel arrays.
  SmoothState<uint32_t> state_;
};

}  // namespace tandem::algorithms
