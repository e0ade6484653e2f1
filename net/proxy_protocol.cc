// The PROXY protocol parser and writer; see proxy_protocol.h.
#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tandem::net {
namespace {

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr char kV2Signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                   '\n', 'Q',  'U',  'I',  'T',  '\n'};
constexpr size_t kV2HeadBytes = 16;

// v2 TLV types kept.
constexpr uint8_t kTlvAlpn = 0x01;
constexpr uint8_t kTlvAuthority = 0x02;
constexpr uint8_t kTlvUniqueId = 0x05;
constexpr uint8_t kTlvSsl = 0x20;
constexpr size_t kMaxUniqueIdBytes = 128;

ProxyParse Invalid(std::string* error, const char* why) {
  *error = why;
  return ProxyParse::kInvalid;
}

uint16_t Read16(const unsigned char* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// "0" to "65535", no sign, no leading zero.
bool ParsePort(std::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5) return false;
  if (text.size() > 1 && text[0] == '0') return false;
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) return false;
  *port = static_cast<uint16_t>(value);
  return true;
}

bool ParseIp(std::string_view text, int family, uint16_t port,
             sockaddr_storage* out) {
  char buffer[INET6_ADDRSTRLEN];
  if (text.empty() || text.size() >= sizeof(buffer)) return false;
  std::memcpy(buffer, text.data(), text.size());
  buffer[text.size()] = '\0';
  std::memset(out, 0, sizeof(*out));
  if (family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(out);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    return inet_pton(AF_INET, buffer, &in->sin_addr) == 1;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  return inet_pton(AF_INET6, buffer, &in6->sin6_addr) == 1;
}

ProxyParse ParseV1(std::string_view data, ProxyHeader* header, size_t* length,
                   std::string* error) {
  const size_t end = data.find("\r\n");
  if (end == std::string_view::npos) {
    if (data.size() >= kMaxProxyV1Bytes)
      return Invalid(error, "v1 header longer than 107 bytes");
    const size_t cr = data.find('\r');
    if (cr != std::string_view::npos && cr + 1 < data.size())
      return Invalid(error, "v1 header: CR without LF");
    *length = data.size();
    return ProxyParse::kNeedMore;
  }
  if (end + 2 > kMaxProxyV1Bytes)
    return Invalid(error, "v1 header longer than 107 bytes");
  if (data.substr(0, end).find('\r') != std::string_view::npos)
    return Invalid(error, "v1 header: CR without LF");
  std::string_view line = data.substr(kV1Prefix.size(), end - kV1Prefix.size());
  header->version = 1;
  *length = end + 2;
  if (line == "UNKNOWN" || line.substr(0, 8) == "UNKNOWN ") {
    header->local = true;  // the rest of the line is to be ignored
    return ProxyParse::kDone;
  }
  // TCP4|TCP6 SP src SP dst SP sport SP dport, single spaces.
  std::string_view fields[5];
  size_t count = 0;
  size_t start = 0;
  while (count < 5) {
    size_t space = line.find(' ', start);
    std::string_view field = line.substr(start, space == std::string_view::npos
                                                    ? std::string_view::npos
                                                    : space - start);
    if (field.empty()) return Invalid(error, "v1 header: empty field");
    fields[count++] = field;
    if (space == std::string_view::npos) break;
    start = space + 1;
    if (count == 5) return Invalid(error, "v1 header: too many fields");
  }
  if (count != 5) return Invalid(error, "v1 header: too few fields");
  int family;
  if (fields[0] == "TCP4") {
    family = AF_INET;
  } else if (fields[0] == "TCP6") {
    family = AF_INET6;
  } else {
    return Invalid(error, "v1 header: unknown protocol");
  }
  uint16_t source_port = 0;
  uint16_t destination_port = 0;
  if (!ParsePort(fields[3], &source_port) ||
      !ParsePort(fields[4], &destination_port)) {
    return Invalid(error, "v1 header: bad port");
  }
  if (!ParseIp(fields[1], family, source_port, &header->source) ||
      !ParseIp(fields[2], family, destination_port, &header->destination)) {
    return Invalid(error, "v1 header: bad address");
  }
  return ProxyParse::kDone;
}

ProxyParse ParseTlvs(const unsigned char* p, size_t size, ProxyHeader* header,
                     std::string* error) {
  while (size > 0) {
    if (size < 3) return Invalid(error, "v2 header: truncated TLV");
    const uint8_t type = p[0];
    const size_t value_size = Read16(p + 1);
    if (value_size > size - 3) return Invalid(error, "v2 header: TLV too long");
    const char* value = reinterpret_cast<const char*>(p + 3);
    switch (type) {
      case kTlvAlpn:
        header->tlvs.alpn.assign(value, value_size);
        break;
      case kTlvAuthority:
        header->tlvs.authority.assign(value, value_size);
        break;
      case kTlvUniqueId:
        if (value_size > kMaxUniqueIdBytes)
          return Invalid(error, "v2 header: UNIQUE_ID over 128 bytes");
        header->tlvs.unique_id.assign(value, value_size);
        break;
      case kTlvSsl:
        if (value_size < 1) return Invalid(error, "v2 header: empty SSL TLV");
        header->tlvs.ssl = (p[3] & 0x01) != 0;  // PP2_CLIENT_SSL
        break;
      default:
        break;  // CRC32C, NOOP, NETNS, custom: not needed
    }
    p += 3 + value_size;
    size -= 3 + value_size;
  }
  return ProxyParse::kDone;
}

ProxyParse ParseV2(std::string_view data, ProxyHeader* header, size_t* length,
                   std::string* error) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  if (data.size() > sizeof(kV2Signature)) {
    if ((p[12] & 0xF0) != 0x20) return Invalid(error, "v2 header: version");
    if ((p[12] & 0x0F) > 1) return Invalid(error, "v2 header: command");
  }
  if (data.size() < kV2HeadBytes) {
    *length = data.size();
    return ProxyParse::kNeedMore;
  }
  const size_t block = Read16(p + 14);
  if (block > kMaxProxyV2BlockBytes)
    return Invalid(error, "v2 header: over 4 KiB");
  if (data.size() < kV2HeadBytes + block) {
    *length = data.size();
    return ProxyParse::kNeedMore;
  }
  header->version = 2;
  *length = kV2HeadBytes + block;
  const bool proxy = (p[12] & 0x0F) == 1;
  const uint8_t family = p[13] >> 4;
  const uint8_t transport = p[13] & 0x0F;
  if (family > 3 || transport > 2)
    return Invalid(error, "v2 header: address family");
  const unsigned char* body = p + kV2HeadBytes;
  size_t address_bytes = 0;
  if (family == 1) address_bytes = 12;
  if (family == 2) address_bytes = 36;
  if (family == 3) address_bytes = 216;
  if (block < address_bytes)
    return Invalid(error, "v2 header: address block too short");
  if (!proxy) {
    // LOCAL: the proxy's own connection (a health check); the block is
    // ignored, as the specification requires.
    header->local = true;
    return ProxyParse::kDone;
  }
  if (transport == 1 && family == 1) {
    auto* source = reinterpret_cast<sockaddr_in*>(&header->source);
    auto* destination = reinterpret_cast<sockaddr_in*>(&header->destination);
    source->sin_family = destination->sin_family = AF_INET;
    std::memcpy(&source->sin_addr, body, 4);
    std::memcpy(&destination->sin_addr, body + 4, 4);
    std::memcpy(&source->sin_port, body + 8, 2);
    std::memcpy(&destination->sin_port, body + 10, 2);
  } else if (transport == 1 && family == 2) {
    auto* source = reinterpret_cast<sockaddr_in6*>(&header->source);
    auto* destination = reinterpret_cast<sockaddr_in6*>(&header->destination);
    source->sin6_family = destination->sin6_family = AF_INET6;
    std::memcpy(&source->sin6_addr, body, 16);
    std::memcpy(&destination->sin6_addr, body + 16, 16);
    std::memcpy(&source->sin6_port, body + 32, 2);
    std::memcpy(&destination->sin6_port, body + 34, 2);
  } else {
    // UNSPEC, UNIX or datagram: keep the real endpoints (the specification
    // says so for UNSPEC; the others carry no TCP client address).
    header->local = true;
  }
  return ParseTlvs(body + address_bytes, block - address_bytes, header, error);
}

}  // namespace

