// What health/ publishes: an immutable picture of every backend's state and
// of what the standby policy made of it. Loops feed it to their pickers; the
// admin API shows it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "algorithms/picker.h"
#include "algorithms/policy.h"
#include "conf/config.h"
#include "health/backend_health.h"

namespace tandem::health {

// Why a backend was ejected, for tandem_backend_ejections_total{reason}.
enum class EjectionKind {
  kConsecutiveFailures,
  kSuccessRate,
  kFailurePercentage,
  kSuspectedHang
};
inline constexpr std::string_view kEjectionKindNames[] = {
    "consecutive_failures", "success_rate", "failure_percentage",
    "suspected_hang"};

struct BackendStatus {
  std::string address;
  BackendState state = BackendState::kUnknown;
  bool active = false;       // the policy lets it take traffic now
  uint32_t weight = 1;       // configured
  uint32_t view_weight = 0;  // what pickers use (BackendView units)
  // Cold backups only: where the activate command stands.
  std::optional<algorithms::Activation> activation;
  bool refused_recently = false;
  std::string last_check;
  std::vector<Transition> transitions;
  // Counters since start (kept across reloads for backends that stay).
  uint64_t checks_passed = 0;
  uint64_t checks_failed = 0;
  double check_seconds = 0;  // total time spent in checks
  std::array<uint64_t, std::size(kEjectionKindNames)> ejections_by{};
  // Transitions by the state entered, indexed by BackendState.
  std::array<uint64_t, 7> transitions_to{};
};

// A decision of the policy, kept to explain failovers.
struct PolicyEvent {
  int64_t at_unix_ms = 0;
  std::string message;
};

struct ClusterStatus {
  std::string name;
  bool panic = false;
  uint32_t serving = 0;
  uint32_t target = 0;
  std::vector<BackendStatus> backends;  // config order
  std::vector<algorithms::BackendView>
      views;                        // index-aligned, for Picker::Update
  std::vector<PolicyEvent> events;  // newest last
};

struct HealthSnapshot {
  uint64_t version = 0;
  std::shared_ptr<const conf::Config>
      config;                           // the config these states belong to
  std::vector<ClusterStatus> clusters;  // config order

  const ClusterStatus* Find(std::string_view cluster) const {
    for (const ClusterStatus& status : clusters) {
      if (status.name == cluster) return &status;
    }
    return nullptr;
  }
};

// Whether loops, which rebuild their pickers from a snapshot, need `b` after
// `a`: the clusters, panic, or a backend's eligibility, view weight, state or
// activation differ. Counters, checks and events alone do not count. Pure.
[[nodiscard]] bool RoutingDiffers(const HealthSnapshot& a,
                                  const HealthSnapshot& b);

// An outcome the data path saw on a backend, aggregated over a short while.
struct OutcomeReport {
  uint32_t cluster = 0;  // index into the batch's config
  uint32_t backend = 0;
  uint32_t successes = 0;
  uint32_t failures = 0;
  TrafficFailure kind = TrafficFailure::kConnect;  // of the failures
  bool refused = false;                            // a connect was refused
};

struct OutcomeBatch {
  std::shared_ptr<const conf::Config> config;
  std::vector<OutcomeReport> reports;
};

}  // namespace tandem::health
