// What one DNS source has found: the addresses of its last good answer, and
// those gone from it that are held (draining) until their hold ends. Pure:
// time is passed in (docs/discovery.md).
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "net/dns_resolver.h"

namespace tandem::dispatcher {

class DnsSet {
 public:
  using Clock = std::chrono::steady_clock;

  // A good answer at `now`: addresses new to the set join it, addresses
  // missing from it start their hold (or leave at once with a zero hold),
  // held ones that are back stop being held. True when the backends changed.
  // A failed answer must not reach this: the set stays as it was.
  bool OnAnswer(const net::DnsAnswer& answer, Clock::time_point now,
                conf::Duration hold);
  // Drops held addresses whose hold has ended by `now`; true when any left.
  bool Expire(Clock::time_point now);
  // When the first hold ends; nullopt when nothing is held.
  std::optional<Clock::time_point> NextExpiry() const;

  // The backends for `cluster` from `source`, in address order. SRV records
  // give the port and weight (0 counts as 1); in a primary-backup cluster
  // the lowest priority of the answer is primary and the others are hot
  // backups, in an all-active one every record is primary.
  std::vector<conf::Backend> Backends(const conf::Cluster& cluster,
                                      const conf::DnsSource& source) const;
  // Addresses in the current answer (held ones not counted).
  size_t current() const;
  size_t held() const { return entries_.size() - current(); }

 private:
  struct Entry {
    net::DnsRecord record;
    std::optional<Clock::time_point> held_until;
  };
  // By "ip|port", so one address with two ports is two backends.
  std::map<std::string, Entry> entries_;
};

}  // namespace tandem::dispatcher
