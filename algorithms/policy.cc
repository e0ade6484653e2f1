// Standby/priority policy: promotion of backups, cold activation, panic.
#include "algorithms/policy.h"

#include <algorithm>

namespace tandem::algorithms {
namespace {

bool OperatorExcluded(const PolicyBackend& backend) {
  return backend.state == BackendState::kDraining ||
         backend.state == BackendState::kDisabled || backend.weight == 0;
}

bool TakesTraffic(const PolicyBackend& backend) {
  switch (backend.state) {
    case BackendState::kUnknown:
    case BackendState::kUp:
    case BackendState::kSlowStart:
      return backend.weight > 0;
    case BackendState::kDown:
    case BackendState::kEjected:
    case BackendState::kDraining:
    case BackendState::kDisabled:
      return false;
  }
  return false;
}

// A cold backup counts only after its activation passed a health check: an
// unknown state right after starting proves nothing.
bool ColdServes(const PolicyBackend& backend) {
  return backend.activation == Activation::kActive &&
         (backend.state == BackendState::kUp ||
          backend.state == BackendState::kSlowStart) &&
         backend.weight > 0;
}

bool Running(const PolicyBackend& backend) {
  return backend.role == Role::kPrimary || backend.standby != Standby::kCold ||
         backend.activation == Activation::kActive;
}

}  // namespace

PolicyResult ApplyPolicy(std::span<const PolicyBackend> backends,
                         const PolicyOptions& options) {
  PolicyResult result;
  const size_t n = backends.size();
  result.views.resize(n);
  for (size_t i = 0; i < n; ++i) {
    result.views[i].weight = backends[i].weight;
    result.views[i].id = backends[i].id;
    result.views[i].eligible = false;
  }

  const uint32_t min_active =
      options.policy == Policy::kAllActive ? 1 : options.min_active;
  uint32_t primaries = 0;
  for (size_t i = 0; i < n; ++i) {
    if (backends[i].role != Role::kPrimary) continue;
    ++primaries;
    if (TakesTraffic(backends[i])) {
      result.views[i].eligible = true;
      ++result.serving;
    }
  }

  std::vector<bool> wanted(n, false);
  uint32_t need =
      result.serving >= min_active ? 0 : min_active - result.serving;
  bool cold_pending = false;
  for (size_t i = 0; i < n && need > 0; ++i) {
    const PolicyBackend& backup = backends[i];
    if (backup.role != Role::kBackup || OperatorExcluded(backup)) continue;
    bool serves = false;
    if (backup.standby != Standby::kCold) {
      serves = TakesTraffic(backup);
    } else {
      switch (backup.activation) {
        case Activation::kActive:
          wanted[i] = true;
          serves = ColdServes(backup);
          break;
        case Activation::kActivating:
          wanted[i] = true;
          cold_pending = true;
          break;
        case Activation::kInactive:
          if (!cold_pending) {
            wanted[i] = true;
            cold_pending = true;
            result.activate.push_back(i);
          }
          break;
        case Activation::kFailed:
          break;
      }
    }
    if (serves) {
      result.views[i].eligible = true;
      result.promoted.push_back(i);
      ++result.serving;
      --need;
    }
  }

  result.target = static_cast<uint32_t>(
      std::min<uint64_t>(std::max(primaries, min_active), n));
  result.panic = options.panic_threshold > 0 &&
                 result.serving < options.panic_threshold * result.target;
  if (result.panic) {
    // The checks may be what is wrong: spread over every member that runs,
    // but trust what the data path itself saw and what an operator said.
    for (size_t i = 0; i < n; ++i) {
      const PolicyBackend& backend = backends[i];
      result.views[i].eligible = Running(backend) &&
                                 !OperatorExcluded(backend) &&
                                 !backend.refused_recently;
    }
    return result;
  }

  for (size_t i = 0; i < n; ++i) {
    const PolicyBackend& backend = backends[i];
    if (backend.role == Role::kBackup && backend.standby == Standby::kCold &&
        (backend.activation == Activation::kActivating ||
         backend.activation == Activation::kActive) &&
        !wanted[i]) {
      result.deactivate.push_back(i);
    }
  }
  return result;
}

}  // namespace tandem::algorithms
