// HTTP/2 messages in and out of the HTTP/1.1 model; see h2_message.h.
#include "net/h2_message.h"

#include <algorithm>
#include <charconv>

namespace tandem::net {
namespace {

// What SETTINGS_MAX_HEADER_LIST_SIZE counts for one field (RFC 9113 §6.5.2).
constexpr uint64_t kFieldOverhead = 32;

}  // namespace

// ---- requests ----------------------------------------------------------

void H2RequestHead::Start(uint64_t max_bytes) {
  max_bytes_ = max_bytes;
  bytes_ = 0;
  // What one large head grew is not kept for the connection's life.
  constexpr size_t kKeptBytes = 4096;
  for (std::string* s :
       {&method_, &scheme_, &authority_, &path_, &host_, &cookies_, &fields_}) {
    if (s->capacity() > kKeptBytes) {
      std::string().swap(*s);
    } else {
      s->clear();
    }
  }
  content_length_ = false;
  grpc_ = false;
  error_status_ = 0;
  error_reason_ = "";
}

void H2RequestHead::Add(std::string_view name, std::string_view value) {
  bytes_ += name.size() + value.size() + kFieldOverhead;
  if (too_large()) return;  // counted, never kept
  if (!name.empty() && name[0] == ':') {
    if (name == ":method") {
      method_.assign(value);
    } else if (name == ":scheme") {
      scheme_.assign(value);
    } else if (name == ":authority") {
      authority_.assign(value);
    } else if (name == ":path") {
      path_.assign(value);
    }
    return;  // nghttp2 refused any other pseudo-field
  }
  if (name == "cookie") {
    // Split cookies join into one field for HTTP/1.1 (RFC 9113 §8.2.3).
    if (!cookies_.empty()) cookies_.append("; ");
    cookies_.append(value);
    return;
  }
  if (name == "host") {
    host_.assign(value);
    return;
  }
  if (name == "content-length") content_length_ = true;
  if (name == "content-type" && value.substr(0, 16) == "application/grpc")
    grpc_ = true;
  AppendField(name, value, &fields_);
}

bool H2RequestHead::Write(bool end_stream, std::string* out, bool* chunked) {
  *chunked = false;
  if (too_large()) return Fail(431, "request header fields too large");
  if (method_.empty()) return Fail(400, "no :method");
  std::string_view authority = authority_;
  if (authority.empty()) {
    authority = host_;
  } else if (!host_.empty() && host_ != authority_) {
    // RFC 9113 §8.3.1: a Host naming another origin makes it malformed.
    return Fail(400, "Host differs from :authority");
  }
  if (method_ == "CONNECT") {
    out->append("CONNECT ");
    out->append(authority);
  } else {
    if (path_.empty()) return Fail(400, "no :path");
    out->append(method_);
    out->push_back(' ');
    out->append(path_);
  }
  out->append(" HTTP/1.1\r\n");
  if (!authority.empty()) AppendField("host", authority, out);
  out->append(fields_);
  if (!cookies_.empty()) AppendField("cookie", cookies_, out);
  if (!end_stream && !content_length_) {
    out->append("transfer-encoding: chunked\r\n");
    *chunked = true;
  }
  out->append("\r\n");
  return true;
}

void H2RequestTrailers::Add(std::string_view name, std::string_view value) {
  bytes_ += name.size() + value.size() + kFieldOverhead;
  if (too_large() || name[0] == ':' || DroppedFromTrailers(name)) return;
  AppendField(name, value, &fields_);
}

void H2RequestTrailers::Write(std::string* out) const {
  out->append("0\r\n");
  out->append(fields_);
  out->append("\r\n");
}

// ---- responses ---------------------------------------------------------

void H2Fields::Clear() {
  storage_.clear();
  spans_.clear();
  nva_.clear();
}

void H2Fields::Add(std::string_view name, std::string_view value,
                   bool lowercase) {
  Span span{storage_.size(), name.size(), 0, value.size()};
  storage_.append(name);
  if (lowercase) {
    for (size_t i = span.name; i < storage_.size(); ++i) {
      char& c = storage_[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
  }
  span.value = storage_.size();
  storage_.append(value);
  spans_.push_back(span);
}

void H2Fields::Finish() {
  nva_.resize(spans_.size());
  for (size_t i = 0; i < spans_.size(); ++i) {
    const Span& span = spans_[i];
    nva_[i] = {reinterpret_cast<uint8_t*>(storage_.data() + span.name),
               reinterpret_cast<uint8_t*>(storage_.data() + span.value),
               span.name_length, span.value_length, NGHTTP2_NV_FLAG_NONE};
  }
}

void H2Fields::Build(const HttpParser& response, bool head_request) {
  Clear();
  char status[8];
  auto [end, ec] =
      std::to_chars(status, status + sizeof(status), response.status_code());
  Add(":status", std::string_view(status, end - status), false);
  const HeaderList& headers = response.headers();
  const HopFields hop(headers);
  for (size_t i = 0; i < headers.size(); ++i) {
    if (!hop(i)) Add(headers.name(i), headers.value(i), true);
  }
  const int code = response.status_code();
  const bool informational = code >= 100 && code < 200;
  if (!informational && code != 204) {
    // A length the body will match (a HEAD's or 304's describes a GET's).
    if (auto length = headers.Find("content-length")) {
      if (response.framing() == Framing::kContentLength || head_request ||
          code == 304) {
        Add("content-length", *length, false);
      }
    }
  }
  Finish();
}

void H2Fields::BuildRequest(const HttpParser& request, std::string_view scheme,
                            std::string_view default_authority) {
  Clear();
  const HeaderList& headers = request.headers();
  Add(":method", request.method_name(), false);
  Add(":scheme", scheme, false);
  Add(":authority", headers.Find("host").value_or(default_authority), false);
  Add(":path", request.target(), false);
  const HopFields hop(headers);
  for (size_t i = 0; i < headers.size(); ++i) {
    const std::string_view name = headers.name(i);
    if (EqualsIgnoreCase(name, "te")) {
      if (HasToken(headers.value(i), "trailers")) Add("te", "trailers", false);
      continue;
    }
    if (hop(i) || EqualsIgnoreCase(name, "host") ||
        EqualsIgnoreCase(name, "http2-settings")) {
      continue;
    }
    Add(name, headers.value(i), true);
  }
  if (request.framing() == Framing::kContentLength) {
    char number[24];
    auto [end, ec] = std::to_chars(number, number + sizeof(number),
                                   request.content_length());
    Add("content-length", std::string_view(number, end - number), false);
  }
  Finish();
}

void H2Fields::BuildStatus(int status) {
  Clear();
  char number[8];
  auto [end, ec] = std::to_chars(number, number + sizeof(number), status);
  Add(":status", std::string_view(number, end - number), false);
  Finish();
}

void H2Fields::BuildLocal(int status, std::string_view content_type,
                          uint64_t content_length, std::string_view fields) {
  Clear();
  char number[24];
  auto [end, ec] = std::to_chars(number, number + sizeof(number), status);
  Add(":status", std::string_view(number, end - number), false);
  Add("content-type", content_type, false);
  auto [length_end, ec2] =
      std::to_chars(number, number + sizeof(number), content_length);
  Add("content-length", std::string_view(number, length_end - number), false);
  // "Name: value\r\n" lines.
  while (!fields.empty()) {
    size_t eol = fields.find("\r\n");
    std::string_view line = fields.substr(0, eol);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      Add(line.substr(0, colon), value, true);
    }
    if (eol == std::string_view::npos) break;
    fields.remove_prefix(eol + 2);
  }
  Finish();
}

void H2Fields::BuildTrailers(const HeaderList& trailers) {
  Clear();
  for (size_t i = 0; i < trailers.size(); ++i) {
    if (!DroppedFromTrailers(trailers.name(i)))
      Add(trailers.name(i), trailers.value(i), true);
  }
  Finish();
}

void H2Fields::BuildGrpcStatus(int code, std::string_view message) {
  Clear();
  Add(":status", "200", false);
  Add("content-type", "application/grpc", false);
  char number[8];
  auto [end, ec] = std::to_chars(number, number + sizeof(number), code);
  Add("grpc-status", std::string_view(number, end - number), false);
  // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
  std::string encoded;
  static const char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : message) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      encoded.push_back(static_cast<char>(c));
    } else {
      encoded.push_back('%');
      encoded.push_back(kHex[c >> 4]);
      encoded.push_back(kHex[c & 15]);
    }
  }
  Add("grpc-message", encoded, false);
  Finish();
}

