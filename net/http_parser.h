// HTTP/1.x message parsing for the proxy: llhttp (strict mode) plus the checks
// RFC 9112 asks of an intermediary that llhttp leaves to its caller (obs-fold,
// NUL in field values, Host, duplicate Content-Length, transfer codings, status
// codes) and a byte budget for every part of a message that is not body.
#pragma once

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::net {

// How a message body is delimited on the wire.
enum class Framing : uint8_t {
  kNone,           // no body
  kContentLength,  // exactly content_length() bytes
  kChunked,        // chunked transfer coding
  kUntilClose,     // response read until the connection closes
};

// Header fields of one head or trailer section, names and values kept in one
// buffer so that parsing a message allocates nothing once the buffers have
// grown to the connection's usual size.
class HeaderList {
 public:
  void Clear() {
    bytes_.clear();
    fields_.clear();
  }
  size_t size() const { return fields_.size(); }
  bool empty() const { return fields_.empty(); }
  std::string_view name(size_t i) const {
    return {bytes_.data() + fields_[i].name_offset, fields_[i].name_length};
  }
  std::string_view value(size_t i) const {
    return {bytes_.data() + fields_[i].value_offset, fields_[i].value_length};
  }
  // First value of `field` (case-insensitive); nullopt when absent.
  std::optional<std::string_view> Find(std::string_view field) const;
  size_t Count(std::string_view field) const;

  // Building, for the parser and for tests. A name or value may arrive in
  // pieces: consecutive Append calls extend the same one.
  void AppendName(const char* data, size_t length);
  void AppendValue(const char* data, size_t length);
  // Ends the current value: trims trailing whitespace.
  void FinishValue();
  void Add(std::string_view field, std::string_view value);
  // Capacity of its buffers, in bytes (for the memory gauges).
  size_t HeldBytes() const {
    return bytes_.capacity() + fields_.capacity() * sizeof(Field);
  }

  // Clears the list and frees its memory when its buffers hold more than
  // `max_bytes` of capacity; returns whether it did. A list of usual size
  // keeps its buffers (and its fields).
  bool ShrinkIfLarge(size_t max_bytes);

 private:
  struct Field {
    uint32_t name_offset = 0;
    uint32_t name_length = 0;
    uint32_t value_offset = 0;
    uint32_t value_length = 0;
  };
  std::string bytes_;
  std::vector<Field> fields_;
  bool in_value_ = false;
};

// ASCII case-insensitive comparison of header names and tokens.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// Whether `text` holds a control character other than HTAB, or DEL, none
// of which a field value may (RFC 9110 §5.5); read eight bytes at a time.
bool HasControlCharacter(std::string_view text);

// RFC 3986 host [ ":" port ], as allowed in a Host field: no whitespace,
// controls, userinfo or path characters.
bool IsValidHost(std::string_view host);

// Whether the comma-separated list `value` (e.g. a Connection header) holds
// `token`, compared case-insensitively.
bool HasToken(std::string_view value, std::string_view token);

// Fixed limits (docs/http-parsing.md has the table with their answers).
// Field lines in one head or one trailer section (HAProxy's tune.http.maxhdr
// is 101, Apache's LimitRequestFields 100).
inline constexpr size_t kDefaultMaxFields = 100;
// A chunk-size line with its extensions and CRLF.
inline constexpr uint64_t kMaxChunkLineBytes = 4 * 1024;
// A response's status line with its reason phrase, and any empty lines
// before it.
inline constexpr uint64_t kMaxStatusLineBytes = 1024;
// A response head, and separately its trailer section, when the caller sets
// no other limit.
inline constexpr uint64_t kDefaultMaxHeadBytes = 64 * 1024;

class HttpParser {
 public:
  enum class Type { kRequest, kResponse };

  // What the caller's handler decides when a head is complete.
  enum class HeadAction { kContinue, kSkipBody, kPause };

  class Handler {
   public:
    virtual ~Handler() = default;
    // The head is complete and valid. Requests should pause here (the caller
    // resumes once it can forward the body); a response to HEAD, 1xx, 204 and
    // 304 must answer kSkipBody.
    virtual HeadAction OnHeadComplete(HttpParser& parser) = 0;
    // A piece of decoded body (chunk framing removed).
    virtual void OnBody(HttpParser& parser, const char* data,
                        size_t length) = 0;
    // The message is complete; trailers() holds any trailer fields. The
    // parser pauses after it unless the message was 1xx.
    virtual void OnMessageComplete(HttpParser& parser) = 0;
  };

  // The outcome of one Execute() call.
  enum class Result {
    kNeedMore,    // every byte was used; feed more
    kPausedHead,  // stopped right after the head (handler said kPause)
    kComplete,    // stopped right after a complete message
    kUpgrade,     // message complete; what follows belongs to another protocol
    kError,       // invalid message; see error_status() and error_reason()
  };

  HttpParser(Type type, Handler* handler);
  HttpParser(const HttpParser&) = delete;
  HttpParser& operator=(const HttpParser&) = delete;

  // A parser reused for another connection reports to its new handler.
  void set_handler(Handler* handler) { handler_ = handler; }
  Type type() const { return type_; }

  // The limit of the whole head, and separately of the trailer section
  // (requests: 431, or 414 while still in the target; responses: an error).
  // Default kDefaultMaxHeadBytes.
  void set_max_head_bytes(uint64_t bytes) { max_head_bytes_ = bytes; }
  // Field lines allowed in one head or one trailer section (requests: 431;
  // responses: an error). Default kDefaultMaxFields.
  void set_max_fields(size_t fields) { max_fields_ = fields; }
  // Body limit (413); 0 = none.
  void set_max_body_bytes(uint64_t bytes) { max_body_bytes_ = bytes; }

  // Feeds bytes; stops early at a pause, a complete message or an error.
  // `*consumed` is set to the number of bytes used.
  Result Execute(const char* data, size_t length, size_t* consumed);
  // A whole request head with no body, as tandem writes an HTTP/2
  // request's (net/h2_message.h), taken without llhttp when it is plain:
  // a usual method, an origin-form target of common characters, HTTP/1.1,
  // fields of token names and visible-character values, one valid Host, no
  // framing or connection field, within the head's limits. Then the parser
  // is as Execute(text) leaves it, at kComplete, and true is returned.
  // Anything else returns false with nothing changed: Execute() takes the
  // text, with every check, and answers what is wrong. Only on a parser
  // reset or between messages (message_started() false).
  bool TakeSimpleRequestHead(std::string_view text);

  // Continues after kPausedHead or kComplete.
  void Resume();
  // From a handler callback: fail the message with `status` (e.g. a
  // response the exchange cannot accept).
  void Reject(int status, const char* reason) { Fail(status, reason); }
  // After kUpgrade, when the upgrade was refused: parse HTTP again.
  void ResumeAfterUpgrade();
  // Starts over for a new message stream (a new upstream connection).
  void Reset();
  // Tells a response parser that the peer closed the connection; returns
  // true when that ends a close-delimited body cleanly.
  bool FinishAtEof();
  // Frees what a large message left behind: when any of the parser's buffers
  // holds more than `max_bytes` of capacity, the last message's fields,
  // trailers, target and reason are cleared and their memory released. Only
  // between messages (message_started() false, e.g. after kComplete or
  // Reset()); a no-op while a message is being parsed. Not from a handler
  // callback.
  void ShrinkIfLarge(size_t max_bytes);

  // The current message's head (valid from OnHeadComplete until the next
  // message begins).
  uint8_t method() const { return parser_.method; }
  std::string_view method_name() const;
  int http_major() const { return parser_.http_major; }
  int http_minor() const { return parser_.http_minor; }
  int status_code() const { return parser_.status_code; }
  std::string_view target() const { return target_; }
  std::string_view reason() const { return reason_; }
  const HeaderList& headers() const { return headers_; }
  const HeaderList& trailers() const { return trailers_; }
  Framing framing() const { return framing_; }
  uint64_t content_length() const { return content_length_; }
  // The transfer codings to forward, in their order: those before the final
  // "chunked" of a chunked message (e.g. "gzip"); all of them for a
  // response delimited by close because its last coding is not chunked
  // (e.g. "chunked, gzip", RFC 9112 §6.3). Empty otherwise.
  std::string_view transfer_codings() const { return transfer_codings_; }
  bool keep_alive() const;
  bool upgrade() const { return parser_.upgrade != 0; }
  bool in_head() const { return !head_done_; }
  // Bytes of the current message's head seen so far (with any empty lines
  // before it).
  uint64_t head_bytes() const {
    return section_ == Section::kHead ? section_bytes_ : head_bytes_;
  }
  // Decoded body bytes of the current message seen so far.
  uint64_t body_bytes() const { return body_bytes_; }
  // True once any byte of a message has been seen since the last complete
  // one (a request has begun).
  bool message_started() const { return message_started_; }

  // Capacity of every buffer the parser holds, in bytes (memory gauges).
  size_t HeldBytes() const {
    return sizeof(*this) + target_.capacity() + reason_.capacity() +
           headers_.HeldBytes() + trailers_.HeldBytes() +
           transfer_codings_.capacity() + first_content_length_.capacity() +
           current_content_length_.capacity();
  }

  // After kError: the status to answer (400, 413, 414, 431, 501, 505; 502
  // for every response error) and a short reason.
  int error_status() const { return error_status_; }
  std::string_view error_reason() const { return error_reason_; }

 private:
  static int OnMessageBeginCb(llhttp_t* p);
  static int OnUrlCb(llhttp_t* p, const char* at, size_t length);
  static int OnUrlCompleteCb(llhttp_t* p);
  static int OnStatusCb(llhttp_t* p, const char* at, size_t length);
  static int OnHeaderFieldCb(llhttp_t* p, const char* at, size_t length);
  static int OnHeaderFieldCompleteCb(llhttp_t* p);
  static int OnHeaderValueCb(llhttp_t* p, const char* at, size_t length);
  static int OnHeaderValueCompleteCb(llhttp_t* p);
  static int OnHeadersCompleteCb(llhttp_t* p);
  static int OnStatusCompleteCb(llhttp_t* p);
  static int OnBodyCb(llhttp_t* p, const char* at, size_t length);
  static int OnChunkHeaderCb(llhttp_t* p);
  static int OnChunkCompleteCb(llhttp_t* p);
  static int OnMessageCompleteCb(llhttp_t* p);
  static const llhttp_settings_t* Settings();

  // The parts of a message, each with its own byte budget. A section ends
  // in a callback that pauses llhttp (internal_pause_), so every slice
  // Execute() hands llhttp lies in one section and is counted exactly.
  enum class Section : uint8_t {
    kHead,       // empty lines, start line and fields: max_head_bytes_
    kBody,       // content or chunk data: no budget here (max_body_bytes_)
    kChunkLine,  // chunk size, extensions, CRLF: kMaxChunkLineBytes
    kTrailers,   // trailer fields and the final CRLF: max_head_bytes_
  };
  static constexpr uint64_t kUnlimited = UINT64_MAX;

  int Fail(int status, const char* reason);
  // Fails with `request_status` for a request, 502 for a response.
  int Invalid(int request_status, const char* reason);
  int ValidateHead();
  int ValidateTransferCodings();
  void StartMessage();
  uint64_t SectionLimit() const;
  // From a callback: the current section ends at this byte; `next` follows.
  void EndSection(Section next);
  void FailSectionLimit();

  llhttp_t parser_;
  Type type_;
  Handler* handler_;
  uint64_t max_head_bytes_ = kDefaultMaxHeadBytes;
  uint64_t max_body_bytes_ = 0;
  size_t max_fields_ = kDefaultMaxFields;

  Section section_ = Section::kHead;
  Section next_section_ = Section::kHead;
  uint64_t section_bytes_ = 0;
  bool section_ended_ = false;   // set by a callback during one slice
  bool internal_pause_ = false;  // the pause is ours, not the handler's
  bool status_line_done_ = false;
  // The request target has ended and the protocol name comes next: llhttp
  // 8.1 also takes "RTSP/" and "ICE/" there, and says nothing of which.
  bool protocol_pending_ = false;

  std::string target_;
  std::string reason_;
  HeaderList headers_;
  HeaderList trailers_;
  std::string transfer_codings_;
  Framing framing_ = Framing::kNone;
  uint64_t content_length_ = 0;
  uint64_t head_bytes_ = 0;
  uint64_t body_bytes_ = 0;
  bool head_done_ = false;
  bool message_started_ = false;
  bool in_trailers_ = false;
  bool is_informational_ = false;

  // Per-field state for the checks llhttp does not make.
  bool field_is_content_length_ = false;
  bool seen_content_length_ = false;
  std::string first_content_length_;
  std::string current_content_length_;
  bool value_started_ = false;
  char last_fed_byte_ = 0;  // last byte of the previous Execute() input
  const char* chunk_start_ = nullptr;

  int error_status_ = 0;
  const char* error_reason_ = "";
};

}  // namespace tandem::net
