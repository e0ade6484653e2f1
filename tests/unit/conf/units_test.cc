// Tests of the configuration value formats: durations, sizes, addresses.
#include "conf/units.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>

namespace tandem::conf {
namespace {

using std::chrono::milliseconds;

std::string DurationError(std::string_view text) {
  std::string error;
  CHECK_FALSE(ParseDuration(text, &error).has_value());
  return error;
}

std::string SizeError(std::string_view text) {
  std::string error;
  CHECK_FALSE(ParseSize(text, &error).has_value());
  return error;
}

std::string AddressError(std::string_view text,
                         PortZero port_zero = PortZero::kAllowed) {
  std::string error;
  CHECK_FALSE(ParseSocketAddress(text, port_zero, &error).has_value());
  return error;
}

TEST_CASE("durations take ms, s, m and h, decimals and sums of terms") {
  CHECK(ParseDuration("250ms", nullptr) == milliseconds(250));
  CHECK(ParseDuration("10s", nullptr) == milliseconds(10'000));
  CHECK(ParseDuration("1.5s", nullptr) == milliseconds(1'500));
  CHECK(ParseDuration("0.5m", nullptr) == milliseconds(30'000));
  CHECK(ParseDuration("2h", nullptr) == milliseconds(7'200'000));
  CHECK(ParseDuration("1m30s", nullptr) == milliseconds(90'000));
  CHECK(ParseDuration("1h0.5m", nullptr) == milliseconds(3'630'000));
  CHECK(ParseDuration("0s", nullptr) == milliseconds(0));
  CHECK(ParseDuration(".5s", nullptr) == milliseconds(500));
  CHECK(ParseDuration("8760h", nullptr) == milliseconds(8760LL * 3600 * 1000));
}

TEST_CASE("a duration without a unit is rejected with a hint at the unit") {
  CHECK(DurationError("10") ==
        "duration \"10\" needs a unit (ms, s, m or h), e.g. \"10s\"");
  CHECK(DurationError("1m30") ==
        "duration \"1m30\" needs a unit (ms, s, m or h), e.g. \"30s\"");
}

TEST_CASE("negative, empty and malformed durations are rejected") {
  CHECK(DurationError("-1s") == "a duration cannot be negative, got \"-1s\"");
  CHECK(DurationError("") ==
        "empty duration; write a number with a unit, e.g. \"10s\"");
  CHECK(DurationError("s") ==
        "bad duration \"s\": expected a number, e.g. \"10s\" or \"1.5s\"");
  CHECK(DurationError("10 s") == "bad duration \"10 s\": unexpected ' '");
  CHECK(DurationError("1.s.") ==
        "bad duration \"1.s.\": expected a number, e.g. \"10s\" or \"1.5s\"");
}

TEST_CASE("unknown duration units are named in the error") {
  CHECK(DurationError("10x") ==
        "unknown unit 'x' in duration \"10x\" (use ms, s, m or h)");
  CHECK(DurationError("5sec") ==
        "unknown unit 'sec' in duration \"5sec\" (use ms, s, m or h)");
  CHECK(DurationError("1d") ==
        "unknown unit 'd' in duration \"1d\" (use ms, s, m or h)");
  CHECK(DurationError("10us") ==
        "unknown unit 'us' in duration \"10us\" (use ms, s, m or h)");
}

TEST_CASE(
    "durations finer than a millisecond or longer than a year are rejected") {
  CHECK(DurationError("1.5ms") ==
        "duration \"1.5ms\" is finer than a millisecond");
  CHECK(DurationError("0.0001s") ==
        "duration \"0.0001s\" is finer than a millisecond");
  CHECK(DurationError("8761h") ==
        "duration \"8761h\" is too long (at most 8760h)");
  CHECK(DurationError("99999999999999999999s") ==
        "duration \"99999999999999999999s\" is too long (at most 8760h)");
  CHECK(DurationError("1.0000000001s") ==
        "too many decimals in duration \"1.0000000001s\"");
}

TEST_CASE("sizes are bytes or an integer with B, KiB, MiB or GiB") {
  CHECK(ParseSize("0", nullptr) == 0u);
  CHECK(ParseSize("1048576", nullptr) == 1048576u);
  CHECK(ParseSize("512B", nullptr) == 512u);
  CHECK(ParseSize("64KiB", nullptr) == 65536u);
  CHECK(ParseSize("1MiB", nullptr) == 1048576u);
  CHECK(ParseSize("2GiB", nullptr) == 2147483648u);
}

TEST_CASE("decimal units, fractions and negative sizes are rejected") {
  CHECK(SizeError("64KB") ==
        "unknown unit 'KB' in size \"64KB\" (use B, KiB, MiB or GiB; 1 KiB = "
        "1024 bytes)");
  CHECK(SizeError("1M") ==
        "unknown unit 'M' in size \"1M\" (use B, KiB, MiB or GiB; 1 KiB = 1024 "
        "bytes)");
  CHECK(SizeError("1.5MiB") ==
        "bad size \"1.5MiB\": use a whole number of units, e.g. \"1536KiB\"");
  CHECK(SizeError("-1") == "a size cannot be negative, got \"-1\"");
  CHECK(
      SizeError("KiB") ==
      "bad size \"KiB\": expected a whole number of bytes, B, KiB, MiB or GiB");
  CHECK(SizeError("") ==
        "empty size; write a number of bytes or e.g. \"64KiB\"");
  CHECK(SizeError("99999999999999999999") ==
        "size \"99999999999999999999\" is too large");
  CHECK(SizeError("17179869184GiB") == "size \"17179869184GiB\" is too large");
}

TEST_CASE("IP literal addresses are parsed and normalized") {
  auto v4 = ParseSocketAddress("127.0.0.1:9001", PortZero::kRejected, nullptr);
  REQUIRE(v4);
  CHECK(v4->text == "127.0.0.1:9001");
  CHECK(v4->host == "127.0.0.1");
  CHECK(v4->port() == 9001);
  CHECK(v4->storage.ss_family == AF_INET);
  CHECK(v4->length == sizeof(sockaddr_in));

  auto v6 = ParseSocketAddress("[0:0::1]:80", PortZero::kRejected, nullptr);
  REQUIRE(v6);
  CHECK(v6->text == "[::1]:80");
  CHECK(v6->host == "::1");
  CHECK(v6->port() == 80);
  CHECK(v6->storage.ss_family == AF_INET6);
  CHECK(v6->length == sizeof(sockaddr_in6));

  auto any = ParseSocketAddress("[::]:8080", PortZero::kAllowed, nullptr);
  REQUIRE(any);
  CHECK(any->text == "[::]:8080");
  CHECK(any->IsWildcard());
}

TEST_CASE("host names are resolved once and keep their name in the text") {
  auto address =
      ParseSocketAddress("LocalHost:8080", PortZero::kRejected, nullptr);
  REQUIRE(address);
  CHECK(address->text == "localhost:8080");
  CHECK(address->host == "localhost");
  CHECK(address->IsLoopback());
  CHECK(address->port() == 8080);
}

TEST_CASE("port 0 is accepted only where an ephemeral port makes sense") {
  auto listen = ParseSocketAddress("127.0.0.1:0", PortZero::kAllowed, nullptr);
  REQUIRE(listen);
  CHECK(listen->port() == 0);
  CHECK(AddressError("127.0.0.1:0", PortZero::kRejected) ==
        "port 0 is not allowed in \"127.0.0.1:0\" (expected 1..65535)");
}

TEST_CASE("malformed addresses are rejected with the reason") {
  CHECK(AddressError("127.0.0.1") ==
        "address \"127.0.0.1\" misses its port; write HOST:PORT, e.g. "
        "\"127.0.0.1:8080\"");
  CHECK(AddressError("::1:80") ==
        "IPv6 address in \"::1:80\" needs brackets, e.g. \"[::1]:8080\"");
  CHECK(AddressError("[::1]") ==
        "address \"[::1]\" misses its port, e.g. \"[::1]:8080\"");
  CHECK(AddressError("[::1:80") ==
        "address \"[::1:80\" misses the closing ']'");
  CHECK(AddressError("1.2.3.4:65536") ==
        "bad port '65536' in \"1.2.3.4:65536\" (expected 0..65535)");
  CHECK(AddressError("1.2.3.4:http", PortZero::kRejected) ==
        "bad port 'http' in \"1.2.3.4:http\" (expected 1..65535)");
  CHECK(AddressError("1.2.3.4:") ==
        "bad port '' in \"1.2.3.4:\" (expected 0..65535)");
  CHECK(AddressError(":80") ==
        "address \":80\" misses its host; use 0.0.0.0:PORT or [::]:PORT for "
        "every local "
        "address");
  CHECK(AddressError("300.0.0.1:80") ==
        "bad IPv4 address '300.0.0.1' in \"300.0.0.1:80\"");
  CHECK(AddressError("[::g]:80") == "bad IPv6 address '::g' in \"[::g]:80\"");
  CHECK(AddressError("http://example.com:80") ==
        "address \"http://example.com:80\" has a scheme; write HOST:PORT, e.g. "
        "\"127.0.0.1:8080\"");
  CHECK(AddressError("bad host:80") ==
        "bad host name 'bad host' in \"bad host:80\"");
  CHECK(AddressError("") ==
        "empty address; write HOST:PORT, e.g. \"127.0.0.1:8080\"");
}

TEST_CASE("an unresolvable host name is an error") {
  const std::string error = AddressError("no-such-host.invalid:80");
  CHECK(error.starts_with("cannot resolve host 'no-such-host.invalid': "));
}

}  // namespace
}  // namespace tandem::conf
