#include "dispatcher/discovery/discovery.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <utility>

#include "net/log.h"
#include "net/posix.h"

namespace tandem::dispatcher {

using net::Log;
using net::LogLevel;
using Clock = DnsSet::Clock;

struct Discovery::Source {
  Discovery* owner = nullptr;
  std::string cluster;
  conf::DnsSource config;
  std::unique_ptr<net::DnsResolver> resolver;
  net::EventPtr timer;
  DnsSet set;
  bool asking = false;
  bool settled = false;
  Clock::time_point next_lookup{};
  uint64_t lookups_ok = 0;
  uint64_t lookups_failed = 0;
  std::string last_error;
};

namespace {

net::DnsType TypeOf(conf::DnsSource::Type type) {
  switch (type) {
    case conf::DnsSource::Type::kA:
      return net::DnsType::kA;
    case conf::DnsSource::Type::kAaaa:
      return net::DnsType::kAaaa;
    case conf::DnsSource::Type::kSrv:
      return net::DnsType::kSrv;
  }
  return net::DnsType::kA;
}

}  // namespace

Discovery::Discovery(event_base* base, std::function<void()> changed)
    : base_(base),
      changed_(std::move(changed)),
      rng_(static_cast<uint64_t>(Clock::now().time_since_epoch().count())) {}

Discovery::~Discovery() = default;

bool Discovery::Follow(const conf::Config& config, std::string* error) {
  // Matched against the running sources first, so that a resolver that
  // cannot start leaves everything as it was.
  struct Slot {
    const conf::Cluster* cluster;
    const conf::DnsSource* entry;
    std::unique_ptr<Source>* kept;  // into sources_, or null
    std::unique_ptr<Source> started;
  };
  std::vector<Slot> slots;
  for (const conf::Cluster& cluster : config.clusters) {
    for (const conf::DnsSource& entry : cluster.dns) {
      Slot slot{&cluster, &entry, nullptr, nullptr};
      for (auto& source : sources_) {
        const bool taken =
            std::any_of(slots.begin(), slots.end(),
                        [&](const Slot& s) { return s.kept == &source; });
        if (!taken && source->cluster == cluster.name &&
            source->config.SameLookup(entry)) {
          slot.kept = &source;
          break;
        }
      }
      if (slot.kept == nullptr) {
        auto source = std::make_unique<Source>();
        source->owner = this;
        source->cluster = cluster.name;
        std::vector<std::string> servers;
        for (const conf::SocketAddress& server : entry.servers) {
          servers.push_back(server.text);
        }
        source->resolver = net::DnsResolver::Create(base_, servers, error);
        if (!source->resolver) return false;
        source->timer.reset(evtimer_new(base_, TimerCb, source.get()));
        slot.started = std::move(source);
      }
      slots.push_back(std::move(slot));
    }
  }
  std::vector<std::unique_ptr<Source>> next;
  for (Slot& slot : slots) {
    std::unique_ptr<Source> source =
        slot.kept != nullptr ? std::move(*slot.kept) : std::move(slot.started);
    source->config = *slot.entry;
    next.push_back(std::move(source));
  }
  sources_ = std::move(next);
  for (auto& source : sources_) {
    if (!source->asking && !source->settled) Ask(*source);
  }
  return true;
}

void Discovery::Ask(Source& source) {
  source.asking = true;
  // The resolver is the source's: when the source goes, its lookups end
  // without calling back.
  Source* asking = &source;
  source.resolver->Lookup(source.config.name, TypeOf(source.config.type),
                          [asking](net::DnsAnswer answer) {
                            asking->owner->OnAnswer(*asking, std::move(answer));
                          });
}

void Discovery::OnAnswer(Source& source, net::DnsAnswer answer) {
  source.asking = false;
  source.settled = true;
  const Clock::time_point now = Clock::now();
  const conf::DnsSource& config = source.config;
  conf::Duration wait = config.failure_refresh;
  bool changed = false;
  if (answer.ok) {
    ++source.lookups_ok;
    if (!source.last_error.empty()) {
      Log(LogLevel::kInfo, "discovery", "DNS lookups answer again",
          {{"cluster", source.cluster},
           {"name", config.name},
           {"addresses", answer.records.size()}});
    }
    source.last_error.clear();
    const size_t before = source.set.current();
    changed = source.set.OnAnswer(answer, now, config.hold);
    // At most refresh, at most the TTL, at least a second (or refresh when
    // shorter): a TTL of 0 must not turn into a query loop.
    const conf::Duration ttl = std::chrono::seconds(answer.ttl_seconds);
    const conf::Duration floor =
        std::min<conf::Duration>(std::chrono::seconds(1), config.refresh);
    wait = std::max(floor, std::min(config.refresh, ttl));
    if (changed) {
      Log(LogLevel::kInfo, "discovery", "DNS answer changed",
          {{"cluster", source.cluster},
           {"name", config.name},
           {"addresses", source.set.current()},
           {"before", before},
           {"held", source.set.held()},
           {"ttl_s", answer.ttl_seconds}});
    }
    if (answer.truncated) {
      Log(LogLevel::kWarn, "discovery",
          "DNS answer larger than tandem takes; the rest is ignored",
          {{"cluster", source.cluster},
           {"name", config.name},
           {"max_records", net::DnsResolver::kMaxRecords}});
    }
  } else {
    ++source.lookups_failed;
    if (source.last_error != answer.error) {
      Log(LogLevel::kWarn, "discovery",
          "DNS lookup failed; the last good answer stays",
          {{"cluster", source.cluster},
           {"name", config.name},
           {"error", answer.error},
           {"addresses", source.set.current()}});
    }
    source.last_error = answer.error;
  }
  // Up to 10 % earlier, so that sources do not ask in step.
  const auto jitter =
      conf::Duration(rng_.Below(static_cast<uint64_t>(wait.count() / 10) + 1));
  source.next_lookup = now + wait - jitter;
  Schedule(source);
  if (changed) changed_();
}

void Discovery::Schedule(Source& source) {
  // The next lookup (none while one is out: its answer schedules the next)
  // or the first hold to end, whichever comes first.
  std::optional<Clock::time_point> at = source.set.NextExpiry();
  if (!source.asking)
    at = std::min(at.value_or(source.next_lookup), source.next_lookup);
  if (!at) return;
  timeval tv = net::ToTimeval(*at - Clock::now());
  evtimer_add(source.timer.get(), &tv);
}

void Discovery::TimerCb(evutil_socket_t, short, void* arg) {
  Source& source = *static_cast<Source*>(arg);
  Discovery& self = *source.owner;
  const Clock::time_point now = Clock::now();
  const bool expired = source.set.Expire(now);
  if (expired) {
    Log(LogLevel::kInfo, "discovery", "held addresses removed",
        {{"cluster", source.cluster},
         {"name", source.config.name},
         {"addresses", source.set.current()},
         {"held", source.set.held()}});
  }
  if (!source.asking && now >= source.next_lookup) self.Ask(source);
  self.Schedule(source);
  if (expired) self.changed_();
}

std::shared_ptr<const conf::Config> Discovery::Merge(
    const std::shared_ptr<const conf::Config>& file) const {
  if (sources_.empty()) return file;
  auto merged = std::make_shared<conf::Config>(*file);
  for (conf::Cluster& cluster : merged->clusters) {
    std::set<std::string> present;
    for (const conf::Backend& backend : cluster.backends) {
      present.insert(backend.address.text);
    }
    for (const auto& source : sources_) {
      if (source->cluster != cluster.name) continue;
      for (conf::Backend& backend :
           source->set.Backends(cluster, source->config)) {
        if (!present.insert(backend.address.text).second) continue;
        cluster.backends.push_back(std::move(backend));
      }
    }
  }
  return merged;
}

bool Discovery::Settled() const {
  return std::all_of(sources_.begin(), sources_.end(),
                     [](const auto& source) { return source->settled; });
}

std::vector<Discovery::SourceStatus> Discovery::Status() const {
  std::vector<SourceStatus> out;
  for (const auto& source : sources_) {
    out.push_back({source->cluster, source->config.name, source->lookups_ok,
                   source->lookups_failed, source->set.current(),
                   source->set.held(), source->last_error});
  }
  return out;
}

}  // namespace tandem::dispatcher
