// Tests of the Config helpers: address classification and cluster lookup.
#include "conf/config.h"

#include <doctest/doctest.h>

#include "conf/units.h"

namespace tandem::conf {
namespace {

SocketAddress Address(std::string_view text) {
  std::string error;
  std::optional<SocketAddress> address =
      ParseSocketAddress(text, PortZero::kAllowed, &error);
  INFO(error);
  REQUIRE(address);
  return *address;
}

TEST_CASE("loopback addresses are 127.0.0.0/8, ::1 and IPv4-mapped 127/8") {
  CHECK(Address("127.0.0.1:1").IsLoopback());
  CHECK(Address("127.3.2.1:1").IsLoopback());
  CHECK(Address("[::1]:1").IsLoopback());
  CHECK(Address("[::ffff:127.0.0.1]:1").IsLoopback());
  CHECK_FALSE(Address("10.0.0.1:1").IsLoopback());
  CHECK_FALSE(Address("0.0.0.0:1").IsLoopback());
  CHECK_FALSE(Address("[::]:1").IsLoopback());
  CHECK_FALSE(Address("[::ffff:10.0.0.1]:1").IsLoopback());
  CHECK_FALSE(SocketAddress{}.IsLoopback());
}

TEST_CASE("wildcard addresses are 0.0.0.0 and ::") {
  CHECK(Address("0.0.0.0:80").IsWildcard());
  CHECK(Address("[::]:80").IsWildcard());
  CHECK_FALSE(Address("127.0.0.1:80").IsWildcard());
  CHECK_FALSE(Address("[::1]:80").IsWildcard());
}

TEST_CASE("port is read back in host byte order, 0 for an empty address") {
  CHECK(Address("127.0.0.1:65535").port() == 65535);
  CHECK(Address("[::1]:443").port() == 443);
  CHECK(SocketAddress{}.port() == 0);
}

TEST_CASE("FindCluster finds a cluster by exact name, or returns null") {
  Config config;
  config.clusters.resize(2);
  config.clusters[0].name = "compute";
  config.clusters[1].name = "batch";
  REQUIRE(config.FindCluster("batch") != nullptr);
  CHECK(config.FindCluster("batch") == &config.clusters[1]);
  CHECK(config.FindCluster("compute") == &config.clusters[0]);
  CHECK(config.FindCluster("Compute") == nullptr);
  CHECK(config.FindCluster("") == nullptr);
}

}  // namespace
}  // namespace tandem::conf
