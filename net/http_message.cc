// Writing the heads tandem sends; see http_message.h.
#include "net/http_message.h"

#include <charconv>
#include <chrono>
#include <cstdint>
#include <vector>

namespace tandem::net {
namespace {

void AppendNumber(uint64_t value, std::string* out) {
  char buffer[24];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out->append(buffer, end);
}

// A case-insensitive FNV-1a hash with a per-process seed, so that names
// chosen to collide cannot be prepared in advance.
uint64_t HashName(std::string_view name) {
  static const uint64_t seed = [] {
    static const char anchor = 0;  // its address varies with ASLR
    return static_cast<uint64_t>(
               std::chrono::steady_clock::now().time_since_epoch().count()) ^
           reinterpret_cast<uintptr_t>(&anchor);
  }();
  uint64_t hash = 14695981039346656037ull ^ seed;
  for (char c : name) {
    hash ^= static_cast<unsigned char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    hash *= 1099511628211ull;
  }
  return hash;
}

// Which fields of a head its Connection fields name (RFC 9110 §7.6.1).
// The field names go into a hash index once, then each name Connection
// lists is one lookup that marks every field of that name: the work is the
// number of fields plus the number of listed names, never their product.
// Builds nothing (and allocates nothing) when Connection lists only names
// that are removed anyway.
class ConnectionNamed {
 public:
  ConnectionNamed(const HeaderList& headers, HeadWriteStats* stats,
                  std::vector<bool>& named)
      : named_(named) {
    bool other_names = false;
    ForEachConnectionName(headers, [&](std::string_view name) {
      if (!IsHopByHop(name) && !EqualsIgnoreCase(name, "close"))
        other_names = true;
    });
    if (!other_names) return;
    const size_t count = headers.size();
    size_t capacity = 16;
    while (capacity < 2 * count) capacity *= 2;
    const size_t mask = capacity - 1;
    std::vector<uint32_t> slots(capacity, kNone);  // first field of a name
    std::vector<uint64_t> hashes(count);
    std::vector<uint32_t> next(count, kNone);  // next field of that name
    named_.assign(count, false);
    for (size_t i = 0; i < count; ++i) {
      hashes[i] = HashName(headers.name(i));
      for (size_t slot = hashes[i] & mask;; slot = (slot + 1) & mask) {
        uint32_t first = slots[slot];
        if (first == kNone) {
          slots[slot] = static_cast<uint32_t>(i);
          break;
        }
        if (hashes[first] == hashes[i] &&
            Same(headers.name(first), headers.name(i), stats)) {
          next[i] = next[first];
          next[first] = static_cast<uint32_t>(i);
          break;
        }
      }
    }
    ForEachConnectionName(headers, [&](std::string_view name) {
      uint64_t hash = HashName(name);
      for (size_t slot = hash & mask;; slot = (slot + 1) & mask) {
        uint32_t first = slots[slot];
        if (first == kNone) return;
        if (hashes[first] != hash || !Same(headers.name(first), name, stats))
          continue;
        // A name listed twice marks its fields once.
        if (named_[first]) return;
        for (uint32_t i = first; i != kNone; i = next[i]) named_[i] = true;
        return;
      }
    });
  }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  template <typename Fn>
  static void ForEachConnectionName(const HeaderList& headers, Fn&& fn) {
    for (size_t i = 0; i < headers.size(); ++i) {
      if (!EqualsIgnoreCase(headers.name(i), "connection")) continue;
      std::string_view list = headers.value(i);
      while (!list.empty()) {
        size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
          item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
          item.remove_suffix(1);
        if (!item.empty()) fn(item);
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
      }
    }
  }

  static bool Same(std::string_view a, std::string_view b,
                   HeadWriteStats* stats) {
    if (stats) ++stats->name_comparisons;
    return EqualsIgnoreCase(a, b);
  }

