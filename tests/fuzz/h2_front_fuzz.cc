// Fuzz target: bytes a client sends after the HTTP/2 preface go into an
// nghttp2 server session set up as tandem's front sets it up, and every
// request whose fields arrive becomes the HTTP/1.1 head tandem's parser
// reads, with its DATA framed as the stream frames it. Checked: the head
// tandem writes parses as exactly one message that ends where it ends (no
// field can smuggle a second message or a body), and fields past the limit
// are never kept.
#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "fuzz_common.h"
#include "net/h2_message.h"
#include "net/http_parser.h"

namespace {

using tandem::fuzz::Check;
using tandem::net::H2RequestHead;
using tandem::net::HttpParser;

constexpr uint64_t kMaxHead = 4096;

class Handler : public HttpParser::Handler {
 public:
  HttpParser::HeadAction OnHeadComplete(HttpParser&) override {
    return HttpParser::HeadAction::kPause;
  }
  void OnBody(HttpParser&, const char*, size_t) override {}
  void OnMessageComplete(HttpParser&) override {}
};

struct Front {
  std::map<int32_t, std::unique_ptr<H2RequestHead>> heads;
};

int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* arg) {
  auto* front = static_cast<Front*>(arg);
  if (frame->hd.type == NGHTTP2_HEADERS &&
      frame->headers.cat == NGHTTP2_HCAT_REQUEST && front->heads.size() < 64) {
    front->heads[frame->hd.stream_id] =
        std::make_unique<H2RequestHead>(kMaxHead);
  }
  return 0;
}

int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
             size_t name_length, const uint8_t* value, size_t value_length,
             uint8_t, void* arg) {
  auto* front = static_cast<Front*>(arg);
  auto it = front->heads.find(frame->hd.stream_id);
  if (it == front->heads.end() || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  it->second->Add({reinterpret_cast<const char*>(name), name_length},
                  {reinterpret_cast<const char*>(value), value_length});
  return 0;
}

int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* arg) {
  auto* front = static_cast<Front*>(arg);
  if (frame->hd.type != NGHTTP2_HEADERS ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  auto it = front->heads.find(frame->hd.stream_id);
  if (it == front->heads.end()) return 0;
  H2RequestHead& head = *it->second;
  std::string text;
  bool chunked = false;
  const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (!head.Write(end, &text, &chunked)) {
    Check(text.empty() || head.error_status() == 400);
    return 0;
  }
  Check(!head.too_large());
  Handler handler;
  HttpParser parser(HttpParser::Type::kRequest, &handler);
  parser.set_max_head_bytes(kMaxHead * 2);
  size_t used = 0;
  const HttpParser::Result result =
      parser.Execute(text.data(), text.size(), &used);
  if (result == HttpParser::Result::kError) return 0;  // answered 4xx
  // One head, ending where the text ends: nothing smuggled behind it.
  Check(result != HttpParser::Result::kNeedMore);
  Check(used == text.size());
  if (chunked) {
    Check(parser.framing() == tandem::net::Framing::kChunked);
  } else if (end) {
    Check(parser.framing() == tandem::net::Framing::kNone ||
          parser.framing() == tandem::net::Framing::kContentLength);
  }
  return 0;
}

nghttp2_session_callbacks* Callbacks() {
  static nghttp2_session_callbacks* callbacks = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrameRecv);
    return c;
  }();
  return callbacks;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Front front;
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_recv_client_magic(option, 1);
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_session* session = nullptr;
  nghttp2_session_server_new2(&session, Callbacks(), &front, option);
  nghttp2_option_del(option);
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, kMaxHead}};
  nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings, 2);
  // In pieces of varying size, as a socket delivers them.
  size_t offset = 0;
  size_t piece = 1;
  while (offset < size) {
    const size_t n = std::min(piece, size - offset);
    if (nghttp2_session_mem_recv(session, data + offset, n) < 0) break;
    offset += n;
    piece = piece * 3 % 257 + 1;
    const uint8_t* out = nullptr;
    while (nghttp2_session_mem_send(session, &out) > 0) {
    }
  }
  nghttp2_session_del(session);
  return 0;
}
