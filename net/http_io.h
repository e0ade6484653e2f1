// The HTTP/1 codec over libevent buffers: a parser fed from an evbuffer in
// place, and the one body framer for both directions (how body bytes and the
// end of a body go out for a message's framing: a length, chunked, or
// delimited by the connection's close). The proxy parses requests and
// responses, and frames request bodies to backends and response bodies to
// clients, with these. And HTTP/2 DATA frames written from a buffer.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>

#include "net/http_parser.h"

struct evbuffer;

namespace tandem::net {

// Runs `parser` over what `input` holds, in place (no copy), draining what
// it consumed, until it needs more or stops at a message boundary, a paused
// head or an error. `*consumed` gets the bytes drained.
HttpParser::Result Feed(HttpParser& parser, evbuffer* input, size_t* consumed);

// Appends `length` body bytes to `out` as `framing` carries them: one chunk
// for kChunked (nothing for an empty piece, which would end the body), the
// bytes as they are for kContentLength and kUntilClose, nothing for kNone.
void FrameBody(Framing framing, const char* data, size_t length, evbuffer* out);

// Ends a body: the last chunk and `trailers` for kChunked (framing and
// routing fields left out); nothing for the others.
void FrameBodyEnd(Framing framing, const HeaderList& trailers, evbuffer* out);

// nghttp2's data source over `buffered` body bytes the caller holds: the next
// DATA frame's length, at most `max`, with NGHTTP2_DATA_FLAG_NO_COPY
// (SendDataFrame moves the bytes). `ended`: the body is all buffered, and the
// frame that empties it gets NGHTTP2_DATA_FLAG_EOF. NGHTTP2_ERR_DEFERRED when
// there is nothing to send yet (the caller resumes the stream when more comes).
ssize_t NextDataFrame(size_t buffered, size_t max, bool ended,
                      uint32_t* data_flags);

// nghttp2's send_data_callback for a data source that answered
// NGHTTP2_DATA_FLAG_NO_COPY: the frame's 9-byte header, then `length` bytes
// of `payload` moved (whole chains, not copied) to `output`. nghttp2 calls it
// in frame order, after every frame before this one. A padded frame is an
// error (tandem sets no padding callback, so nghttp2 pads nothing).
int SendDataFrame(const nghttp2_frame& frame, const uint8_t* header,
                  size_t length, evbuffer* payload, evbuffer* output);

}  // namespace tandem::net