  std::vector<bool>& named_;
};

}  // namespace

void AppendField(std::string_view name, std::string_view value,
                 std::string* out) {
  out->append(name);
  out->append(": ");
  out->append(value);
  out->append("\r\n");
}

bool IsHopByHop(std::string_view name) {
  switch (name.size()) {
    case 2:
      return EqualsIgnoreCase(name, "te");
    case 7:
      return EqualsIgnoreCase(name, "upgrade");
    case 10:
      return EqualsIgnoreCase(name, "connection") ||
             EqualsIgnoreCase(name, "keep-alive");
    case 14:
      return EqualsIgnoreCase(name, "content-length");
    case 16:
      return EqualsIgnoreCase(name, "proxy-connection");
    case 17:
      return EqualsIgnoreCase(name, "transfer-encoding");
    default:
      return false;
  }
}

bool DroppedFromTrailers(std::string_view name) {
  return IsHopByHop(name) || EqualsIgnoreCase(name, "host");
}

HopFields::HopFields(const HeaderList& headers, HeadWriteStats* stats)
    : headers_(headers) {
  ConnectionNamed(headers, stats, named_);
}

bool HopFields::operator()(size_t i) const {
  return IsHopByHop(headers_.name(i)) || (!named_.empty() && named_[i]);
}

namespace {

// Splits an absolute-form target into authority and origin-form path.
void SplitAbsoluteForm(std::string_view target, std::string_view* authority,
                       std::string_view* path) {
  size_t start = target.find("://");
  std::string_view rest = target.substr(start + 3);
  size_t end = rest.find_first_of("/?#");
  *authority = rest.substr(0, end);
  *path = end == std::string_view::npos ? std::string_view() : rest.substr(end);
}

void AppendFraming(Framing framing, uint64_t content_length,
                   std::string_view transfer_codings, std::string* out) {
  if (framing == Framing::kContentLength) {
    out->append("Content-Length: ");
    AppendNumber(content_length, out);
    out->append("\r\n");
  } else if (framing == Framing::kChunked) {
    out->append("Transfer-Encoding: ");
    if (!transfer_codings.empty()) {
      out->append(transfer_codings);
      out->append(", ");
    }
    out->append("chunked\r\n");
  }
}

}  // namespace

bool ExpectsContinue(const HttpParser& request) {
  if (request.http_minor() < 1) return false;
  auto expect = request.headers().Find("expect");
  return expect && EqualsIgnoreCase(*expect, "100-continue");
}

bool HasUnsupportedExpectation(const HttpParser& request) {
  if (request.http_minor() < 1) return false;
  auto expect = request.headers().Find("expect");
  return expect && !EqualsIgnoreCase(*expect, "100-continue");
}

bool WantsUpgrade(const HttpParser& request) {
  if (!request.upgrade()) return false;
  auto upgrade = request.headers().Find("upgrade");
  return upgrade && !upgrade->empty() && !HasToken(*upgrade, "h2c");
}

bool IsIdempotent(const HttpParser& request) {
  switch (request.method()) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_TRACE:
      return true;
    default:
      return false;
  }
}

