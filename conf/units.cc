// Durations, sizes and socket addresses as written in the configuration file.
#include "conf/units.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>

namespace tandem::conf {
namespace {

// Longer durations are surely a typo, and the bound keeps every sum and
// product below uint64_t overflow.
constexpr uint64_t kMaxDurationMs = uint64_t{8760} * 3600 * 1000;  // 8760h
constexpr size_t kMaxFractionDigits = 9;

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::string Quoted(std::string_view text) {
  return "\"" + std::string(text) + "\"";
}

template <typename T>
std::optional<T> Fail(std::string* error, std::string message) {
  if (error != nullptr) *error = std::move(message);
  return std::nullopt;
}

std::optional<uint64_t> DurationUnitMs(std::string_view unit) {
  if (unit == "ms") return 1;
  if (unit == "s") return 1000;
  if (unit == "m") return 60 * 1000;
  if (unit == "h") return 3600 * 1000;
  return std::nullopt;
}

std::optional<uint64_t> SizeUnitBytes(std::string_view unit) {
  if (unit.empty() || unit == "B") return 1;
  if (unit == "KiB") return uint64_t{1} << 10;
  if (unit == "MiB") return uint64_t{1} << 20;
  if (unit == "GiB") return uint64_t{1} << 30;
  return std::nullopt;
}

bool ValidHostName(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  if (host.front() == '.' || host.front() == '-') return false;
  for (char c : host) {
    if (!IsAlpha(c) && !IsDigit(c) && c != '-' && c != '.' && c != '_') {
      return false;
    }
  }
  return host.find("..") == std::string_view::npos;
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

std::string IpText(const sockaddr_storage& storage) {
  char buffer[INET6_ADDRSTRLEN] = {};
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &in->sin_addr, buffer, sizeof(buffer));
  } else {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &in6->sin6_addr, buffer, sizeof(buffer));
  }
  return buffer;
}

void SetPort(SocketAddress* address, uint16_t port) {
  if (address->storage.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&address->storage)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&address->storage)->sin6_port = htons(port);
  }
}

struct AddrInfoDeleter {
  void operator()(addrinfo* info) const { freeaddrinfo(info); }
};

// Blocking name resolution, once at load time; prefers IPv4 because a
// backend on "localhost" usually listens on 127.0.0.1 only.
std::optional<SocketAddress> Resolve(const std::string& host,
                                     std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* raw = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &raw);
  std::unique_ptr<addrinfo, AddrInfoDeleter> result(raw);
  if (rc != 0) {
    std::string reason =
        rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    return Fail<SocketAddress>(error,
                               "cannot resolve host '" + host + "': " + reason);
  }
  const addrinfo* chosen = nullptr;
  for (const addrinfo* it = result.get(); it != nullptr; it = it->ai_next) {
    if (it->ai_family == AF_INET) {
      chosen = it;
      break;
    }
    if (it->ai_family == AF_INET6 && chosen == nullptr) chosen = it;
  }
  if (chosen == nullptr || chosen->ai_addrlen > sizeof(sockaddr_storage)) {
    return Fail<SocketAddress>(
        error, "host '" + host + "' has no IPv4 or IPv6 address");
  }
  SocketAddress address;
  std::memcpy(&address.storage, chosen->ai_addr, chosen->ai_addrlen);
  address.length = chosen->ai_addrlen;
  return address;
}

}  // namespace

