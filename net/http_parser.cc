// HTTP/1.x message parsing for the proxy; see http_parser.h.
#include "net/http_parser.h"

#include <algorithm>
#include <cstring>

namespace tandem::net {
namespace {

inline char Lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c + 32) : c; }

inline bool IsOws(char c) { return c == ' ' || c == '\t'; }

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

// Calls `fn` on each trimmed, non-empty element of a comma-separated list.
template <typename Fn>
void ForEachListElement(std::string_view list, Fn&& fn) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = TrimOws(list.substr(0, comma));
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

bool IsKnownTransferCoding(std::string_view coding) {
  // A coding may carry parameters ("gzip;q=1" is not valid here, but be
  // lenient in what the name is compared on).
  coding = TrimOws(coding.substr(0, coding.find(';')));
  for (std::string_view known :
       {"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress"}) {
    if (EqualsIgnoreCase(coding, known)) return true;
  }
  return false;
}

bool IsControl(unsigned char c) { return (c < 0x20 && c != '\t') || c == 0x7f; }

}  // namespace

bool HasControlCharacter(std::string_view text) {
  const char* data = text.data();
  const size_t length = text.size();
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHigh = 0x8080808080808080ULL;
  size_t i = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    const uint64_t below_space = (word - 0x20 * kOnes) & ~word & kHigh;
    const uint64_t del = word ^ (0x7f * kOnes);
    const uint64_t is_del = (del - kOnes) & ~del & kHigh;
    if ((below_space | is_del) == 0) continue;
    // A word with a byte under 0x20 or DEL in it: a tab, or a control.
    for (size_t j = i; j < i + 8; ++j) {
      if (IsControl(static_cast<unsigned char>(data[j]))) return true;
    }
  }
  for (; i < length; ++i) {
    if (IsControl(static_cast<unsigned char>(data[i]))) return true;
  }
  return false;
}

bool IsValidHost(std::string_view host) {
  for (char c : host) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
    switch (c) {
      case '/':
      case '\\':
      case '@':
      case '?':
      case '#':
      case '"':
      case '<':
      case '>':
      case '{':
      case '}':
      case '|':
      case '^':
      case '`':
        return false;
      default:
        break;
    }
  }
  return true;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

bool HasToken(std::string_view value, std::string_view token) {
  bool found = false;
  ForEachListElement(value, [&](std::string_view item) {
    if (EqualsIgnoreCase(item, token)) found = true;
  });
  return found;
}

std::optional<std::string_view> HeaderList::Find(std::string_view field) const {
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (EqualsIgnoreCase(name(i), field)) return value(i);
  }
  return std::nullopt;
}

size_t HeaderList::Count(std::string_view field) const {
  size_t count = 0;
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (EqualsIgnoreCase(name(i), field)) ++count;
  }
  return count;
}

void HeaderList::AppendName(const char* data, size_t length) {
  if (fields_.empty() || in_value_) {
    Field field;
    field.name_offset = static_cast<uint32_t>(bytes_.size());
    fields_.push_back(field);
    in_value_ = false;
  }
  bytes_.append(data, length);
  fields_.back().name_length += static_cast<uint32_t>(length);
}

void HeaderList::AppendValue(const char* data, size_t length) {
  if (fields_.empty()) return;
  Field& field = fields_.back();
  if (!in_value_) {
    field.value_offset = static_cast<uint32_t>(bytes_.size());
    in_value_ = true;
  }
  bytes_.append(data, length);
  field.value_length += static_cast<uint32_t>(length);
}

void HeaderList::FinishValue() {
  if (fields_.empty()) return;
  Field& field = fields_.back();
  if (!in_value_) {  // empty value: llhttp sends no value callback
    field.value_offset = static_cast<uint32_t>(bytes_.size());
    in_value_ = true;
  }
  while (field.value_length > 0 &&
         IsOws(bytes_[field.value_offset + field.value_length - 1])) {
    --field.value_length;
  }
}

void HeaderList::Add(std::string_view field, std::string_view value) {
  AppendName(field.data(), field.size());
  AppendValue(value.data(), value.size());
  FinishValue();
}