int GrpcStatusFor(int status, bool overload) {
  constexpr int kInvalidArgument = 3, kDeadlineExceeded = 4,
                kResourceExhausted = 8, kInternal = 13, kUnavailable = 14;
  switch (status) {
    case 429:
      return kResourceExhausted;
    case 503:
      return overload ? kResourceExhausted : kUnavailable;
    case 502:
      return kUnavailable;
    case 408:
    case 504:
      return kDeadlineExceeded;
    case 400:
    case 413:
    case 414:
    case 431:
      return kInvalidArgument;
    default:
      return kInternal;
  }
}

std::optional<std::chrono::nanoseconds> ParseGrpcTimeout(
    std::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  int64_t amount = 0;
  const char* end = value.data() + value.size() - 1;
  auto [ptr, ec] = std::from_chars(value.data(), end, amount);
  if (ec != std::errc() || ptr != end || amount < 0) return std::nullopt;
  using std::chrono::nanoseconds;
  switch (*end) {
    case 'H':
      return std::chrono::hours(amount);
    case 'M':
      return std::chrono::minutes(amount);
    case 'S':
      return std::chrono::seconds(amount);
    case 'm':
      return std::chrono::milliseconds(amount);
    case 'u':
      return std::chrono::microseconds(amount);
    case 'n':
      return nanoseconds(amount);
    default:
      return std::nullopt;
  }
}

std::string FormatGrpcTimeout(std::chrono::nanoseconds left) {
  // Milliseconds, rounded up so a little time left never reads as none.
  const int64_t ms = std::max<int64_t>(1, (left.count() + 999'999) / 1'000'000);
  return std::to_string(std::min<int64_t>(ms, 99'999'999)) + "m";
}

}  // namespace tandem::net
