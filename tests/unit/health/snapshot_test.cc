// Unit tests for when a snapshot must reach the loops.
#include "health/snapshot.h"

#include <doctest/doctest.h>

namespace tandem::health {
namespace {

// One cluster of two backends, both up and eligible.
HealthSnapshot Snapshot() {
  HealthSnapshot snapshot;
  ClusterStatus cluster;
  cluster.name = "compute";
  for (const char* address : {"127.0.0.1:9001", "127.0.0.1:9002"}) {
    BackendStatus backend;
    backend.address = address;
    backend.state = BackendState::kUp;
    backend.active = true;
    cluster.backends.push_back(backend);
    algorithms::BackendView view;
    view.eligible = true;
    cluster.views.push_back(view);
  }
  snapshot.clusters.push_back(cluster);
  return snapshot;
}

}  // namespace

TEST_CASE(
    "loops need a snapshot when eligibility, a weight, a state, an "
    "activation or panic changed") {
  const HealthSnapshot before = Snapshot();
  CHECK_FALSE(RoutingDiffers(before, Snapshot()));

  HealthSnapshot after = Snapshot();
  after.clusters[0].views[1].eligible = false;
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters[0].views[0].weight /= 2;
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters[0].backends[1].state = BackendState::kSlowStart;
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters[0].backends[1].activation = algorithms::Activation::kActive;
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters[0].panic = true;
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters[0].name = "other";
  CHECK(RoutingDiffers(before, after));

  after = Snapshot();
  after.clusters.push_back(after.clusters[0]);
  CHECK(RoutingDiffers(before, after));
}

TEST_CASE("counters, checks and events alone do not make loops rebuild") {
  const HealthSnapshot before = Snapshot();
  HealthSnapshot after = Snapshot();
  after.version = 7;
  after.clusters[0].backends[0].checks_passed = 10;
  after.clusters[0].backends[0].last_check = "HTTP 200";
  after.clusters[0].backends[0].refused_recently = true;
  after.clusters[0].events.push_back({1000, "backup promoted"});
  CHECK_FALSE(RoutingDiffers(before, after));
}

}  // namespace tandem::health
