// Tests of [[clusters.NAME.dns]]: the values read, the defaults, and each
// error with its key.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "conf/load.h"

namespace tandem::conf {
namespace {

using std::chrono::milliseconds;

constexpr std::string_view kHead = R"([listeners.web]
listen = "127.0.0.1:8080"
cluster = "compute"
[clusters.compute]
)";

LoadResult Load(std::string_view cluster) {
  return ParseConfig(std::string(kHead) + std::string(cluster), "t.toml");
}

// The first error's "key: message" without its position.
std::string FirstError(std::string_view cluster) {
  LoadResult result = Load(cluster);
  REQUIRE_FALSE(result.errors.empty());
  return result.errors[0].key + ": " + result.errors[0].message;
}

TEST_CASE("a cluster may take its backends from DNS alone; defaults") {
  LoadResult result = Load(R"([[clusters.compute.dns]]
name = "workers.default.svc.cluster.local."
port = 9001
)");
  INFO((result.errors.empty() ? std::string() : result.errors[0].ToString()));
  REQUIRE(result.ok());
  const Cluster& cluster = result.config->clusters[0];
  CHECK(cluster.backends.empty());
  REQUIRE(cluster.dns.size() == 1);
  const DnsSource& dns = cluster.dns[0];
  CHECK(dns.name == "workers.default.svc.cluster.local.");
  CHECK(dns.type == DnsSource::Type::kA);
  CHECK(dns.port == 9001);
  CHECK(dns.refresh == milliseconds(5000));
  CHECK(dns.failure_refresh == milliseconds(1000));
  CHECK(dns.hold == milliseconds(30000));
  CHECK(dns.servers.empty());
  CHECK(dns.backend.weight == 1);
  CHECK(dns.backend.role == Role::kPrimary);
  CHECK(dns.backend.source == "dns:workers.default.svc.cluster.local.");
  CHECK(dns.Source() == "dns:workers.default.svc.cluster.local.");
}

TEST_CASE("every key of a dns entry is read") {
  LoadResult result = Load(R"(policy = "primary-backup"
[[clusters.compute.backends]]
address = "127.0.0.1:9000"
[[clusters.compute.dns]]
name = "backups.test"
type = "AAAA"
port = 8443
weight = 7
role = "backup"
standby = "warm"
max_inflight = 4
max_connections = 9
refresh = "2s"
failure_refresh = "250ms"
hold = "0s"
servers = ["10.0.0.10", "127.0.0.1:5353", "::1", "[2001:db8::1]:5300"]
[[clusters.compute.dns]]
name = "_http._tcp.workers.test."
type = "SRV"
)");
  INFO((result.errors.empty() ? std::string() : result.errors[0].ToString()));
  REQUIRE(result.ok());
  const Cluster& cluster = result.config->clusters[0];
  REQUIRE(cluster.dns.size() == 2);
  const DnsSource& a = cluster.dns[0];
  CHECK(a.type == DnsSource::Type::kAaaa);
  CHECK(a.port == 8443);
  CHECK(a.backend.weight == 7);
  CHECK(a.backend.role == Role::kBackup);
  CHECK(a.backend.standby == Standby::kWarm);
  CHECK(a.backend.max_inflight == 4);
  CHECK(a.backend.max_connections == 9);
  CHECK(a.refresh == milliseconds(2000));
  CHECK(a.failure_refresh == milliseconds(250));
  CHECK(a.hold == milliseconds(0));
  std::vector<std::string> servers;
  for (const SocketAddress& server : a.servers) servers.push_back(server.text);
  CHECK(servers == std::vector<std::string>{"10.0.0.10:53", "127.0.0.1:5353",
                                            "[::1]:53", "[2001:db8::1]:5300"});
  CHECK(cluster.dns[1].type == DnsSource::Type::kSrv);
  CHECK(cluster.dns[1].port == 0);
}

TEST_CASE("dns entries: each mistake names its key") {
  CHECK(FirstError(R"([[clusters.compute.dns]]
port = 80
)") == "clusters.compute.dns[0].name: a dns entry needs the name to look up");
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "workers.test"
)") == "clusters.compute.dns[0].port: A and AAAA records need the backends' "
       "port");
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "workers.test"
type = "MX"
port = 80
)")
            .starts_with("clusters.compute.dns[0].type: unknown record type "
                         "\"MX\""));
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "_w._tcp.test"
type = "SRV"
port = 80
)")
            .starts_with("clusters.compute.dns[0].port: SRV records carry the "
                         "port"));
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "bad name!"
port = 80
)") == "clusters.compute.dns[0].name: not a DNS name: \"bad name!\"");
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "a..b"
port = 80
)") == "clusters.compute.dns[0].name: not a DNS name: \"a..b\"");
  CHECK(FirstError(R"(policy = "primary-backup"
[[clusters.compute.dns]]
name = "w.test"
port = 80
role = "backup"
standby = "cold"
)")
            .starts_with("clusters.compute.dns[0].standby: a cold backup needs "
                         "its own activate command"));
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "w.test"
port = 80
role = "backup"
)")
            .starts_with("clusters.compute.dns[0].role: backups take traffic "
                         "only with policy = \"primary-backup\""));
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "w.test"
port = 80
servers = ["ns.example.com:53"]
)")
            .starts_with("clusters.compute.dns[0].servers[0]: bad name server "
                         "\"ns.example.com:53\""));
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "w.test"
port = 80
servers = []
)") == "clusters.compute.dns[0].servers: name at least one server");
  CHECK(FirstError(R"([[clusters.compute.dns]]
name = "w.test"
port = 80
[[clusters.compute.dns]]
name = "w.test"
port = 81
)") == "clusters.compute.dns[1].name: the same name and type as "
       "clusters.compute.dns[0]");
  CHECK(FirstError("retries = 1\n")
            .starts_with("clusters.compute.backends: a cluster needs at least "
                         "one backend ([[clusters.compute.backends]]) or a "
                         "DNS name to find them ([[clusters.compute.dns]])"));
}

TEST_CASE("SameLookup: the question and the servers, not the settings") {
  DnsSource a;
  a.name = "w.test";
  DnsSource b = a;
  b.refresh = milliseconds(1);
  b.port = 99;
  CHECK(a.SameLookup(b));
  b.type = DnsSource::Type::kAaaa;
  CHECK_FALSE(a.SameLookup(b));
  b = a;
  b.servers.emplace_back();
  CHECK_FALSE(a.SameLookup(b));
}

}  // namespace
}  // namespace tandem::conf
