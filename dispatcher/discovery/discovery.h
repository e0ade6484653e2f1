// DNS discovery: every [[clusters.NAME.dns]] entry is looked up on the
// control loop, then again at min(TTL, refresh) — or failure_refresh after a
// failed lookup, which keeps the last good set. What the answers hold becomes
// backends of their cluster, merged into the file's config; a change calls
// `changed`, and the server applies the merged config as it applies a reload
// (docs/discovery.md).
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "algorithms/rng.h"
#include "conf/config.h"
#include "dispatcher/discovery/dns_set.h"
#include "net/dns_resolver.h"
#include "net/event_ptr.h"

namespace tandem::dispatcher {

class Discovery {
 public:
  // `changed` runs on `base`'s thread after any source's set changed.
  Discovery(event_base* base, std::function<void()> changed);
  ~Discovery();
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  // Follows `config`'s dns entries: a source asking the same question of the
  // same servers keeps what it found (its settings follow the new entry);
  // new ones start looking; the others stop. False with `error` when a
  // resolver cannot start.
  bool Follow(const conf::Config& config, std::string* error);
  // `file` with each cluster's found backends appended; an address already
  // in the cluster (written, or found by an earlier entry) is not added
  // twice.
  std::shared_ptr<const conf::Config> Merge(
      const std::shared_ptr<const conf::Config>& file) const;
  // Every source has finished its first lookup (well or not).
  bool Settled() const;

  struct SourceStatus {
    std::string cluster;
    std::string name;
    uint64_t lookups_ok = 0;
    uint64_t lookups_failed = 0;
    size_t current = 0;  // addresses in the last good answer
    size_t held = 0;     // gone from it, draining
    std::string last_error;
  };
  std::vector<SourceStatus> Status() const;

 private:
  struct Source;
  static void TimerCb(evutil_socket_t, short, void* arg);
  void Ask(Source& source);
  void OnAnswer(Source& source, net::DnsAnswer answer);
  void Schedule(Source& source);

  event_base* base_;
  std::function<void()> changed_;
  std::vector<std::unique_ptr<Source>> sources_;
  algorithms::Rng rng_;
};

}  // namespace tandem::dispatcher
