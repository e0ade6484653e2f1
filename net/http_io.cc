#include "net/http_io.h"

#include <event2/buffer.h>

#include <algorithm>
#include <charconv>
#include <string>

#include "net/http_message.h"

namespace tandem::net {

HttpParser::Result Feed(HttpParser& parser, evbuffer* input, size_t* consumed) {
  HttpParser::Result result = HttpParser::Result::kNeedMore;
  *consumed = 0;
  while (evbuffer_get_length(input) > 0) {
    evbuffer_iovec vec[8];
    const int n = evbuffer_peek(input, -1, nullptr, vec, 8);
    size_t used_total = 0;
    for (int i = 0; i < std::min(n, 8); ++i) {
      size_t used = 0;
      result = parser.Execute(static_cast<const char*>(vec[i].iov_base),
                              vec[i].iov_len, &used);
      used_total += used;
      if (result != HttpParser::Result::kNeedMore) break;
    }
    evbuffer_drain(input, used_total);
    *consumed += used_total;
    if (result != HttpParser::Result::kNeedMore) break;
  }
  return result;
}

void FrameBody(Framing framing, const char* data, size_t length,
               evbuffer* out) {
  switch (framing) {
    case Framing::kChunked: {
      if (length == 0) return;
      char header[20];
      auto [end, ec] =
          std::to_chars(header, header + sizeof(header) - 2, length, 16);
      *end++ = '\r';
      *end++ = '\n';
      evbuffer_add(out, header, static_cast<size_t>(end - header));
      evbuffer_add(out, data, length);
      evbuffer_add(out, "\r\n", 2);
      return;
    }
    case Framing::kContentLength:
    case Framing::kUntilClose:
      evbuffer_add(out, data, length);
      return;
    case Framing::kNone:
      return;
  }
}

void FrameBodyEnd(Framing framing, const HeaderList& trailers, evbuffer* out) {
  if (framing != Framing::kChunked) return;
  if (trailers.size() == 0) {
    evbuffer_add(out, "0\r\n\r\n", 5);
    return;
  }
  std::string tail;
  AppendLastChunk(trailers, &tail);
  evbuffer_add(out, tail.data(), tail.size());
}

ssize_t NextDataFrame(size_t buffered, size_t max, bool ended,
                      uint32_t* data_flags) {
  const size_t n = std::min(max, buffered);
  if (n > 0) *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n == buffered && ended) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  } else if (n == 0) {
    return NGHTTP2_ERR_DEFERRED;
  }
  return static_cast<ssize_t>(n);
}

int SendDataFrame(const nghttp2_frame& frame, const uint8_t* header,
                  size_t length, evbuffer* payload, evbuffer* output) {
  if (frame.data.padlen != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  constexpr size_t kFrameHeaderBytes = 9;
  if (evbuffer_add(output, header, kFrameHeaderBytes) != 0 ||
      evbuffer_remove_buffer(payload, output, length) !=
          static_cast<int>(length)) {
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

}  // namespace tandem::net
