// Helpers of the Config structs; the structs themselves are filled by load.cc.
#include "conf/config.h"

#include <arpa/inet.h>

#include <algorithm>

namespace tandem::conf {

bool Cidr::Parse(std::string_view text, Cidr* out) {
  Cidr cidr;
  const size_t slash = text.find('/');
  std::string host(text.substr(0, slash));
  if (inet_pton(AF_INET, host.c_str(), cidr.address) == 1) {
    cidr.family = AF_INET;
  } else if (inet_pton(AF_INET6, host.c_str(), cidr.address) == 1) {
    cidr.family = AF_INET6;
  } else {
    return false;
  }
  const int bits = cidr.family == AF_INET ? 32 : 128;
  cidr.prefix = bits;
  if (slash != std::string_view::npos) {
    std::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) return false;
    int prefix = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return false;
      prefix = prefix * 10 + (c - '0');
    }
    if (prefix > bits) return false;
    cidr.prefix = prefix;
  }
  for (int bit = cidr.prefix; bit < bits; ++bit)
    cidr.address[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  *out = cidr;
  return true;
}

bool Cidr::Contains(const sockaddr* address) const {
  const uint8_t* bytes = nullptr;
  int family = address->sa_family;
  if (family == AF_INET) {
    bytes = reinterpret_cast<const uint8_t*>(
        &reinterpret_cast<const sockaddr_in*>(address)->sin_addr);
  } else if (family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    bytes = in6->sin6_addr.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      family = AF_INET;
      bytes += 12;
    }
  } else {
    return false;
  }
  if (family != this->family) return false;
  for (int bit = 0; bit < prefix; ++bit) {
    const uint8_t mask = static_cast<uint8_t>(0x80 >> (bit % 8));
    if ((bytes[bit / 8] & mask) != (this->address[bit / 8] & mask))
      return false;
  }
  return true;
}

std::vector<Cidr> Listener::DefaultTrustedProxies() {
  std::vector<Cidr> blocks(2);
  Cidr::Parse("127.0.0.0/8", &blocks[0]);
  Cidr::Parse("::1/128", &blocks[1]);
  return blocks;
}

bool SocketAddress::IsLoopback() const {
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
           in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

bool SocketAddress::IsWildcard() const {
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    return in->sin_addr.s_addr == htonl(INADDR_ANY);
  }
  if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    return IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
  }
  return false;
}

uint16_t SocketAddress::port() const {
  if (storage.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  if (storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  }
  return 0;
}

const Cluster* Config::FindCluster(std::string_view name) const {
  auto it = std::find_if(clusters.begin(), clusters.end(),
                         [&](const Cluster& c) { return c.name == name; });
  return it == clusters.end() ? nullptr : &*it;
}

bool DnsSource::SameLookup(const DnsSource& other) const {
  if (name != other.name || type != other.type ||
      servers.size() != other.servers.size()) {
    return false;
  }
  for (size_t i = 0; i < servers.size(); ++i) {
    if (servers[i].text != other.servers[i].text) return false;
  }
  return true;
}

}  // namespace tandem::conf
