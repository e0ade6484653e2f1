// What health/ takes from a cluster's config: the settings of each
// backend's state machines and the standby policy's options. The monitor
// builds these on every reload; the decisions themselves never see conf/.
#pragma once

#include "algorithms/policy.h"
#include "conf/config.h"
#include "health/backend_health.h"
#include "health/cold_standby.h"

namespace tandem::health {

// Checks, rise/fall, slow start and outlier detection (off without an
// [outlier] table) of every backend of `cluster`.
[[nodiscard]] HealthSettings HealthSettingsFor(const conf::Cluster& cluster);

// The activation settings of `backend`, a backend of `cluster` (meaningful
// for cold backups only).
[[nodiscard]] ColdStandbySettings ColdStandbySettingsFor(
    const conf::Cluster& cluster, const conf::Backend& backend);

// A backup in cold standby: activated on demand.
[[nodiscard]] bool IsCold(const conf::Backend& backend);

[[nodiscard]] algorithms::Role RoleOf(conf::Role role);
[[nodiscard]] algorithms::Standby StandbyOf(conf::Standby standby);

// The policy's options for `cluster`. While `primaries_pending` (checks are
// on and some primary has not been checked once), panic is off: "not up"
// then only means "not checked yet", and panic would route to backends never
// proven healthy. (Cold activation waits too; the monitor holds it back.)
[[nodiscard]] algorithms::PolicyOptions PolicyOptionsFor(
    const conf::Cluster& cluster, bool primaries_pending);

}  // namespace tandem::health
