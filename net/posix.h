// Small conversions for system and libevent calls, shared by health/ and
// dispatcher/.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <chrono>
#include <string>

namespace tandem::net {

// A duration as a timeval for libevent timers; a negative one is zero.
inline timeval ToTimeval(std::chrono::nanoseconds d) {
  if (d.count() < 0) d = std::chrono::nanoseconds(0);
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return {static_cast<time_t>(micros / 1000000),
          static_cast<suseconds_t>(micros % 1000000)};
}

// "ip:port" of an IPv4 or IPv6 address ("?:0" for another family);
// `*ip_length` gets the length of the "ip" part.
inline std::string AddressText(const sockaddr* address, size_t* ip_length) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (address->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(address);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (address->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  std::string text = host;
  *ip_length = text.size();
  text.push_back(':');
  text.append(std::to_string(port));
  return text;
}

// The text of errno value `error`.
inline std::string ErrorText(int error) {
  char buffer[128];
  // GNU strerror_r: returns a pointer to the text, maybe not into `buffer`.
  return strerror_r(error, buffer, sizeof(buffer));
}

}  // namespace tandem::net
