// What health/ publishes; see snapshot.h.
#include "health/snapshot.h"

namespace tandem::health {

bool RoutingDiffers(const HealthSnapshot& a, const HealthSnapshot& b) {
  if (a.clusters.size() != b.clusters.size()) return true;
  for (size_t c = 0; c < a.clusters.size(); ++c) {
    const ClusterStatus& x = a.clusters[c];
    const ClusterStatus& y = b.clusters[c];
    if (x.name != y.name || x.panic != y.panic ||
        x.backends.size() != y.backends.size()) {
      return true;
    }
    for (size_t i = 0; i < x.backends.size(); ++i) {
      if (x.views[i].eligible != y.views[i].eligible ||
          x.views[i].weight != y.views[i].weight ||
          x.backends[i].state != y.backends[i].state ||
          x.backends[i].activation != y.backends[i].activation) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace tandem::health
