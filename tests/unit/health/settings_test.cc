// Unit tests for what health/ takes from a cluster's config.
#include "health/settings.h"

#include <doctest/doctest.h>

namespace tandem::health {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

conf::Cluster Cluster() {
  conf::Cluster cluster;
  cluster.health.kind = conf::HealthCheck::Kind::kTcp;
  cluster.health.rise = 4;
  cluster.health.fall = 5;
  cluster.health.interval = seconds(3);
  cluster.health.timeout = milliseconds(800);
  cluster.slow_start = seconds(10);
  cluster.activate_timeout = seconds(20);
  cluster.policy = conf::Policy::kPrimaryBackup;
  cluster.min_active = 2;
  cluster.panic_threshold = 0.5;
  return cluster;
}

}  // namespace

TEST_CASE("a cluster's config gives each backend's health settings") {
  conf::Cluster cluster = Cluster();
  HealthSettings settings = HealthSettingsFor(cluster);
  CHECK(settings.checks);
  CHECK(settings.rise == 4);
  CHECK(settings.fall == 5);
  CHECK(settings.slow_start == seconds(10));
  CHECK(settings.check_name == "TCP check");
  CHECK(settings.consecutive_failures == 0);  // no [outlier]: off

  cluster.health.kind = conf::HealthCheck::Kind::kHttp;
  cluster.outlier = conf::Outlier{};
  cluster.outlier->consecutive_failures = 7;
  cluster.outlier->ejection_time = seconds(5);
  cluster.outlier->max_ejection_time = seconds(50);
  settings = HealthSettingsFor(cluster);
  CHECK(settings.check_name == "HTTP check");
  CHECK(settings.consecutive_failures == 7);
  CHECK(settings.ejection_time == seconds(5));
  CHECK(settings.max_ejection_time == seconds(50));

  cluster.health.kind = conf::HealthCheck::Kind::kNone;
  CHECK_FALSE(HealthSettingsFor(cluster).checks);
}

TEST_CASE(
    "a cold backup's activation settings come from the backend and the "
    "cluster's check") {
  conf::Cluster cluster = Cluster();
  conf::Backend backend;
  backend.address.text = "127.0.0.1:9003";
  backend.role = conf::Role::kBackup;
  backend.standby = conf::Standby::kCold;
  backend.activate = "start";
  backend.deactivate = "stop";
  CHECK(IsCold(backend));
  ColdStandbySettings settings = ColdStandbySettingsFor(cluster, backend);
  CHECK(settings.backend == "127.0.0.1:9003");
  CHECK(settings.activate == "start");
  CHECK(settings.deactivate == "stop");
  CHECK(settings.checks);
  CHECK(settings.activate_timeout == seconds(20));
  CHECK(settings.check_timeout == milliseconds(800));
  CHECK(settings.check_interval == seconds(3));

  backend.standby = conf::Standby::kWarm;
  CHECK_FALSE(IsCold(backend));
  backend.role = conf::Role::kPrimary;
  backend.standby = conf::Standby::kCold;  // meaningless for a primary
  CHECK_FALSE(IsCold(backend));
}

TEST_CASE("panic is off until every primary was checked once") {
  conf::Cluster cluster = Cluster();
  algorithms::PolicyOptions options = PolicyOptionsFor(cluster, false);
  CHECK(options.policy == algorithms::Policy::kPrimaryBackup);
  CHECK(options.min_active == 2);
  CHECK(options.panic_threshold == 0.5);
  CHECK(PolicyOptionsFor(cluster, true).panic_threshold == 0.0);

  cluster.policy = conf::Policy::kAllActive;
  CHECK(PolicyOptionsFor(cluster, false).policy ==
        algorithms::Policy::kAllActive);
}

TEST_CASE("roles and standby temperatures map one to one") {
  CHECK(RoleOf(conf::Role::kPrimary) == algorithms::Role::kPrimary);
  CHECK(RoleOf(conf::Role::kBackup) == algorithms::Role::kBackup);
  CHECK(StandbyOf(conf::Standby::kHot) == algorithms::Standby::kHot);
  CHECK(StandbyOf(conf::Standby::kWarm) == algorithms::Standby::kWarm);
  CHECK(StandbyOf(conf::Standby::kCold) == algorithms::Standby::kCold);
}

}  // namespace tandem::health