std::optional<Duration> ParseDuration(std::string_view text,
                                      std::string* error) {
  using Result = Duration;
  if (text.empty()) {
    return Fail<Result>(
        error, "empty duration; write a number with a unit, e.g. \"10s\"");
  }
  if (text.front() == '-') {
    return Fail<Result>(error,
                        "a duration cannot be negative, got " + Quoted(text));
  }
  uint64_t total_ms = 0;
  size_t i = 0;
  while (i < text.size()) {
    const size_t number_start = i;
    uint64_t whole = 0;
    bool any_digit = false;
    while (i < text.size() && IsDigit(text[i])) {
      whole = whole * 10 + static_cast<uint64_t>(text[i] - '0');
      any_digit = true;
      ++i;
      if (whole > kMaxDurationMs) {
        return Fail<Result>(
            error, "duration " + Quoted(text) + " is too long (at most 8760h)");
      }
    }
    uint64_t fraction = 0;
    uint64_t fraction_scale = 1;
    if (i < text.size() && text[i] == '.') {
      ++i;
      while (i < text.size() && IsDigit(text[i])) {
        if (fraction_scale == 1000000000) {
          return Fail<Result>(error,
                              "too many decimals in duration " + Quoted(text));
        }
        fraction = fraction * 10 + static_cast<uint64_t>(text[i] - '0');
        fraction_scale *= 10;
        any_digit = true;
        ++i;
      }
    }
    if (!any_digit) {
      return Fail<Result>(error,
                          "bad duration " + Quoted(text) +
                              ": expected a number, e.g. \"10s\" or \"1.5s\"");
    }
    const std::string_view number = text.substr(number_start, i - number_start);
    const size_t unit_start = i;
    while (i < text.size() && IsAlpha(text[i])) ++i;
    const std::string_view unit = text.substr(unit_start, i - unit_start);
    if (unit.empty()) {
      if (i == text.size()) {
        return Fail<Result>(error,
                            "duration " + Quoted(text) +
                                " needs a unit (ms, s, m or h), e.g. \"" +
                                std::string(number) + "s\"");
      }
      return Fail<Result>(error, "bad duration " + Quoted(text) +
                                     ": unexpected '" +
                                     std::string(1, text[i]) + "'");
    }
    const std::optional<uint64_t> unit_ms = DurationUnitMs(unit);
    if (!unit_ms) {
      return Fail<Result>(error, "unknown unit '" + std::string(unit) +
                                     "' in duration " + Quoted(text) +
                                     " (use ms, s, m or h)");
    }
    // whole <= kMaxDurationMs (< 2^35) and unit_ms <= 3.6e6 (< 2^22): no
    // overflow; likewise fraction < 1e9 (< 2^30).
    const uint64_t fraction_ms = fraction * *unit_ms;
    if (fraction_ms % fraction_scale != 0) {
      return Fail<Result>(
          error, "duration " + Quoted(text) + " is finer than a millisecond");
    }
    total_ms += whole * *unit_ms + fraction_ms / fraction_scale;
    if (total_ms > kMaxDurationMs) {
      return Fail<Result>(
          error, "duration " + Quoted(text) + " is too long (at most 8760h)");
    }
  }
  return Duration(static_cast<Duration::rep>(total_ms));
}

std::optional<uint64_t> ParseSize(std::string_view text, std::string* error) {
  using Result = uint64_t;
  if (text.empty()) {
    return Fail<Result>(
        error, "empty size; write a number of bytes or e.g. \"64KiB\"");
  }
  if (text.front() == '-') {
    return Fail<Result>(error,
                        "a size cannot be negative, got " + Quoted(text));
  }
  size_t i = 0;
  uint64_t number = 0;
  while (i < text.size() && IsDigit(text[i])) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (number > (UINT64_MAX - digit) / 10) {
      return Fail<Result>(error, "size " + Quoted(text) + " is too large");
    }
    number = number * 10 + digit;
    ++i;
  }
  if (i == 0) {
    return Fail<Result>(
        error, "bad size " + Quoted(text) +
                   ": expected a whole number of bytes, B, KiB, MiB or GiB");
  }
  if (i < text.size() && text[i] == '.') {
    return Fail<Result>(error,
                        "bad size " + Quoted(text) +
                            ": use a whole number of units, e.g. \"1536KiB\"");
  }
  const std::string_view unit = text.substr(i);
  const std::optional<uint64_t> unit_bytes = SizeUnitBytes(unit);
  if (!unit_bytes) {
    return Fail<Result>(error,
                        "unknown unit '" + std::string(unit) + "' in size " +
                            Quoted(text) +
                            " (use B, KiB, MiB or GiB; 1 KiB = 1024 bytes)");
  }
  if (number > UINT64_MAX / *unit_bytes) {
    return Fail<Result>(error, "size " + Quoted(text) + " is too large");
  }
  return number * *unit_bytes;
}

