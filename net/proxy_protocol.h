// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2)
// that a load balancer in front of tandem sends before any other byte: a pure
// parser over the bytes received so far, and the rule for how many of them
// belong to the header (so a reader never takes a byte of what follows); and
// the headers tandem itself sends to backends.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::net {

// A v1 header is at most 107 bytes with its CRLF; a v2 header is 16 bytes and
// its address and TLV block, which tandem bounds at 4 KiB.
inline constexpr size_t kMaxProxyV1Bytes = 107;
inline constexpr size_t kMaxProxyV2BlockBytes = 4096;
inline constexpr size_t kMaxProxyHeaderBytes = 16 + kMaxProxyV2BlockBytes;

// The v2 TLVs tandem keeps for the access log.
struct ProxyTlvs {
  std::string alpn;
  std::string authority;
  std::string unique_id;
  bool ssl = false;  // the client spoke TLS to the proxy
  bool empty() const {
    return alpn.empty() && authority.empty() && unique_id.empty() && !ssl;
  }
};

struct ProxyHeader {
  int version = 0;  // 1 or 2
  // The connection is the proxy's own (v2 LOCAL, a v1 or v2 header for an
  // unknown or non-TCP family): the peer's address stays the client's.
  bool local = false;
  // The original client and the address it connected to (when !local).
  sockaddr_storage source{};
  sockaddr_storage destination{};
  ProxyTlvs tlvs;
};

enum class ProxyParse {
  kNeedMore,  // a valid header so far; more bytes needed
  kDone,      // *header filled; `*length` bytes are the header
  kInvalid,   // not a PROXY header, or a malformed one (*error says why)
};

// Parses the header at the start of `data` (everything received so far).
// On kNeedMore, `*length` is how many bytes of `data` certainly belong to the
// header: a reader may consume them and no more.
ProxyParse ParseProxyHeader(std::string_view data, ProxyHeader* header,
                            size_t* length, std::string* error);

// The header tandem sends a backend (version 1 or 2) for a client at
// `source` that connected to `destination` (IPv4 or IPv6; a mix is sent as
// IPv6, the IPv4 side mapped). v2 carries no TLV.
std::string BuildProxyHeader(int version, const sockaddr* source,
                             const sockaddr* destination);
// The same for a client connection: the client as tandem knows it
// (`address` "ip:port", its first `ip_length` bytes the ip; a PROXY header
// in front already applied) and the address socket `fd` was accepted on.
std::string BuildProxyHeaderFor(int version, std::string_view address,
                                size_t ip_length, int fd);
// The header of a connection that is tandem's own (health checks): v2
// LOCAL, v1 "PROXY UNKNOWN".
std::string LocalProxyHeader(int version);

}  // namespace tandem::net