bool HeaderList::ShrinkIfLarge(size_t max_bytes) {
  if (bytes_.capacity() <= max_bytes &&
      fields_.capacity() * sizeof(Field) <= max_bytes) {
    return false;
  }
  std::string().swap(bytes_);
  std::vector<Field>().swap(fields_);
  in_value_ = false;
  return true;
}

HttpParser::HttpParser(Type type, Handler* handler)
    : type_(type), handler_(handler) {
  llhttp_init(&parser_, type == Type::kRequest ? HTTP_REQUEST : HTTP_RESPONSE,
              Settings());
  parser_.data = this;
}

const llhttp_settings_t* HttpParser::Settings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = OnMessageBeginCb;
    s.on_url = OnUrlCb;
    s.on_url_complete = OnUrlCompleteCb;
    s.on_status = OnStatusCb;
    s.on_header_field = OnHeaderFieldCb;
    s.on_header_field_complete = OnHeaderFieldCompleteCb;
    s.on_header_value = OnHeaderValueCb;
    s.on_header_value_complete = OnHeaderValueCompleteCb;
    s.on_status_complete = OnStatusCompleteCb;
    s.on_headers_complete = OnHeadersCompleteCb;
    s.on_body = OnBodyCb;
    s.on_chunk_header = OnChunkHeaderCb;
    s.on_chunk_complete = OnChunkCompleteCb;
    s.on_message_complete = OnMessageCompleteCb;
    return s;
  }();
  return &settings;
}

void HttpParser::Reset() {
  llhttp_reset(&parser_);
  StartMessage();
  message_started_ = false;
  error_status_ = 0;
  error_reason_ = "";
  last_fed_byte_ = 0;
  section_ = Section::kHead;
  section_bytes_ = 0;
  section_ended_ = false;
  internal_pause_ = false;
  status_line_done_ = false;
  protocol_pending_ = false;
}

void HttpParser::ShrinkIfLarge(size_t max_bytes) {
  if (message_started_) return;
  auto large = [max_bytes](const std::string& s) {
    return s.capacity() > max_bytes;
  };
  bool shrunk = headers_.ShrinkIfLarge(max_bytes);
  shrunk = trailers_.ShrinkIfLarge(max_bytes) || shrunk;
  if (!shrunk && !large(target_) && !large(reason_) &&
      !large(transfer_codings_) && !large(first_content_length_) &&
      !large(current_content_length_)) {
    return;
  }
  // One message's fields go together: clear them all, free the big ones.
  headers_.Clear();
  trailers_.Clear();
  for (std::string* s : {&target_, &reason_, &transfer_codings_,
                         &first_content_length_, &current_content_length_}) {
    if (large(*s)) {
      std::string().swap(*s);
    } else {
      s->clear();
    }
  }
}

void HttpParser::StartMessage() {
  target_.clear();
  reason_.clear();
  headers_.Clear();
  trailers_.Clear();
  transfer_codings_.clear();
  framing_ = Framing::kNone;
  content_length_ = 0;
  head_bytes_ = 0;
  body_bytes_ = 0;
  head_done_ = false;
  in_trailers_ = false;
  is_informational_ = false;
  field_is_content_length_ = false;
  seen_content_length_ = false;
  first_content_length_.clear();
  current_content_length_.clear();
  value_started_ = false;
}

std::string_view HttpParser::method_name() const {
  return llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
}

bool HttpParser::keep_alive() const {
  return llhttp_should_keep_alive(const_cast<llhttp_t*>(&parser_)) != 0;
}

int HttpParser::Fail(int status, const char* reason) {
  if (error_status_ == 0) {
    error_status_ = status;
    error_reason_ = reason;
  }
  return -1;
}

int HttpParser::Invalid(int request_status, const char* reason) {
  return Fail(type_ == Type::kResponse ? 502 : request_status, reason);
}

uint64_t HttpParser::SectionLimit() const {
  switch (section_) {
    case Section::kHead:
      if (type_ == Type::kResponse && !status_line_done_)
        return std::min(max_head_bytes_, kMaxStatusLineBytes);
      return max_head_bytes_;
    case Section::kBody:
      return kUnlimited;
    case Section::kChunkLine:
      return kMaxChunkLineBytes;
    case Section::kTrailers:
      return max_head_bytes_;
  }
  return kUnlimited;
}

