// The HTTP/1 codec over libevent buffers: a parser fed from an evbuffer in
// place, and the one body framer for both directions (how body bytes and the
// end of a body go out for a message's framing: a length, chunked, or
// delimited by the connection's close). The proxy parses requests and
// responses, and frames request bodies to backends and response bodies to
// clients, with these.
#pragma once

#include <cstddef>

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

}  // namespace tandem::net
