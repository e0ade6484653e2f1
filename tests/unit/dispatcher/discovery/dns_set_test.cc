// Tests of DnsSet: addresses join, vanish into their hold, come back, leave;
// and the backends they make (ports, weights, SRV priorities as roles).
#include "dispatcher/discovery/dns_set.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

namespace tandem::dispatcher {
namespace {

using std::chrono::seconds;
using Clock = DnsSet::Clock;

net::DnsAnswer Answer(std::vector<std::string> ips) {
  net::DnsAnswer answer;
  answer.ok = true;
  for (const std::string& ip : ips) {
    net::DnsRecord record;
    record.ip = ip;
    record.target = "w.test.";
    answer.records.push_back(record);
  }
  return answer;
}

conf::DnsSource Source(conf::DnsSource::Type type = conf::DnsSource::Type::kA) {
  conf::DnsSource source;
  source.name = "w.test.";
  source.type = type;
  source.port = 9001;
  source.backend.weight = 2;
  source.backend.source = source.Source();
  return source;
}

// "address:vanished" for each backend.
std::vector<std::string> Shown(const DnsSet& set,
                               const conf::Cluster& cluster = {}) {
  std::vector<std::string> out;
  for (const conf::Backend& backend : set.Backends(cluster, Source())) {
    out.push_back(backend.address.text + (backend.vanished ? ":held" : ""));
  }
  return out;
}

TEST_CASE("addresses join, are held when they vanish, and leave after hold") {
  DnsSet set;
  const Clock::time_point t0{};
  CHECK(set.OnAnswer(Answer({"10.0.0.2", "10.0.0.1"}), t0, seconds(30)));
  CHECK(Shown(set) ==
        std::vector<std::string>{"10.0.0.1:9001", "10.0.0.2:9001"});
  CHECK(set.current() == 2);
  CHECK_FALSE(set.NextExpiry());
  // The same answer again changes nothing.
  CHECK_FALSE(set.OnAnswer(Answer({"10.0.0.1", "10.0.0.2"}), t0, seconds(30)));

  CHECK(set.OnAnswer(Answer({"10.0.0.2"}), t0 + seconds(1), seconds(30)));
  CHECK(Shown(set) ==
        std::vector<std::string>{"10.0.0.1:9001:held", "10.0.0.2:9001"});
  CHECK(set.current() == 1);
  CHECK(set.held() == 1);
  REQUIRE(set.NextExpiry());
  CHECK(*set.NextExpiry() == t0 + seconds(31));
  // Still gone: the hold runs from when it vanished, not from each answer.
  CHECK_FALSE(set.OnAnswer(Answer({"10.0.0.2"}), t0 + seconds(5), seconds(30)));
  CHECK(*set.NextExpiry() == t0 + seconds(31));
  CHECK_FALSE(set.Expire(t0 + seconds(30)));
  CHECK(set.Expire(t0 + seconds(31)));
  CHECK(Shown(set) == std::vector<std::string>{"10.0.0.2:9001"});
  CHECK_FALSE(set.NextExpiry());
}

TEST_CASE("a held address that comes back is no longer held") {
  DnsSet set;
  const Clock::time_point t0{};
  set.OnAnswer(Answer({"10.0.0.1", "10.0.0.2"}), t0, seconds(30));
  set.OnAnswer(Answer({"10.0.0.2"}), t0, seconds(30));
  CHECK(set.OnAnswer(Answer({"10.0.0.1", "10.0.0.2"}), t0 + seconds(2),
                     seconds(30)));
  CHECK(Shown(set) ==
        std::vector<std::string>{"10.0.0.1:9001", "10.0.0.2:9001"});
  CHECK_FALSE(set.NextExpiry());
}

TEST_CASE("with hold = 0 a vanished address leaves at once") {
  DnsSet set;
  set.OnAnswer(Answer({"10.0.0.1", "10.0.0.2"}), {}, seconds(0));
  CHECK(set.OnAnswer(Answer({"10.0.0.1"}), {}, seconds(0)));
  CHECK(Shown(set) == std::vector<std::string>{"10.0.0.1:9001"});
}

TEST_CASE("A and AAAA backends take the entry's settings and name for SNI") {
  DnsSet set;
  set.OnAnswer(Answer({"2001:db8::5"}), {}, seconds(1));
  const std::vector<conf::Backend> backends = set.Backends({}, Source());
  REQUIRE(backends.size() == 1);
  CHECK(backends[0].address.text == "[2001:db8::5]:9001");
  CHECK(backends[0].address.host == "w.test");
  CHECK(backends[0].weight == 2);
  CHECK(backends[0].source == "dns:w.test.");
}

TEST_CASE("SRV: port and weight from the record, lowest priority primary") {
  net::DnsAnswer answer;
  answer.ok = true;
  const auto add = [&](const char* ip, uint16_t port, uint16_t priority,
                       uint16_t weight) {
    net::DnsRecord record;
    record.ip = ip;
    record.target = "t.test.";
    record.port = port;
    record.priority = priority;
    record.weight = weight;
    answer.records.push_back(record);
  };
  add("10.0.0.1", 8001, 10, 0);
  add("10.0.0.1", 8002, 10, 3000);
  add("10.0.0.2", 8003, 20, 5);
  add("10.0.0.3", 0, 10, 5);  // no port: not a backend
  DnsSet set;
  set.OnAnswer(answer, {}, seconds(1));
  conf::Cluster cluster;
  cluster.policy = conf::Policy::kPrimaryBackup;
  const conf::DnsSource srv = Source(conf::DnsSource::Type::kSrv);
  std::vector<conf::Backend> backends = set.Backends(cluster, srv);
  REQUIRE(backends.size() == 3);
  CHECK(backends[0].address.text == "10.0.0.1:8001");
  CHECK(backends[0].weight == 1);  // SRV weight 0
  CHECK(backends[0].role == conf::Role::kPrimary);
  CHECK(backends[1].address.text == "10.0.0.1:8002");
  CHECK(backends[1].weight == 256);  // capped
  CHECK(backends[2].address.text == "10.0.0.2:8003");
  CHECK(backends[2].weight == 5);
  CHECK(backends[2].role == conf::Role::kBackup);
  CHECK(backends[2].standby == conf::Standby::kHot);

  cluster.policy = conf::Policy::kAllActive;
  backends = set.Backends(cluster, srv);
  CHECK(backends[2].role == conf::Role::kPrimary);
}

}  // namespace
}  // namespace tandem::dispatcher
