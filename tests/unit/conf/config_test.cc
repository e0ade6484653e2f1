// Tests of the Config helpers: address classification and cluster lookup.
#include "conf/config.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

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

Cidr Block(std::string_view text) {
  Cidr block;
  REQUIRE(Cidr::Parse(text, &block));
  return block;
}

TEST_CASE("an address block holds the addresses its prefix covers") {
  const Cidr ten = Block("10.0.0.0/8");
  CHECK(ten.Contains(Address("10.255.1.2:1").sa()));
  CHECK_FALSE(ten.Contains(Address("11.0.0.1:1").sa()));
  // An IPv4-mapped IPv6 peer (a [::] listener) is matched as IPv4.
  CHECK(ten.Contains(Address("[::ffff:10.1.2.3]:1").sa()));
  CHECK_FALSE(ten.Contains(Address("[2001:db8::1]:1").sa()));
  // Host bits written in the block are ignored; /12 is not a byte boundary.
  const Cidr twelve = Block("172.31.255.255/12");
  CHECK(twelve.Contains(Address("172.16.0.1:1").sa()));
  CHECK_FALSE(twelve.Contains(Address("172.32.0.1:1").sa()));
  CHECK(Block("0.0.0.0/0").Contains(Address("203.0.113.9:1").sa()));
  CHECK(Block("192.0.2.7").Contains(Address("192.0.2.7:1").sa()));
  CHECK_FALSE(Block("192.0.2.7").Contains(Address("192.0.2.8:1").sa()));
  const Cidr v6 = Block("2001:db8::/32");
  CHECK(v6.Contains(Address("[2001:db8:ffff::1]:1").sa()));
  CHECK_FALSE(v6.Contains(Address("[2001:db9::1]:1").sa()));
  CHECK_FALSE(v6.Contains(Address("10.0.0.1:1").sa()));
  for (const char* bad : {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x",
                          "10.0.0/8", "example.com/8", "", "/8"}) {
    CAPTURE(bad);
    Cidr block;
    CHECK_FALSE(Cidr::Parse(bad, &block));
  }
}

TEST_CASE("the default trusted proxies are loopback only") {
  const std::vector<Cidr> blocks = Listener::DefaultTrustedProxies();
  auto trusted = [&](std::string_view address) {
    return std::any_of(blocks.begin(), blocks.end(), [&](const Cidr& block) {
      return block.Contains(Address(address).sa());
    });
  };
  CHECK(trusted("127.0.0.1:1"));
  CHECK(trusted("127.9.9.9:1"));
  CHECK(trusted("[::1]:1"));
  CHECK_FALSE(trusted("192.0.2.1:1"));
  CHECK_FALSE(trusted("[::2]:1"));
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
