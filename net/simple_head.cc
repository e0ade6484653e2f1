// HttpParser::TakeSimpleRequestHead: an HTTP/2 request's head taken without
// llhttp (see http_parser.h). Only what llhttp and HttpParser's own checks
// would take unchanged is taken here; everything else goes through Execute(),
// which is the one place that answers a bad head. The unit test compares the
// two on generated heads, taken or not.
#include <array>
#include <string_view>

#include "net/http_parser.h"

namespace tandem::net {
namespace {

// Letters, digits and `extra`.
constexpr std::array<bool, 256> CharSet(std::string_view extra) {
  std::array<bool, 256> chars{};
  for (int c = 'a'; c <= 'z'; ++c) chars[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) chars[c] = true;
  for (int c = '0'; c <= '9'; ++c) chars[c] = true;
  for (char c : extra) chars[static_cast<unsigned char>(c)] = true;
  return chars;
}

// Characters of an origin-form target taken here: RFC 3986 unreserved,
// sub-delims, ":", "@", "/", "?" and "%" (others, which llhttp may take
// too, go through it).
constexpr std::array<bool, 256> kTargetChars = CharSet("-._~!$&'()*+,;=:@/?%");
// RFC 9110 tchar.
constexpr std::array<bool, 256> kTokenChars = CharSet("!#$%&'*+-.^_`|~");

bool All(std::string_view text, const std::array<bool, 256>& chars) {
  bool ok = !text.empty();
  for (char c : text) ok &= chars[static_cast<unsigned char>(c)];
  return ok;
}

// Visible characters (no obs-text); spaces and tabs only inside.
bool IsPlainValue(std::string_view value) {
  if (value.empty() || value.front() == ' ' || value.front() == '\t' ||
      value.back() == ' ' || value.back() == '\t') {
    return false;
  }
  bool ok = true;
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    ok &= (u >= 0x20 && u < 0x7f) || u == '\t';
  }
  return ok;
}

// The methods taken here (CONNECT and PRI never are).
bool MethodOf(std::string_view name, uint8_t* method) {
  struct Known {
    std::string_view name;
    llhttp_method_t method;
  };
  static constexpr Known kKnown[] = {
      {"GET", HTTP_GET},     {"HEAD", HTTP_HEAD},     {"POST", HTTP_POST},
      {"PUT", HTTP_PUT},     {"DELETE", HTTP_DELETE}, {"OPTIONS", HTTP_OPTIONS},
      {"PATCH", HTTP_PATCH}, {"TRACE", HTTP_TRACE},
  };
  for (const Known& known : kKnown) {
    if (name == known.name) {
      *method = static_cast<uint8_t>(known.method);
      return true;
    }
  }
  return false;
}

// Fields llhttp reads for framing or the connection: theirs to judge.
constexpr std::array<std::string_view, 6> kFramingFields = {
    "content-length",   "transfer-encoding", "connection",
    "proxy-connection", "keep-alive",        "upgrade"};

bool IsFramingField(std::string_view name) {
  for (std::string_view field : kFramingFields) {
    if (EqualsIgnoreCase(name, field)) return true;
  }
  return false;
}

// One "name: value\r\n" line at the front of `*rest`, removed from it and
// split (its characters are checked by the caller, once).
bool NextField(std::string_view* rest, std::string_view* name,
               std::string_view* value) {
  const size_t end = rest->find("\r\n");
  if (end == std::string_view::npos) return false;
  const std::string_view line = rest->substr(0, end);
  rest->remove_prefix(end + 2);
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon + 1 >= line.size() ||
      line[colon + 1] != ' ') {
    return false;
  }
  *name = line.substr(0, colon);
  *value = line.substr(colon + 2);
  return true;
}

}  // namespace

bool HttpParser::TakeSimpleRequestHead(std::string_view text) {
  if (type_ != Type::kRequest || message_started_ || error_status_ != 0 ||
      text.size() > max_head_bytes_) {
    return false;
  }
  // The request line.
  const size_t line_end = text.find("\r\n");
  if (line_end == std::string_view::npos) return false;
  std::string_view line = text.substr(0, line_end);
  const size_t space = line.find(' ');
  uint8_t method = 0;
  if (space == std::string_view::npos ||
      !MethodOf(line.substr(0, space), &method)) {
    return false;
  }
  line.remove_prefix(space + 1);
  constexpr std::string_view kVersion = " HTTP/1.1";
  if (line.size() <= kVersion.size() ||
      line.substr(line.size() - kVersion.size()) != kVersion) {
    return false;
  }
  const std::string_view target = line.substr(0, line.size() - kVersion.size());
  if (target[0] != '/' || !All(target, kTargetChars)) return false;

  // The fields, checked all before any is kept.
  const std::string_view fields = text.substr(line_end + 2);
  std::string_view rest = fields;
  std::string_view name;
  std::string_view value;
  size_t count = 0;
  size_t hosts = 0;
  while (!rest.empty() && rest.substr(0, 2) != "\r\n") {
    if (!NextField(&rest, &name, &value) || !All(name, kTokenChars) ||
        !IsPlainValue(value) || IsFramingField(name)) {
      return false;
    }
    ++count;
    if (EqualsIgnoreCase(name, "host")) {
      if (++hosts > 1 || !IsValidHost(value)) return false;
    }
  }
  // The head ends with its empty line, and the text with it: no body.
  if (rest != "\r\n" || hosts != 1 || count > max_fields_) return false;

  // As Execute() leaves a complete message with no body.
  StartMessage();
  target_.assign(target);
  rest = fields;
  while (rest.size() > 2 && NextField(&rest, &name, &value))
    headers_.Add(name, value);
  parser_.method = method;
  parser_.http_major = 1;
  parser_.http_minor = 1;
  parser_.flags = 0;
  parser_.upgrade = 0;
  parser_.content_length = 0;
  llhttp_pause(&parser_);  // as after a message: the next waits for Resume()
  head_done_ = true;
  head_bytes_ = text.size();
  framing_ = Framing::kNone;
  section_ = Section::kHead;
  section_bytes_ = 0;
  last_fed_byte_ = '\n';
  message_started_ = false;
  return true;
}

}  // namespace tandem::net