void AppendRequestHead(const HttpParser& request,
                       const RequestForwarding& forwarding, std::string* out,
                       HeadWriteStats* stats) {
  const HeaderList& headers = request.headers();
  std::string_view target = request.target();
  std::string_view authority;
  bool absolute = !target.empty() && target[0] != '/' && target != "*";
  if (absolute) {
    std::string_view path;
    SplitAbsoluteForm(target, &authority, &path);
    target = path;
  }
  out->append(request.method_name());
  out->push_back(' ');
  // An absolute-form target without a path has the path "/", with or
  // without a query (RFC 9112 §3.2.1: "http://h?x" becomes "/?x").
  if (absolute && (target.empty() || target[0] != '/')) out->push_back('/');
  out->append(target);
  out->append(" HTTP/1.1\r\n");

  if (absolute) {
    AppendField("Host", authority, out);
  } else if (auto host = headers.Find("host")) {
    AppendField("Host", *host, out);
  } else if (!forwarding.default_host.empty()) {
    AppendField("Host", forwarding.default_host, out);
  }

  const HopFields named(headers, stats);
  std::string_view xff_first;
  bool xff_seen = false;
  bool forwarded_seen = false;
  for (size_t i = 0; i < headers.size(); ++i) {
    std::string_view name = headers.name(i);
    std::string_view value = headers.value(i);
    if (IsHopByHop(name)) {
      // "TE: trailers" is the one TE value a backend may rely on.
      if (EqualsIgnoreCase(name, "te") && HasToken(value, "trailers")) {
        AppendField("TE", "trailers", out);
      }
      continue;
    }
    if (EqualsIgnoreCase(name, "host") || EqualsIgnoreCase(name, "expect") ||
        EqualsIgnoreCase(name, "x-forwarded-proto") || named(i) ||
        (!forwarding.grpc_timeout.empty() &&
         EqualsIgnoreCase(name, "grpc-timeout"))) {
      continue;
    }
    if (EqualsIgnoreCase(name, "x-forwarded-for")) {
      // Several fields merge into one list, the client's address appended.
      if (!xff_seen) {
        xff_seen = true;
        xff_first = value;
        out->append("X-Forwarded-For: ");
        out->append(value);
        for (size_t j = i + 1; j < headers.size(); ++j) {
          if (EqualsIgnoreCase(headers.name(j), "x-forwarded-for")) {
            out->append(", ");
            out->append(headers.value(j));
          }
        }
        if (!xff_first.empty()) out->append(", ");
        out->append(forwarding.client_ip);
        out->append("\r\n");
      }
      continue;
    }
    if (EqualsIgnoreCase(name, "forwarded")) {
      if (!forwarded_seen) {
        forwarded_seen = true;
        out->append("Forwarded: ");
        out->append(value);
        for (size_t j = i + 1; j < headers.size(); ++j) {
          if (EqualsIgnoreCase(headers.name(j), "forwarded")) {
            out->append(", ");
            out->append(headers.value(j));
          }
        }
        if (!value.empty()) out->append(", ");
        out->append("for=");
        bool v6 = forwarding.client_ip.find(':') != std::string_view::npos;
        if (v6) out->append("\"[");
        out->append(forwarding.client_ip);
        if (v6) out->append("]\"");
        out->append(forwarding.client_tls ? ";proto=https\r\n"
                                          : ";proto=http\r\n");
      }
      continue;
    }
    AppendField(name, value, out);
  }
  if (!xff_seen) AppendField("X-Forwarded-For", forwarding.client_ip, out);
  if (!forwarded_seen) {
    out->append("Forwarded: for=");
    bool v6 = forwarding.client_ip.find(':') != std::string_view::npos;
    if (v6) out->append("\"[");
    out->append(forwarding.client_ip);
    if (v6) out->append("]\"");
    out->append(forwarding.client_tls ? ";proto=https\r\n" : ";proto=http\r\n");
  }
  if (!forwarding.grpc_timeout.empty())
    AppendField("grpc-timeout", forwarding.grpc_timeout, out);
  AppendField("X-Forwarded-Proto", forwarding.client_tls ? "https" : "http",
              out);
  AppendFraming(request.framing(), request.content_length(),
                request.transfer_codings(), out);
  if (forwarding.upgrade) {
    AppendField("Connection", "upgrade", out);
    AppendField("Upgrade", *headers.Find("upgrade"), out);
  }
  out->append("\r\n");
}

ResponsePlan PlanResponse(const HttpParser& response, bool head_request,
                          int client_minor, bool client_keep_alive) {
  ResponsePlan plan;
  plan.close = !client_keep_alive;
  int status = response.status_code();
  if (head_request || status == 204 || status == 304 ||
      (status >= 100 && status < 200)) {
    plan.framing = Framing::kNone;
    return plan;
  }
  switch (response.framing()) {
    case Framing::kContentLength:
      plan.framing = Framing::kContentLength;
      break;
    case Framing::kNone:
      // A response without framing fields that llhttp ends at once has an
      // empty body; say so explicitly.
      plan.framing = Framing::kContentLength;
      break;
    case Framing::kChunked:
    case Framing::kUntilClose:
      if (response.framing() == Framing::kUntilClose &&
          !response.transfer_codings().empty()) {
        // Its last coding is not chunked (RFC 9112 §6.3): the codings and
        // the bytes go on as they came, and closing ends the body.
        plan.framing = Framing::kUntilClose;
        plan.close = true;
      } else if (client_minor >= 1) {
        plan.framing = Framing::kChunked;
      } else {
        plan.framing = Framing::kUntilClose;
        plan.close = true;
      }
      break;
  }
  return plan;
}