std::optional<SocketAddress> ParseSocketAddress(std::string_view text,
                                                PortZero port_zero,
                                                std::string* error) {
  using Result = SocketAddress;
  if (text.empty()) {
    return Fail<Result>(
        error, "empty address; write HOST:PORT, e.g. \"127.0.0.1:8080\"");
  }
  if (text.find("://") != std::string_view::npos) {
    return Fail<Result>(
        error, "address " + Quoted(text) +
                   " has a scheme; write HOST:PORT, e.g. \"127.0.0.1:8080\"");
  }
  std::string_view host;
  std::string_view port_text;
  bool bracketed = false;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return Fail<Result>(
          error, "address " + Quoted(text) + " misses the closing ']'");
    }
    host = text.substr(1, close - 1);
    bracketed = true;
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      return Fail<Result>(error, "address " + Quoted(text) +
                                     " misses its port, e.g. \"[::1]:8080\"");
    }
    port_text = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return Fail<Result>(error,
                          "address " + Quoted(text) +
                              " misses its port; write HOST:PORT, e.g. \"" +
                              std::string(text) + ":8080\"");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Fail<Result>(error, "IPv6 address in " + Quoted(text) +
                                     " needs brackets, e.g. \"[::1]:8080\"");
    }
  }
  if (host.empty()) {
    return Fail<Result>(
        error, "address " + Quoted(text) +
                   " misses its host; use 0.0.0.0:PORT or [::]:PORT for "
                   "every local address");
  }

  uint32_t port = 0;
  bool port_ok = !port_text.empty() && port_text.size() <= 5;
  for (char c : port_text) {
    if (!IsDigit(c)) {
      port_ok = false;
      break;
    }
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  const uint32_t min_port = port_zero == PortZero::kAllowed ? 0 : 1;
  if (!port_ok || port > 65535) {
    return Fail<Result>(error, "bad port '" + std::string(port_text) + "' in " +
                                   Quoted(text) + " (expected " +
                                   std::to_string(min_port) + "..65535)");
  }
  if (port < min_port) {
    return Fail<Result>(error, "port 0 is not allowed in " + Quoted(text) +
                                   " (expected 1..65535)");
  }

  const std::string host_string(host);
  SocketAddress address;
  bool is_name = false;
  if (bracketed) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
    if (inet_pton(AF_INET6, host_string.c_str(), &in6->sin6_addr) != 1) {
      return Fail<Result>(
          error, "bad IPv6 address '" + host_string + "' in " + Quoted(text));
    }
    in6->sin6_family = AF_INET6;
    address.length = sizeof(sockaddr_in6);
  } else if (host.find_first_not_of("0123456789.") == std::string_view::npos) {
    auto* in = reinterpret_cast<sockaddr_in*>(&address.storage);
    if (inet_pton(AF_INET, host_string.c_str(), &in->sin_addr) != 1) {
      return Fail<Result>(
          error, "bad IPv4 address '" + host_string + "' in " + Quoted(text));
    }
    in->sin_family = AF_INET;
    address.length = sizeof(sockaddr_in);
  } else {
    if (!ValidHostName(host)) {
      return Fail<Result>(
          error, "bad host name '" + host_string + "' in " + Quoted(text));
    }
    std::optional<SocketAddress> resolved = Resolve(host_string, error);
    if (!resolved) return std::nullopt;
    address = *resolved;
    is_name = true;
  }
  SetPort(&address, static_cast<uint16_t>(port));
  if (is_name) {
    address.host = Lower(host);
    address.text = address.host + ":" + std::to_string(port);
  } else {
    address.host = IpText(address.storage);
    address.text = address.storage.ss_family == AF_INET6
                       ? "[" + address.host + "]:" + std::to_string(port)
                       : address.host + ":" + std::to_string(port);
  }
  return address;
}

bool SameIp(const SocketAddress& a, const SocketAddress& b) {
  if (a.storage.ss_family != b.storage.ss_family) return false;
  if (a.storage.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&b.storage)->sin_addr.s_addr;
  }
  return std::memcmp(
             &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr,
             &reinterpret_cast<const sockaddr_in6*>(&b.storage)->sin6_addr,
             sizeof(in6_addr)) == 0;
}

bool SameEndpoint(const SocketAddress& a, const SocketAddress& b) {
  return a.port() == b.port() && SameIp(a, b);
}

}  // namespace tandem::conf