ProxyParse ParseProxyHeader(std::string_view data, ProxyHeader* header,
                            size_t* length, std::string* error) {
  *length = 0;
  *header = ProxyHeader();
  if (data.empty()) return ProxyParse::kNeedMore;
  if (data[0] == 'P') {
    const size_t n = std::min(data.size(), kV1Prefix.size());
    if (data.substr(0, n) != kV1Prefix.substr(0, n))
      return Invalid(error, "not a PROXY header");
    if (data.size() < kV1Prefix.size()) {
      *length = data.size();
      return ProxyParse::kNeedMore;
    }
    return ParseV1(data, header, length, error);
  }
  const size_t n = std::min(data.size(), sizeof(kV2Signature));
  if (std::memcmp(data.data(), kV2Signature, n) != 0)
    return Invalid(error, "not a PROXY header");
  return ParseV2(data, header, length, error);
}

namespace {

// `address` as IPv6 (IPv4 mapped), port in network order.
void AsV6(const sockaddr* address, in6_addr* out, uint16_t* port) {
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    *out = in6->sin6_addr;
    *port = in6->sin6_port;
    return;
  }
  const auto* in = reinterpret_cast<const sockaddr_in*>(address);
  *out = in6_addr{};
  out->s6_addr[10] = 0xff;
  out->s6_addr[11] = 0xff;
  std::memcpy(&out->s6_addr[12], &in->sin_addr, 4);
  *port = in->sin_port;
}