void AppendResponseHead(const HttpParser& response, const ResponsePlan& plan,
                        int client_minor, bool head_request, std::string* out,
                        HeadWriteStats* stats) {
  const HeaderList& headers = response.headers();
  int status = response.status_code();
  out->append("HTTP/1.1 ");
  AppendNumber(static_cast<uint64_t>(status), out);
  out->push_back(' ');
  out->append(response.reason());
  out->append("\r\n");
  const bool switching = status == 101;
  const HopFields named(headers, stats);
  for (size_t i = 0; i < headers.size(); ++i) {
    std::string_view name = headers.name(i);
    if (named(i)) continue;
    AppendField(name, headers.value(i), out);
  }
  if (switching) {
    AppendField("Connection", "upgrade", out);
    if (auto upgrade = headers.Find("upgrade"))
      AppendField("Upgrade", *upgrade, out);
    out->append("\r\n");
    return;
  }
  if (head_request || status == 304) {
    // The fields describe the representation a GET would have sent.
    if (response.framing() == Framing::kContentLength ||
        headers.Find("content-length")) {
      if (auto length = headers.Find("content-length")) {
        AppendField("Content-Length", *length, out);
      }
    }
  } else if (plan.framing == Framing::kContentLength) {
    AppendFraming(Framing::kContentLength,
                  response.framing() == Framing::kContentLength
                      ? response.content_length()
                      : 0,
                  {}, out);
  } else if (plan.framing == Framing::kChunked) {
    AppendFraming(Framing::kChunked, 0, response.transfer_codings(), out);
  } else if (plan.framing == Framing::kUntilClose &&
             response.framing() == Framing::kUntilClose &&
             !response.transfer_codings().empty()) {
    AppendField("Transfer-Encoding", response.transfer_codings(), out);
  }
  if (status >= 100 && status < 200) {
    out->append("\r\n");
    return;
  }
  if (plan.close) {
    out->append("Connection: close\r\n");
  } else if (client_minor == 0) {
    out->append("Connection: keep-alive\r\n");
  }
  out->append("\r\n");
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 426:
      return "Upgrade Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

void AppendSimpleResponse(int status, std::string_view detail, bool close,
                          int client_minor, std::string* out) {
  AppendSimpleResponse(status, detail, close, client_minor, {}, out);
}

void AppendSimpleResponse(int status, std::string_view detail, bool close,
                          int client_minor, std::string_view extra_fields,
                          std::string* out) {
  std::string_view phrase = ReasonPhrase(status);
  out->append("HTTP/1.1 ");
  AppendNumber(static_cast<uint64_t>(status), out);
  out->push_back(' ');
  out->append(phrase);
  out->append(
      "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  // Body: "<status> <phrase>: <detail>\n"
  uint64_t body_length =
      3 + 1 + phrase.size() + (detail.empty() ? 0 : 2 + detail.size()) + 1;
  AppendNumber(body_length, out);
  out->append("\r\n");
  out->append(extra_fields);
  if (close) {
    out->append("Connection: close\r\n");
  } else if (client_minor == 0) {
    out->append("Connection: keep-alive\r\n");
  }
  out->append("\r\n");
  AppendSimpleBody(status, detail, out);
}

void AppendSimpleBody(int status, std::string_view detail, std::string* out) {
  AppendNumber(static_cast<uint64_t>(status), out);
  out->push_back(' ');
  out->append(ReasonPhrase(status));
  if (!detail.empty()) {
    out->append(": ");
    out->append(detail);
  }
  out->push_back('\n');
}

void AppendChunkHeader(uint64_t length, std::string* out) {
  char buffer[20];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), length, 16);
  out->append(buffer, end);
  out->append("\r\n");
}

void AppendLastChunk(const HeaderList& trailers, std::string* out) {
  out->append("0\r\n");
  for (size_t i = 0; i < trailers.size(); ++i) {
    std::string_view name = trailers.name(i);
    if (DroppedFromTrailers(name)) continue;
    AppendField(name, trailers.value(i), out);
  }
  out->append("\r\n");
}

}  // namespace tandem::net