void HttpParser::EndSection(Section next) {
  section_ended_ = true;
  next_section_ = next;
}

void HttpParser::FailSectionLimit() {
  switch (section_) {
    case Section::kHead:
      if (type_ == Type::kResponse) {
        Fail(502, status_line_done_ ? "response head too large"
                                    : "response status line too long");
      } else if (target_.size() * 2 >= max_head_bytes_ &&
                 (target_.size() >= max_head_bytes_ || parser_.method == 0 ||
                  headers_.empty())) {
        // Still in (or just past) a target that takes most of the budget.
        Fail(414, "request target too long");
      } else {
        Fail(431, "request header too large");
      }
      break;
    case Section::kChunkLine:
      Invalid(400, "chunk size line too long");
      break;
    case Section::kTrailers:
      Invalid(431, "trailer section too large");
      break;
    case Section::kBody:
      break;
  }
}

HttpParser::Result HttpParser::Execute(const char* data, size_t length,
                                       size_t* consumed) {
  *consumed = 0;
  if (error_status_ != 0) return Result::kError;
  size_t offset = 0;
  for (;;) {
    // Never hand llhttp more than what is left of the current section's
    // budget: a part of a message that never ends cannot grow without
    // bound, and bytes llhttp skips without a callback still count.
    if (protocol_pending_) {
      // The first byte of the protocol name, past the spaces after the
      // target: HTTP/ only (llhttp checks the rest).
      size_t i = offset;
      while (i < length && data[i] == ' ') ++i;
      if (i < length) {
        protocol_pending_ = false;
        if (data[i] == 'R' || data[i] == 'I') {
          Fail(400, "not an HTTP request");
          return Result::kError;
        }
      }
    }
    const char* start = data + offset;
    size_t feed = length - offset;
    uint64_t limit = SectionLimit();
    if (limit != kUnlimited) {
      feed = static_cast<size_t>(
          std::min<uint64_t>(feed, limit - std::min(section_bytes_, limit)));
    }
    chunk_start_ = start;
    section_ended_ = false;
    internal_pause_ = false;
    llhttp_errno_t err = llhttp_execute(&parser_, start, feed);
    const char* stop =
        err == HPE_OK ? start + feed : llhttp_get_error_pos(&parser_);
    if (stop == nullptr || stop < start || stop > start + feed)
      stop = start + feed;
    size_t used = static_cast<size_t>(stop - start);
    offset += used;
    *consumed = offset;
    if (used > 0) last_fed_byte_ = stop[-1];
    section_bytes_ += used;

    if (section_ended_) {
      if (section_ == Section::kHead) head_bytes_ = section_bytes_;
      section_ = next_section_;
      section_bytes_ = 0;
      if (section_ == Section::kHead) status_line_done_ = false;
    } else if (err == HPE_OK && section_bytes_ >= SectionLimit()) {
      // The budget is spent and the section goes on: it is over its limit
      // (a section that fits ends, with a pause, on its last byte).
      FailSectionLimit();
      return Result::kError;
    }

    switch (err) {
      case HPE_OK:
        if (offset < length) continue;
        return Result::kNeedMore;
      case HPE_PAUSED:
        if (internal_pause_) {
          // Go on even with no input left: what follows a section's end
          // may need no byte (a message without body completes).
          llhttp_resume(&parser_);
          continue;
        }
        return head_done_ && !message_started_ ? Result::kComplete
               : head_done_                    ? Result::kPausedHead
                                               : Result::kNeedMore;
      case HPE_PAUSED_UPGRADE:
        return Result::kUpgrade;
      default:
        break;
    }
    break;
  }
  if (error_status_ == 0) {
    llhttp_errno_t err = llhttp_get_errno(&parser_);
    if (type_ == Type::kResponse) {
      Fail(502, "invalid response from backend");
    } else if (err == HPE_INVALID_METHOD) {
      Fail(400, "invalid method");
    } else if (err == HPE_INVALID_VERSION) {
      Fail(400, "invalid HTTP version");
    } else if (err == HPE_INVALID_URL) {
      Fail(400, "invalid request target");
    } else if (err == HPE_INVALID_CHUNK_SIZE) {
      Fail(400, "invalid chunk size");
    } else if (err == HPE_UNEXPECTED_CONTENT_LENGTH ||
               err == HPE_INVALID_CONTENT_LENGTH ||
               err == HPE_INVALID_TRANSFER_ENCODING) {
      Fail(400, "ambiguous message framing");
    } else if (err == HPE_PAUSED_H2_UPGRADE) {
      Fail(400, "HTTP/2 preface on an HTTP/1.1 port");
    } else {
      Fail(400, "malformed request");
    }
  }
  return Result::kError;
}

