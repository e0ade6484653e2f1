// The value formats of the configuration file: durations ("1.5s", "1m30s"),
// sizes (bytes, or "64KiB") and socket addresses ("[::1]:80", "host:port").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conf/config.h"

namespace tandem::conf {

// Parses one or more <number><unit> terms, unit one of ms, s, m, h, number a
// decimal ("1.5s", "1m30s", "250ms", "0s"). The result must be a whole number
// of milliseconds. On failure returns nullopt and, when `error` is not null,
// stores a sentence for the user there (no key, no position).
[[nodiscard]] std::optional<Duration> ParseDuration(std::string_view text,
                                                    std::string* error);

// Parses a size: a decimal integer of bytes ("0", "1048576") or an integer
// with a binary unit B, KiB, MiB or GiB ("64KiB"). Errors as ParseDuration.
[[nodiscard]] std::optional<uint64_t> ParseSize(std::string_view text,
                                                std::string* error);

enum class PortZero { kAllowed, kRejected };

// Parses "IPv4:port", "[IPv6]:port" or "host:port". A host name is resolved
// with getaddrinfo(), blocking, and the first IPv4 result is taken, else the
// first IPv6 one. Port 0 (ephemeral) is accepted only with PortZero::kAllowed.
// Errors as ParseDuration.
[[nodiscard]] std::optional<SocketAddress> ParseSocketAddress(
    std::string_view text, PortZero port_zero, std::string* error);

// Whether two addresses hold the same IP (same family), and the same port.
bool SameIp(const SocketAddress& a, const SocketAddress& b);
bool SameEndpoint(const SocketAddress& a, const SocketAddress& b);

}  // namespace tandem::conf
