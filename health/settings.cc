// What health/ takes from a cluster's config; see settings.h.
#include "health/settings.h"

namespace tandem::health {

HealthSettings HealthSettingsFor(const conf::Cluster& cluster) {
  HealthSettings settings;
  settings.checks = cluster.health.kind != conf::HealthCheck::Kind::kNone;
  settings.rise = cluster.health.rise;
  settings.fall = cluster.health.fall;
  settings.slow_start = cluster.slow_start;
  switch (cluster.health.kind) {
    case conf::HealthCheck::Kind::kTcp:
      settings.check_name = "TCP check";
      break;
    case conf::HealthCheck::Kind::kGrpc:
      settings.check_name = "gRPC check";
      break;
    default:
      settings.check_name = "HTTP check";
      break;
  }
  if (cluster.outlier) {
    settings.consecutive_failures = cluster.outlier->consecutive_failures;
    settings.ejection_time = cluster.outlier->ejection_time;
    settings.max_ejection_time = cluster.outlier->max_ejection_time;
  }
  return settings;
}

ColdStandbySettings ColdStandbySettingsFor(const conf::Cluster& cluster,
                                           const conf::Backend& backend) {
  ColdStandbySettings settings;
  settings.backend = backend.address.text;
  settings.activate = backend.activate;
  settings.deactivate = backend.deactivate;
  settings.checks = cluster.health.kind != conf::HealthCheck::Kind::kNone;
  settings.activate_timeout = cluster.activate_timeout;
  settings.check_timeout = cluster.health.timeout;
  settings.check_interval = cluster.health.interval;
  return settings;
}

bool IsCold(const conf::Backend& backend) {
  return backend.role == conf::Role::kBackup &&
         backend.standby == conf::Standby::kCold;
}

algorithms::Role RoleOf(conf::Role role) {
  return role == conf::Role::kBackup ? algorithms::Role::kBackup
                                     : algorithms::Role::kPrimary;
}

algorithms::Standby StandbyOf(conf::Standby standby) {
  switch (standby) {
    case conf::Standby::kHot:
      return algorithms::Standby::kHot;
    case conf::Standby::kWarm:
      return algorithms::Standby::kWarm;
    case conf::Standby::kCold:
      return algorithms::Standby::kCold;
  }
  return algorithms::Standby::kHot;
}

algorithms::PolicyOptions PolicyOptionsFor(const conf::Cluster& cluster,
                                           bool primaries_pending) {
  algorithms::PolicyOptions options;
  options.policy = cluster.policy == conf::Policy::kPrimaryBackup
                       ? algorithms::Policy::kPrimaryBackup
                       : algorithms::Policy::kAllActive;
  options.min_active = cluster.min_active;
  options.panic_threshold = primaries_pending ? 0.0 : cluster.panic_threshold;
  return options;
}

}  // namespace tandem::health