void Append16(std::string* out, uint16_t network_order) {
  out->append(reinterpret_cast<const char*>(&network_order), 2);
}

}  // namespace

std::string BuildProxyHeader(int version, const sockaddr* source,
                             const sockaddr* destination) {
  const bool known =
      (source->sa_family == AF_INET || source->sa_family == AF_INET6) &&
      (destination->sa_family == AF_INET || destination->sa_family == AF_INET6);
  if (!known) return LocalProxyHeader(version);
  const bool v4 =
      source->sa_family == AF_INET && destination->sa_family == AF_INET;
  const auto* src4 = reinterpret_cast<const sockaddr_in*>(source);
  const auto* dst4 = reinterpret_cast<const sockaddr_in*>(destination);
  in6_addr src6{};
  in6_addr dst6{};
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  if (v4) {
    src_port = src4->sin_port;
    dst_port = dst4->sin_port;
  } else {
    AsV6(source, &src6, &src_port);
    AsV6(destination, &dst6, &dst_port);
  }
  if (version == 1) {
    char src[INET6_ADDRSTRLEN];
    char dst[INET6_ADDRSTRLEN];
    if (v4) {
      inet_ntop(AF_INET, &src4->sin_addr, src, sizeof(src));
      inet_ntop(AF_INET, &dst4->sin_addr, dst, sizeof(dst));
    } else {
      inet_ntop(AF_INET6, &src6, src, sizeof(src));
      inet_ntop(AF_INET6, &dst6, dst, sizeof(dst));
    }
    return std::string("PROXY ") + (v4 ? "TCP4 " : "TCP6 ") + src + " " + dst +
           " " + std::to_string(ntohs(src_port)) + " " +
           std::to_string(ntohs(dst_port)) + "\r\n";
  }
  std::string out(kV2Signature, 12);
  out.push_back('\x21');                // version 2, PROXY
  out.push_back(v4 ? '\x11' : '\x21');  // TCP over IPv4 / IPv6
  Append16(&out, htons(v4 ? 12 : 36));
  if (v4) {
    out.append(reinterpret_cast<const char*>(&src4->sin_addr), 4);
    out.append(reinterpret_cast<const char*>(&dst4->sin_addr), 4);
  } else {
    out.append(reinterpret_cast<const char*>(&src6), 16);
    out.append(reinterpret_cast<const char*>(&dst6), 16);
  }
  Append16(&out, src_port);
  Append16(&out, dst_port);
  return out;
}

std::string LocalProxyHeader(int version) {
  if (version == 1) return "PROXY UNKNOWN\r\n";
  std::string out(kV2Signature, 12);
  out.push_back('\x20');  // version 2, LOCAL
  out.push_back('\x00');  // AF_UNSPEC
  out.append(2, '\0');    // no address block
  return out;
}

std::string BuildProxyHeaderFor(int version, std::string_view address,
                                size_t ip_length, int fd) {
  sockaddr_storage source{};
  const std::string ip(address.substr(0, ip_length));
  uint16_t port = 0;
  if (ip_length + 1 < address.size()) {
    port = static_cast<uint16_t>(std::strtoul(
        std::string(address.substr(ip_length + 1)).c_str(), nullptr, 10));
  }
  auto* in = reinterpret_cast<sockaddr_in*>(&source);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&source);
  if (inet_pton(AF_INET, ip.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
  } else if (inet_pton(AF_INET6, ip.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
  }
  sockaddr_storage destination{};
  socklen_t length = sizeof(destination);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&destination), &length) !=
      0) {
    destination.ss_family = AF_UNSPEC;
  }
  return BuildProxyHeader(version, reinterpret_cast<sockaddr*>(&source),
                          reinterpret_cast<sockaddr*>(&destination));
}

}  // namespace tandem::net