void HttpParser::Resume() { llhttp_resume(&parser_); }

void HttpParser::ResumeAfterUpgrade() { llhttp_resume_after_upgrade(&parser_); }

bool HttpParser::FinishAtEof() {
  if (framing_ != Framing::kUntilClose || !head_done_) return false;
  section_ended_ = false;
  llhttp_errno_t err = llhttp_finish(&parser_);
  if (section_ended_) {
    section_ = next_section_;
    section_bytes_ = 0;
    status_line_done_ = false;
  }
  return err == HPE_OK || err == HPE_PAUSED;
}

int HttpParser::OnMessageBeginCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->StartMessage();
  self->message_started_ = true;
  return 0;
}

int HttpParser::OnUrlCb(llhttp_t* p, const char* at, size_t length) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->target_.append(at, length);
  if (self->target_.size() > self->max_head_bytes_) {
    return self->Fail(414, "request target too long");
  }
  return 0;
}

int HttpParser::OnUrlCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  // Stop here so that Execute() sees where the protocol name begins.
  self->protocol_pending_ = true;
  self->internal_pause_ = true;
  return HPE_PAUSED;
}

int HttpParser::OnStatusCb(llhttp_t* p, const char* at, size_t length) {
  auto* self = static_cast<HttpParser*>(p->data);
  // The reason is relayed as it came: no controls (HTAB apart), as in a
  // field value. Its length is bounded by kMaxStatusLineBytes.
  for (size_t i = 0; i < length; ++i) {
    unsigned char c = static_cast<unsigned char>(at[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      return self->Fail(502, "control character in response reason");
    }
  }
  self->reason_.append(at, length);
  return 0;
}

int HttpParser::OnStatusCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->status_line_done_ = true;
  return 0;
}

int HttpParser::OnHeaderFieldCb(llhttp_t* p, const char* at, size_t length) {
  auto* self = static_cast<HttpParser*>(p->data);
  HeaderList& list = self->head_done_ ? self->trailers_ : self->headers_;
  list.AppendName(at, length);
  self->value_started_ = false;
  return 0;
}

int HttpParser::OnHeaderFieldCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->field_is_content_length_ = false;
  const HeaderList& current =
      self->head_done_ ? self->trailers_ : self->headers_;
  if (current.empty() || current.name(current.size() - 1).empty()) {
    return self->Invalid(400, "empty header field name");
  }
  if (current.size() > self->max_fields_) {
    return self->Invalid(431, self->head_done_ ? "too many trailer fields"
                                               : "too many header fields");
  }
  if (self->head_done_) return 0;
  const HeaderList& list = self->headers_;
  if (!EqualsIgnoreCase(list.name(list.size() - 1), "content-length")) return 0;
  self->field_is_content_length_ = true;
  self->current_content_length_.clear();
  if (self->seen_content_length_) {
    // llhttp refuses any second Content-Length; RFC 9110 §8.6 lets a
    // recipient collapse identical ones. Let llhttp parse this one afresh
    // and compare the two values when it is complete.
    p->flags &= ~F_CONTENT_LENGTH;
    p->content_length = 0;
  }
  return 0;
}

int HttpParser::OnHeaderValueCb(llhttp_t* p, const char* at, size_t length) {
  auto* self = static_cast<HttpParser*>(p->data);
  if (self->value_started_) {
    // A second piece of one value that starts a line is an obs-fold
    // continuation (a piece split by our own buffer boundary does not
    // follow a line break).
    char before = at > self->chunk_start_ ? at[-1] : self->last_fed_byte_;
    if (before == '\n')
      return self->Invalid(400, "obsolete line folding in header");
  }
  self->value_started_ = true;
  if (HasControlCharacter({at, length}))
    return self->Invalid(400, "control character in header field");
  if (self->field_is_content_length_)
    self->current_content_length_.append(at, length);
  HeaderList& list = self->head_done_ ? self->trailers_ : self->headers_;
  list.AppendValue(at, length);
  return 0;
}

