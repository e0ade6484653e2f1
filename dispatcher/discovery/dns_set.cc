#include "dispatcher/discovery/dns_set.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "conf/units.h"

namespace tandem::dispatcher {
namespace {

std::string KeyOf(const net::DnsRecord& record) {
  return record.ip + "|" + std::to_string(record.port);
}

bool SameRecord(const net::DnsRecord& a, const net::DnsRecord& b) {
  return a.ip == b.ip && a.port == b.port && a.target == b.target &&
         a.priority == b.priority && a.weight == b.weight;
}

}  // namespace

bool DnsSet::OnAnswer(const net::DnsAnswer& answer, Clock::time_point now,
                      conf::Duration hold) {
  bool changed = false;
  std::map<std::string, Entry> next;
  for (const net::DnsRecord& record : answer.records) {
    const std::string key = KeyOf(record);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.held_until ||
        !SameRecord(it->second.record, record)) {
      changed = true;
    }
    next[key] = Entry{record, std::nullopt};
  }
  for (auto& [key, entry] : entries_) {
    if (next.count(key) != 0) continue;
    if (!entry.held_until) {
      changed = true;
      if (hold.count() == 0) continue;
      entry.held_until = now + hold;
    }
    next.emplace(key, std::move(entry));
  }
  entries_ = std::move(next);
  return changed;
}

bool DnsSet::Expire(Clock::time_point now) {
  return std::erase_if(entries_, [&](const auto& item) {
           return item.second.held_until && *item.second.held_until <= now;
         }) > 0;
}

std::optional<DnsSet::Clock::time_point> DnsSet::NextExpiry() const {
  std::optional<Clock::time_point> first;
  for (const auto& [key, entry] : entries_) {
    if (entry.held_until && (!first || *entry.held_until < *first)) {
      first = entry.held_until;
    }
  }
  return first;
}

size_t DnsSet::current() const {
  return static_cast<size_t>(
      std::count_if(entries_.begin(), entries_.end(),
                    [](const auto& item) { return !item.second.held_until; }));
}

std::vector<conf::Backend> DnsSet::Backends(
    const conf::Cluster& cluster, const conf::DnsSource& source) const {
  const bool srv = source.type == conf::DnsSource::Type::kSrv;
  uint16_t lowest = std::numeric_limits<uint16_t>::max();
  for (const auto& [key, entry] : entries_) {
    if (!entry.held_until) lowest = std::min(lowest, entry.record.priority);
  }
  std::vector<conf::Backend> backends;
  for (const auto& [key, entry] : entries_) {
    const net::DnsRecord& record = entry.record;
    const uint16_t port = srv ? record.port : source.port;
    const bool v6 = record.ip.find(':') != std::string::npos;
    const std::string text =
        (v6 ? "[" + record.ip + "]" : record.ip) + ":" + std::to_string(port);
    std::optional<conf::SocketAddress> address =
        conf::ParseSocketAddress(text, conf::PortZero::kRejected, nullptr);
    if (!address) continue;  // port 0 from an SRV record
    conf::Backend backend = source.backend;
    // TLS towards it names the DNS name it was found under (SNI).
    std::string host = record.target;
    if (host.ends_with('.')) host.pop_back();
    address->host = host;
    backend.address = std::move(*address);
    backend.vanished = entry.held_until.has_value();
    if (srv) {
      backend.weight = std::clamp<uint32_t>(record.weight, 1, 256);
      const bool backup = cluster.policy == conf::Policy::kPrimaryBackup &&
                          record.priority > lowest;
      backend.role = backup ? conf::Role::kBackup : conf::Role::kPrimary;
      backend.standby = conf::Standby::kHot;
    }
    backends.push_back(std::move(backend));
  }
  return backends;
}

}  // namespace tandem::dispatcher
