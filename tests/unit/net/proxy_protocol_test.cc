// The PROXY protocol header parser: every valid form, every prefix of one
// (a header split across TCP segments), and the malformed ones; and the
// headers tandem writes, read back by the parser.
#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>

#include <string>

namespace tandem::net {
namespace {

const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string AddressText(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (address.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

struct Parsed {
  ProxyParse result;
  ProxyHeader header;
  size_t length = 0;
  std::string error;
};

Parsed Parse(const std::string& data) {
  Parsed p;
  p.result = ParseProxyHeader(data, &p.header, &p.length, &p.error);
  return p;
}

// Every strict prefix needs more, and may all be consumed.
void CheckPrefixesNeedMore(const std::string& header) {
  for (size_t n = 0; n < header.size(); ++n) {
    Parsed p = Parse(header.substr(0, n));
    CAPTURE(n);
    CHECK(p.result == ProxyParse::kNeedMore);
    CHECK(p.length == n);
  }
}

std::string Be16(size_t v) {
  return std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xFF)};
}

std::string V2(uint8_t ver_cmd, uint8_t family, const std::string& block) {
  return kSignature +
         std::string{static_cast<char>(ver_cmd), static_cast<char>(family)} +
         Be16(block.size()) + block;
}

std::string Tlv(uint8_t type, const std::string& value) {
  return std::string{static_cast<char>(type)} + Be16(value.size()) + value;
}

// 192.0.2.1:51000 -> 198.51.100.7:443 as a v2 address block.
const std::string kInet4Block =
    std::string("\xC0\x00\x02\x01\xC6\x33\x64\x07", 8) + Be16(51000) +
    Be16(443);

TEST_CASE("v1 TCP4 and TCP6 give the client's address; the rest is not read") {
  const std::string header = "PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n";
  Parsed p = Parse(header + "GET / HTTP/1.1\r\n");
  REQUIRE(p.result == ProxyParse::kDone);
  CHECK(p.length == header.size());
  CHECK(p.header.version == 1);
  CHECK_FALSE(p.header.local);
  CHECK(AddressText(p.header.source) == "192.0.2.1:51000");
  CHECK(AddressText(p.header.destination) == "198.51.100.7:443");
  CheckPrefixesNeedMore(header);

  Parsed six = Parse("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
  REQUIRE(six.result == ProxyParse::kDone);
  CHECK(AddressText(six.header.source) == "2001:db8::1:1");
}

TEST_CASE("v1 UNKNOWN keeps the peer's address") {
  for (const char* header :
       {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"}) {
    Parsed p = Parse(header);
    REQUIRE(p.result == ProxyParse::kDone);
    CHECK(p.header.local);
  }
}

TEST_CASE("a malformed v1 header is refused with a reason") {
  const char* bad[] = {
      "PROXY TCP4 192.0.2.1 198.51.100.7 51000\r\n",        // too few
      "PROXY TCP4 192.0.2.1 198.51.100.7 51000 443 9\r\n",  // too many
      "PROXY TCP4 192.0.2.1  198.51.100.7 51000 443\r\n",   // two spaces
      "PROXY TCP4 2001:db8::1 198.51.100.7 51000 443\r\n",  // family
      "PROXY TCP4 192.0.2.300 198.51.100.7 51000 443\r\n",  // address
      "PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",    // port
      "PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n",     // leading 0
      "PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",       // sign
      "PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",          // protocol
      "PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rx",           // CR alone
      "PROXY UNKNOWN a\rb\r\n",                             // CR inside
      "PROXI TCP4",                                         // prefix
      "GET / HTTP/1.1\r\n",                                 // no header
  };
  for (const char* data : bad) {
    CAPTURE(data);
    Parsed p = Parse(data);
    CHECK(p.result == ProxyParse::kInvalid);
    CHECK_FALSE(p.error.empty());
  }
}

TEST_CASE("a v1 header is at most 107 bytes") {
  std::string longest = "PROXY UNKNOWN ";
  longest += std::string(107 - longest.size() - 2, 'x') + "\r\n";
  CHECK(longest.size() == 107);
  CHECK(Parse(longest).result == ProxyParse::kDone);
  std::string endless = "PROXY UNKNOWN " + std::string(200, 'x');
  CHECK(Parse(endless.substr(0, 106)).result == ProxyParse::kNeedMore);
  CHECK(Parse(endless.substr(0, 107)).result == ProxyParse::kInvalid);
  std::string too_long = "PROXY UNKNOWN " + std::string(92, 'x') + "\r\n";
  CHECK(too_long.size() == 108);
  CHECK(Parse(too_long).result == ProxyParse::kInvalid);
}

TEST_CASE("v2 PROXY over TCP4 with TLVs; every prefix needs more") {
  const std::string block = kInet4Block + Tlv(0x01, "h2") +
                            Tlv(0x02, "example.com") + Tlv(0x05, "req-7") +
                            Tlv(0x20, std::string("\x01\0\0\0\0", 5)) +
                            Tlv(0x04, "pad");
  const std::string header = V2(0x21, 0x11, block);
  Parsed p = Parse(header + "\x16\x03\x01");  // a ClientHello follows
  REQUIRE(p.result == ProxyParse::kDone);
  CHECK(p.length == header.size());
  CHECK(p.header.version == 2);
  CHECK_FALSE(p.header.local);
  CHECK(AddressText(p.header.source) == "192.0.2.1:51000");
  CHECK(AddressText(p.header.destination) == "198.51.100.7:443");
  CHECK(p.header.tlvs.alpn == "h2");
  CHECK(p.header.tlvs.authority == "example.com");
  CHECK(p.header.tlvs.unique_id == "req-7");
  CHECK(p.header.tlvs.ssl);
  CheckPrefixesNeedMore(header);
}

TEST_CASE("v2 over TCP6") {
  std::string block(36, '\0');
  block[15] = 1;  // ::1
  block[31] = 2;  // ::2
  block[32] = '\x01';
  block[33] = '\x02';  // port 258
  Parsed p = Parse(V2(0x21, 0x21, block));
  REQUIRE(p.result == ProxyParse::kDone);
  CHECK(AddressText(p.header.source) == "::1:258");
}

TEST_CASE("v2 LOCAL, UNSPEC and UNIX keep the peer's address") {
  CHECK(Parse(V2(0x20, 0x00, "")).header.local);
  CHECK(Parse(V2(0x20, 0x11, kInet4Block)).header.local);
  CHECK(Parse(V2(0x21, 0x00, "")).header.local);
  Parsed unix_socket = Parse(V2(0x21, 0x31, std::string(216, '\0')));
  REQUIRE(unix_socket.result == ProxyParse::kDone);
  CHECK(unix_socket.header.local);
}

TEST_CASE("a malformed v2 header is refused with a reason") {
  const std::string bad[] = {
      V2(0x11, 0x11, kInet4Block),                // version 1
      V2(0x22, 0x11, kInet4Block),                // command 2
      V2(0x21, 0x41, kInet4Block),                // family 4
      V2(0x21, 0x13, kInet4Block),                // transport 3
      V2(0x21, 0x11, kInet4Block.substr(0, 11)),  // short block
      V2(0x21, 0x21, kInet4Block),                // short for TCP6
      V2(0x21, 0x11, kInet4Block + "\x01\x00"),   // truncated TLV
      V2(0x21, 0x11, kInet4Block + Tlv(0x01, "h2").substr(0, 4)),
      V2(0x21, 0x11, kInet4Block + Tlv(0x05, std::string(129, 'u'))),
      V2(0x21, 0x11, kInet4Block + Tlv(0x20, "")),  // empty SSL TLV
      kSignature.substr(0, 11) + "X",               // signature
  };
  for (const std::string& data : bad) {
    CAPTURE(data.size());
    Parsed p = Parse(data);
    CHECK(p.result == ProxyParse::kInvalid);
    CHECK_FALSE(p.error.empty());
  }
}

TEST_CASE("a v2 header is bounded at 16 + 4 KiB") {
  std::string head = kSignature + "\x21\x11" + Be16(4097);
  CHECK(Parse(head).result == ProxyParse::kInvalid);
  std::string fits =
      V2(0x21, 0x11, kInet4Block + Tlv(0x04, std::string(4096 - 12 - 3, 'p')));
  CHECK(fits.size() == 16 + 4096);
  CHECK(Parse(fits).result == ProxyParse::kDone);
}

sockaddr_storage Address(const char* ip, uint16_t port) {
  sockaddr_storage out{};
  if (std::string_view(ip).find(':') == std::string_view::npos) {
    auto* in = reinterpret_cast<sockaddr_in*>(&out);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &in->sin_addr) == 1);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1);
  }
  return out;
}

sockaddr* Sa(sockaddr_storage& address) {
  return reinterpret_cast<sockaddr*>(&address);
}

TEST_CASE("the headers tandem sends parse back to the same addresses") {
  struct Case {
    const char* source;
    const char* destination;
    const char* v1;
    const char* shown_source;  // as the parser gives it back
  };
  const Case cases[] = {
      {"192.0.2.1", "198.51.100.7",
       "PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n", "192.0.2.1:51000"},
      {"2001:db8::1", "2001:db8::2",
       "PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n", "2001:db8::1:51000"},
      // A mix goes as IPv6, the IPv4 side mapped.
      {"192.0.2.1", "2001:db8::2",
       "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 51000 443\r\n",
       "::ffff:192.0.2.1:51000"},
  };
  for (const Case& c : cases) {
    INFO(c.source, " -> ", c.destination);
    sockaddr_storage source = Address(c.source, 51000);
    sockaddr_storage destination = Address(c.destination, 443);
    const std::string v1 = BuildProxyHeader(1, Sa(source), Sa(destination));
    CHECK(v1 == c.v1);
    for (const std::string& header :
         {v1, BuildProxyHeader(2, Sa(source), Sa(destination))}) {
      Parsed p = Parse(header + "GET /");
      REQUIRE(p.result == ProxyParse::kDone);
      CHECK(p.length == header.size());
      CHECK_FALSE(p.header.local);
      CHECK(AddressText(p.header.source) == c.shown_source);
      CHECK(AddressText(p.header.destination).ends_with(":443"));
    }
  }
  sockaddr_storage v4 = Address("192.0.2.1", 1);
  CHECK(BuildProxyHeader(2, Sa(v4), Sa(v4)).size() == 16 + 12);
  sockaddr_storage v6 = Address("::1", 1);
  CHECK(BuildProxyHeader(2, Sa(v6), Sa(v6)).size() == 16 + 36);
}

TEST_CASE("tandem's own connections send LOCAL (v2) or UNKNOWN (v1)") {
  CHECK(LocalProxyHeader(1) == "PROXY UNKNOWN\r\n");
  const std::string v2 = LocalProxyHeader(2);
  CHECK(v2 == kSignature + std::string("\x20\x00\x00\x00", 4));
  for (const std::string& header : {LocalProxyHeader(1), v2}) {
    Parsed p = Parse(header);
    REQUIRE(p.result == ProxyParse::kDone);
    CHECK(p.header.local);
    CHECK(p.length == header.size());
  }
  // An unknown family is sent as tandem's own.
  sockaddr_storage unknown{};
  unknown.ss_family = AF_UNIX;
  sockaddr_storage v4 = Address("192.0.2.1", 1);
  CHECK(BuildProxyHeader(1, Sa(unknown), Sa(v4)) == "PROXY UNKNOWN\r\n");
}

}  // namespace
}  // namespace tandem::net