int HttpParser::OnHeaderValueCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  HeaderList& list = self->head_done_ ? self->trailers_ : self->headers_;
  list.FinishValue();
  self->value_started_ = false;
  if (self->field_is_content_length_) {
    std::string_view value = TrimOws(self->current_content_length_);
    if (!self->seen_content_length_) {
      self->seen_content_length_ = true;
      self->first_content_length_.assign(value);
    } else if (value != self->first_content_length_) {
      return self->Invalid(400, "conflicting Content-Length values");
    }
  }
  return 0;
}

int HttpParser::ValidateHead() {
  if (type_ == Type::kResponse) {
    if (parser_.http_major != 1) return Fail(502, "invalid response version");
    // llhttp takes any number of digits up to 999 ("20", "099").
    if (parser_.status_code < 100 || parser_.status_code > 599)
      return Fail(502, "invalid response status");
    return ValidateTransferCodings();
  }
  if (parser_.http_major != 1 || parser_.http_minor > 1) {
    return Fail(505, "HTTP version not supported");
  }
  if (parser_.method == HTTP_CONNECT)
    return Fail(501, "CONNECT is not supported");
  if (parser_.method == HTTP_PRI)
    return Fail(400, "HTTP/2 preface on an HTTP/1.1 port");
  if (target_.empty()) return Fail(400, "empty request target");
  if (target_[0] != '/' && target_ != "*" &&
      target_.compare(0, 7, "http://") != 0 &&
      target_.compare(0, 8, "https://") != 0) {
    return Fail(400, "invalid request target");
  }
  if (target_ == "*" && parser_.method != HTTP_OPTIONS) {
    return Fail(400, "invalid request target");
  }
  if (target_[0] == 'h') {
    // Absolute form: the authority replaces Host (RFC 9112 §3.2.2).
    std::string_view rest =
        std::string_view(target_).substr(target_.find("://") + 3);
    std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
    if (authority.empty() || !IsValidHost(authority)) {
      return Fail(400, "invalid authority in request target");
    }
  }
  size_t hosts = headers_.Count("host");
  if (parser_.http_minor == 1 && hosts == 0)
    return Fail(400, "missing Host header");
  if (hosts > 1) return Fail(400, "repeated Host header");
  if (hosts == 1 && !IsValidHost(*headers_.Find("host"))) {
    return Fail(400, "invalid Host header");
  }
  return ValidateTransferCodings();
}

int HttpParser::ValidateTransferCodings() {
  // The codings of every Transfer-Encoding field, in order, as one list
  // (RFC 9110 §5.3); empty elements are skipped (§5.6.1), but a list with
  // no coding at all is not a valid field.
  bool has_te = false;
  bool unknown_coding = false;
  size_t codings = 0;
  size_t chunked = 0;
  bool last_chunked = false;
  size_t before_last = 0;
  transfer_codings_.clear();
  for (size_t i = 0; i < headers_.size(); ++i) {
    if (!EqualsIgnoreCase(headers_.name(i), "transfer-encoding")) continue;
    has_te = true;
    ForEachListElement(headers_.value(i), [&](std::string_view coding) {
      if (!IsKnownTransferCoding(coding)) unknown_coding = true;
      last_chunked = EqualsIgnoreCase(coding, "chunked");
      if (last_chunked) ++chunked;
      ++codings;
      before_last = transfer_codings_.size();
      if (!transfer_codings_.empty()) transfer_codings_.append(", ");
      transfer_codings_.append(coding);
    });
  }
  if (!has_te) return 0;
  if (type_ == Type::kRequest) {
    if (seen_content_length_) return Fail(400, "ambiguous message framing");
    if (codings == 0) return Fail(400, "empty Transfer-Encoding");
    if (unknown_coding) return Fail(501, "unknown transfer coding");
    if (parser_.http_minor == 0) {
      // RFC 9112 §6.1: chunked from an HTTP/1.0 client cannot be trusted.
      return Fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    }
  } else if (codings == 0) {
    return Fail(502, "empty Transfer-Encoding");
  }
  // Chunked at most once (RFC 9112 §7), and llhttp must frame the body as
  // this list says (it reads "chunked," as not chunked, for one).
  if (chunked > 1) return Invalid(400, "chunked applied more than once");
  if (last_chunked != ((parser_.flags & F_CHUNKED) != 0))
    return Invalid(400, "ambiguous message framing");
  if (type_ == Type::kRequest && !last_chunked)
    return Fail(400, "ambiguous message framing");
  // Forward the codings before the final chunked; a response whose last
  // coding is not chunked is delimited by close and keeps them all.
  if (last_chunked) transfer_codings_.resize(before_last);
  return 0;
}

