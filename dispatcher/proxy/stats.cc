// Per-thread counters; see stats.h.
#include "dispatcher/proxy/stats.h"

namespace tandem::dispatcher {

BackendStats* LoopStats::Backend(const std::string& cluster,
                                 const std::string& address) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = backends_[{cluster, address}];
  if (!slot) slot = std::make_unique<BackendStats>();
  return slot.get();
}

ClusterStats* LoopStats::Cluster(const std::string& cluster) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = clusters_[cluster];
  if (!slot) slot = std::make_unique<ClusterStats>();
  return slot.get();
}

ListenerStats* LoopStats::Listener(const std::string& listener) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = listeners_[listener];
  if (!slot) slot = std::make_unique<ListenerStats>();
  return slot.get();
}

void LoopStats::VisitBackends(
    const std::function<void(const std::string&, const std::string&,
                             const BackendStats&)>& fn) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [key, stats] : backends_) fn(key.first, key.second, *stats);
}

void LoopStats::VisitClusters(
    const std::function<void(const std::string&, const ClusterStats&)>& fn)
    const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, stats] : clusters_) fn(name, *stats);
}

void LoopStats::VisitListeners(
    const std::function<void(const std::string&, const ListenerStats&)>& fn)
    const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, stats] : listeners_) fn(name, *stats);
}

}  // namespace tandem::dispatcher