int HttpParser::OnHeadersCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  if (self->ValidateHead() != 0) return -1;
  self->head_done_ = true;

  if (p->flags & F_CHUNKED) {
    self->framing_ = Framing::kChunked;
  } else if (p->flags & F_CONTENT_LENGTH) {
    self->framing_ = Framing::kContentLength;
    self->content_length_ = p->content_length;
  } else if (self->type_ == Type::kResponse && llhttp_message_needs_eof(p)) {
    self->framing_ = Framing::kUntilClose;
  } else if (self->type_ == Type::kResponse &&
             (p->flags & F_TRANSFER_ENCODING)) {
    self->framing_ = Framing::kUntilClose;
  } else {
    self->framing_ = Framing::kNone;
  }
  if (self->type_ == Type::kRequest && self->max_body_bytes_ > 0 &&
      self->framing_ == Framing::kContentLength &&
      self->content_length_ > self->max_body_bytes_) {
    return self->Fail(413, "request body too large");
  }
  // RFC 9110 §6.4.1: 1xx, 204 and 304 responses never have a body, whatever
  // their framing fields say (llhttp leaves this to its caller).
  bool no_body = false;
  if (self->type_ == Type::kResponse) {
    int status = p->status_code;
    self->is_informational_ = status >= 100 && status < 200 && status != 101;
    no_body = self->is_informational_ || status == 204 || status == 304;
  }
  HeadAction action = self->handler_->OnHeadComplete(*self);
  if (self->error_status_ != 0) return -1;
  if (action == HeadAction::kSkipBody || no_body) {
    // The message ends here; OnMessageCompleteCb starts the next head.
    self->framing_ = Framing::kNone;
    self->EndSection(Section::kBody);
    return 1;
  }
  self->EndSection(self->framing_ == Framing::kChunked ? Section::kChunkLine
                                                       : Section::kBody);
  if (action != HeadAction::kPause) self->internal_pause_ = true;
  return HPE_PAUSED;
}

int HttpParser::OnBodyCb(llhttp_t* p, const char* at, size_t length) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->body_bytes_ += length;
  if (self->max_body_bytes_ > 0 && self->body_bytes_ > self->max_body_bytes_) {
    return self->Fail(413, "request body too large");
  }
  self->handler_->OnBody(*self, at, length);
  if (self->error_status_ != 0) return -1;
  return 0;
}

int HttpParser::OnChunkHeaderCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  // The size line is done: chunk data follows, or the trailer section
  // after the last chunk.
  self->in_trailers_ = p->content_length == 0;
  self->EndSection(self->in_trailers_ ? Section::kTrailers : Section::kBody);
  self->internal_pause_ = true;
  return HPE_PAUSED;
}

int HttpParser::OnChunkCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  // After the trailer section the message completes at once.
  if (self->in_trailers_) return 0;
  self->EndSection(Section::kChunkLine);
  self->internal_pause_ = true;
  return HPE_PAUSED;
}

int HttpParser::OnMessageCompleteCb(llhttp_t* p) {
  auto* self = static_cast<HttpParser*>(p->data);
  self->EndSection(Section::kHead);
  if (self->is_informational_) {
    // 1xx: the final response follows on the same stream.
    self->handler_->OnMessageComplete(*self);
    self->internal_pause_ = true;
    return HPE_PAUSED;
  }
  self->message_started_ = false;
  self->handler_->OnMessageComplete(*self);
  // An upgrade stops by itself (HPE_PAUSED_UPGRADE); anything else pauses
  // so the caller handles one message at a time.
  return p->upgrade ? 0 : HPE_PAUSED;
}

}  // namespace tandem::net
