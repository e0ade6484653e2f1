"""A hostile or broken HTTP/2 worker (cluster `protocol = "h2c"`), end to end.

The worker here is a raw socket (RawH2Worker): it completes the preface and
SETTINGS, answers PING and SETTINGS, follows tandem's flow-control windows
when it means to, and then does what the request's path names (CASES). Its
frames are built by hand, so it can send what no HTTP/2 library would.

What the tests hold tandem to:
- A worker that breaks the protocol before its response began costs the
  request a clean 502 (UC, or UP for a head tandem cannot carry) at once,
  never a wait for request_timeout; tandem tells the worker why (GOAWAY or
  RST_STREAM with the error code RFC 9113 names). One that breaks it after
  the response began leaves the client a cut response (the connection closes
  short of the body; an HTTP/2 client gets RST_STREAM), whose bytes are a
  prefix of what the worker sent: never padded, completed or mixed (an
  RST_STREAM(NO_ERROR) mid-body cuts it too). Frames of unknown type are
  ignored (RFC 9113 §5.5); a body on a 204 or DATA after the stream's end
  never reach the client; empty DATA frames, padding and one-byte frames
  leave the body whole; an answer before the request's body is all sent,
  then RST_STREAM(NO_ERROR) (RFC 9113 §8.1), reaches the client whole.
- tandem stays up, and the same worker's next request is answered.
- A stream-level error spares the other streams of the same worker
  connection: their responses arrive whole, each to its own client. A
  connection-level error fails the streams on it, each with tandem's own 502,
  never with another stream's bytes.
- A worker refusing every stream (RST_STREAM REFUSED_STREAM, GOAWAY with last
  stream 0) is tried a bounded number of times, then 502.
- An upload far past retry_buffer that its worker refuses (RST_STREAM
  REFUSED_STREAM, or a GOAWAY below its stream) half a second in, having sent
  nothing on the stream, reaches the other worker whole (fixed: 502, the body
  was not kept).
- Keeping such a body never stalls an upload: a worker that sends nothing on
  the stream until its window (64 KiB, 1 MiB, 4 MiB) is spent gets 6 MiB whole.
- A GET the broken worker failed goes to a good worker of the cluster.
- A worker allowing no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0) leaves no
  connection open per request (fixed: each stayed open until idle_timeout).
- Interim (1xx) heads are HEADERS frames, outside flow control: a burst of
  thousands, each a few bytes of HPACK for a 60 KB head, costs no memory
  (fixed: tandem held them all for the try).
- An endless response body to a client that does not read takes only what
  the client's buffers take: tandem stops opening the worker's stream window,
  its memory stays flat, other requests on the same worker connection go on,
  and when the client leaves (or resets its stream) the worker's stream is
  reset (RST_STREAM CANCEL) and the memory comes back. The same with DATA
  frames of more padding than body (fixed: the padding was given back twice,
  so the window never shut and tandem buffered without bound; the client side
  had the same defect for padded uploads, PaddedRequestBodyTest). A worker
  that ignores the window is reset (FLOW_CONTROL_ERROR) and its flood, even
  past the reset, costs neither memory nor the connection's window.
"""

import hashlib
import os
import re
import socket
import struct
import threading
import time
import unittest

from hpack import Decoder, Encoder

from harness import (SANITIZED, Client, Deadline, IncompleteMessage, TandemTestCase,
                     make_config, open_descriptors, scaled, wait_until)
from test_http2 import H2Client

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What tandem's RSS may grow by where the defence holds (AddressSanitizer's
# quarantine keeps freed buffers resident: 11-30 MiB seen). Without the
# defences these tests grew it by 90-300 MB.
GROWTH_KIB = (64 if SANITIZED else 4) * 1024

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 6, 7, 8, 9

MAX_FRAME = 16384  # what tandem advertises (the default SETTINGS_MAX_FRAME_SIZE)
MIB = 1024 * 1024

H2C_CLUSTER = {
    "protocol": "h2c",
    "request_timeout": "10s",
    # The "good" answers held back to keep streams open while a case breaks
    # the connection would otherwise look like a hang.
    "hang_detection": False,
}
H2C_LISTENER = {"protocols": ["http/1.1", "h2c"]}


def frame(ftype, flags, stream_id, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags]) +
            stream_id.to_bytes(4, "big") + payload)


def literal(name, value):
    """An HPACK literal field without indexing, new name (RFC 7541 §6.2.2),
    bytes as given: no lowercasing, no check, no change to the table."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


STATUS_200 = b"\x88"  # HPACK static table index 8


# ---- the raw worker ------------------------------------------------------------------


class RawStream:
    """One request the worker got, and what became of its stream."""

    def __init__(self, connection, stream_id, fields):
        self.connection = connection
        self.id = stream_id
        self.fields = fields
        self.body = bytearray()
        self.unacknowledged = 0  # DATA bytes its window was not opened by
        self.reset = None  # RST_STREAM code from tandem
        self.sent = 0  # DATA payload bytes sent on it
        self.served = False

    @property
    def path(self):
        return dict(self.fields).get(":path", "")


class RawH2Connection:
    """One connection from tandem: a reader thread; each request is served on
    a thread of its own, sending under the lock (HPACK's table follows the
    order blocks are sent in, and no frame may be cut by another)."""

    def __init__(self, worker, sock, number):
        self.worker = worker
        self.sock = sock
        self.number = number
        self.lock = threading.Lock()  # sending, and the HPACK encoder
        self.cond = threading.Condition()  # windows, resets, closing
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.send_window = 65535  # the connection's
        self.initial_window = 65535
        # The stream window this worker gives, as its SETTINGS last said.
        self.receive_window = worker.receive_window
        self.stream_windows = {}
        self.streams = {}
        self.closed = False
        self.block = None  # (stream id, flags of HEADERS, bytearray)

    # -- sending

    def send(self, data, close=False):
        """Sends `data`; with `close`, shuts the connection right after,
        before any other thread sends (a frame cut in its middle stays cut)."""
        try:
            with self.lock:
                self.sock.sendall(data)
                if close:
                    self._shut()
            return True
        except OSError:
            return False

    def headers(self, stream_id, fields, end_stream=False):
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        try:
            with self.lock:
                self.sock.sendall(frame(HEADERS, flags, stream_id, self.encoder.encode(fields)))
            return True
        except OSError:
            return False

    def data(self, stream, payload, end_stream=False, timeout=None):
        """Sends `payload` on `stream` as the windows allow; False when the
        stream was reset, the connection closed or `timeout` passed."""
        deadline = Deadline(timeout or scaled(10))
        view = memoryview(payload)
        while True:
            with self.cond:
                while True:
                    if stream.reset is not None or self.closed:
                        return False
                    room = min(self.send_window, self.stream_windows.get(stream.id, 0),
                               MAX_FRAME, len(view))
                    if room > 0 or not view:
                        break
                    left = deadline.end - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(min(left, 0.2))
                self.send_window -= room
                self.stream_windows[stream.id] -= room
            last = end_stream and room == len(view)
            if not self.send(frame(DATA, END_STREAM if last else 0, stream.id,
                                   bytes(view[:room]))):
                return False
            stream.sent += room
            view = view[room:]
            if not view:
                return True

    def window_of(self, stream):
        with self.cond:
            return min(self.send_window, self.stream_windows.get(stream.id, 0))

    def _shut(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        try:
            # shutdown, not only close: the reader thread holds the socket
            # in recv(), and the FIN must leave now.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        with self.lock:
            self._shut()

    # -- reading

    def _read(self, n):
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return bytes(data)

    def run(self):
        try:
            if self._read(len(PREFACE)) != PREFACE:
                raise EOFError
            self.send(frame(SETTINGS, 0, 0, self.worker.settings))
            while True:
                head = self._read(9)
                length = int.from_bytes(head[:3], "big")
                stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                self._handle(head[3], head[4], stream_id, self._read(length))
        except (EOFError, OSError):
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.sock.close()
        self.worker.event("closed", self.number)

    def _handle(self, ftype, flags, stream_id, payload):
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i:i + 6])
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    with self.cond:
                        for sid in self.stream_windows:
                            self.stream_windows[sid] += value - self.initial_window
                        self.initial_window = value
                        self.cond.notify_all()
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            with self.cond:
                if stream_id == 0:
                    self.send_window += increment
                elif stream_id in self.stream_windows:
                    self.stream_windows[stream_id] += increment
                self.cond.notify_all()
        elif ftype == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            with self.cond:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.reset = code
                self.cond.notify_all()
            self.worker.event("rst", self.number, stream_id, code)
        elif ftype == GOAWAY:
            self.worker.event("goaway", self.number, int.from_bytes(payload[:4], "big"),
                              int.from_bytes(payload[4:8], "big"))
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY_FLAG:
                    payload = payload[5:]
                self.block = (stream_id, flags, bytearray())
            self.block[2].extend(payload)
            if flags & END_HEADERS:
                sid, first_flags, block = self.block
                self.block = None
                fields = self.decoder.decode(bytes(block))
                stream = self.streams.get(sid)
                if stream is None:
                    stream = RawStream(self, sid, fields)
                    with self.cond:
                        self.streams[sid] = stream
                        self.stream_windows[sid] = self.initial_window
                    self.worker.event("request", self.number, sid, stream.path)
                    window = self.worker.window_after_head(stream)
                    if window is not None:
                        # A new stream window for every stream, this one's
                        # first body bytes perhaps already on their way.
                        self.receive_window = window
                        self.send(frame(SETTINGS, 0, 0,
                                        struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, window)))
                if first_flags & END_STREAM or self.worker.answers_early(stream):
                    self._dispatch(stream)
        elif ftype == DATA:
            stream = self.streams.get(stream_id)
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if stream is not None:
                stream.body += payload
            if payload:
                increment = len(payload).to_bytes(4, "big")
                update = frame(WINDOW_UPDATE, 0, 0, increment)
                if stream is not None and self.worker.lazy_window(stream):
                    stream.unacknowledged += len(payload)
                    if stream.unacknowledged >= self.receive_window:
                        update += frame(WINDOW_UPDATE, 0, stream_id,
                                        stream.unacknowledged.to_bytes(4, "big"))
                        stream.unacknowledged = 0
                elif stream is None or not self.worker.holds_window(stream):
                    update += frame(WINDOW_UPDATE, 0, stream_id, increment)
                self.send(update)
            if stream is not None and flags & END_STREAM:
                self._dispatch(stream)

    def _dispatch(self, stream):
        if stream.served:
            return
        stream.served = True
        threading.Thread(target=self.worker.serve, args=(self, stream), daemon=True).start()


class RawH2Worker:
    """An h2c worker on 127.0.0.1 (port 0). "/ok/..." gets a well-formed
    answer, "/case/NAME" what CASES[NAME] does; `all_ok` answers everything
    well (a good worker)."""

    def __init__(self, name="raw", all_ok=False, settings=()):
        self.name = name
        self.all_ok = all_ok
        self.settings = b"".join(struct.pack(">HI", key, value) for key, value in settings)
        # The stream window it gives (the protocol's default unless set).
        self.receive_window = dict(settings).get(SETTINGS_INITIAL_WINDOW_SIZE, 65535)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.cond = threading.Condition()
        self.events = []  # (kind, connection number, ...)
        self.connections = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                if self.stopped:
                    sock.close()
                    return
                connection = RawH2Connection(self, sock, len(self.connections))
                self.connections.append(connection)
            self.event("accepted", connection.number)
            threading.Thread(target=connection.run, daemon=True).start()

    def event(self, *what):
        with self.cond:
            self.events.append(what)
            self.cond.notify_all()

    def events_of(self, kind):
        with self.cond:
            return [e for e in self.events if e[0] == kind]

    def wait_event(self, predicate, timeout, what):
        deadline = Deadline(timeout)
        with self.cond:
            while True:
                found = [e for e in self.events if predicate(e)]
                if found:
                    return found
                if deadline.expired():
                    raise AssertionError("worker %s: no %s within %.1fs; events %s" % (
                        self.name, what, timeout, self.events[-20:]))
                self.cond.wait(min(0.1, max(0.001, deadline.end - time.monotonic())))

    def connection_of(self, path):
        """The number of the connection the last request for `path` came on."""
        found = [e[1] for e in self.events_of("request") if e[3] == path]
        return found[-1] if found else None

    def stream_of(self, path):
        """The last stream whose request had `path`."""
        with self.cond:
            connections = list(self.connections)
        found = None
        for connection in connections:
            for stream in list(connection.streams.values()):
                if stream.path == path:
                    found = stream
        return found

    def case_of(self, stream):
        """The case `stream`'s path names (None for a good worker)."""
        if self.all_ok or not stream.path.startswith("/case/"):
            return None
        return CASES.get(stream.path.split("?", 1)[0][len("/case/"):])

    def answers_early(self, stream):
        """Cases that answer before the request's body is all in."""
        case = self.case_of(stream)
        return case is not None and case.early

    def holds_window(self, stream):
        """Cases that never open the stream's window (nothing on the stream)."""
        case = self.case_of(stream)
        return case is not None and case.hold_window

    def lazy_window(self, stream):
        """Cases that open the stream's window only once it is used up."""
        case = self.case_of(stream)
        return case is not None and case.lazy_window

    def window_after_head(self, stream):
        """The stream window (from ?window_after=N) a case's SETTINGS give
        once its request's head is in; None for the others."""
        case = self.case_of(stream)
        if case is None or not case.window_after_head:
            return None
        return int(re.search(r"window_after=(\d+)", stream.path).group(1))

    def serve(self, connection, stream):
        path = stream.path.split("?", 1)[0]
        if self.all_ok or path.startswith("/ok/"):
            ok_answer(connection, stream)
        elif path.startswith("/case/") and path[6:] in CASES:
            CASES[path[6:]].behave(connection, stream)
        else:
            connection.close()

    def close(self):
        with self.cond:
            self.stopped = True
            connections = list(self.connections)
        self.listener.close()
        for connection in connections:
            connection.close()


def ok_body(path):
    """The body a good answer to `path` carries (size=N bytes, 1000 by
    default): its own, told apart from every other path's (cross-talk
    shows)."""
    size = re.search(r"size=(\d+)", path)
    size = int(size.group(1)) if size else 1000
    line = hashlib.sha256(path.encode()).hexdigest().encode() + b" " + path.encode() + b"\n"
    return (line * (size // len(line) + 1))[:size]


def ok_answer(connection, stream):
    """/ok/...?delay=S&size=N: a 200 after S seconds, the path's own body."""
    delay = re.search(r"delay=([\d.]+)", stream.path)
    if delay:
        time.sleep(float(delay.group(1)))
    body = ok_body(stream.path)
    connection.headers(stream.id, [(":status", "200"), ("content-type", "text/plain"),
                                   ("content-length", str(len(body))),
                                   ("x-worker", connection.worker.name)])
    connection.data(stream, body, end_stream=True)


# ---- what the worker does wrong, by case -------------------------------------------


class Case:
    """One misbehaviour, and what tandem must make of it.

    `scope`: "connection" (the connection is broken: tandem sends GOAWAY with
    `code`, or sees it close when `code` is None), "stream" (RST_STREAM with
    `code` from tandem; None: the worker reset it, or the stream had ended),
    "none" (nothing to refuse). `before`: it breaks before the response head,
    so the client gets a 502 flagged `flag`; otherwise the client gets a cut
    response whose body is a prefix of `sent`.
    """

    def __init__(self, name, behave, scope, code=None, before=True, flag="UC", sent=b"",
                 early=False, hold_window=False, lazy_window=False,
                 window_after_head=False):
        self.early = early
        # SETTINGS with a new stream window once the request's head is in.
        self.window_after_head = window_after_head
        # The stream's window is never opened: only the connection's is.
        self.hold_window = hold_window
        # The stream's window is opened only once all of it was used.
        self.lazy_window = lazy_window
        self.name = name
        self.behave = behave
        self.scope = scope
        self.code = code
        self.before = before
        self.flag = flag
        self.sent = sent

    @property
    def path(self):
        return "/case/" + self.name


CASES = {}


def case(name, scope, code=None, **kwargs):
    def register(behave):
        CASES[name] = Case(name, behave, scope, code, **kwargs)
        return behave
    return register


def cases(scope, before):
    return [c for c in CASES.values() if c.scope == scope and c.before == before]


def head_200(stream_id, length=None):
    """A response head that leaves the HPACK table as it is."""
    block = STATUS_200 + literal(b"content-type", b"text/plain")
    if length is not None:
        block += literal(b"content-length", str(length).encode())
    return frame(HEADERS, END_HEADERS, stream_id, block)


# Before the response head, on the connection.

@case("data-on-stream-0", "connection", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(DATA, 0, 0, b"hello"))


@case("ping-of-7-bytes", "connection", FRAME_SIZE_ERROR)
def _(c, s):
    c.send(frame(PING, 0, 0, b"1234567"))


@case("settings-of-5-bytes", "connection", FRAME_SIZE_ERROR)
def _(c, s):
    c.send(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01"))


@case("bad-hpack", "connection", COMPRESSION_ERROR)
def _(c, s):
    # An indexed field with index 0 (RFC 7541 §6.1: a decoding error), then
    # an integer that never ends.
    c.send(frame(HEADERS, END_HEADERS, s.id, b"\x80" + b"\xff" * 8))


@case("frame-over-max-frame-size", "connection", FRAME_SIZE_ERROR)
def _(c, s):
    # A well-formed head, in one frame longer than tandem allows.
    pad = literal(b"x-pad", b"p" * 100)
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id,
                 STATUS_200 + pad * (MAX_FRAME // len(pad) + 1)))


@case("data-on-a-stream-never-opened", "connection", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(DATA, 0, s.id + 200, b"who asked?"))


@case("headers-on-an-even-stream", "connection", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id + 1, STATUS_200))


@case("push-promise-though-disabled", "connection", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(PUSH_PROMISE, END_HEADERS, s.id,
                 (s.id + 1).to_bytes(4, "big") + b"\x82\x84\x86" + literal(b":authority", b"x")))


@case("connection-window-overflow", "connection", FLOW_CONTROL_ERROR)
def _(c, s):
    c.send(frame(WINDOW_UPDATE, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")))


@case("window-update-of-0-on-stream-0", "connection", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(WINDOW_UPDATE, 0, 0, (0).to_bytes(4, "big")))


@case("goaway-of-3-bytes", "connection", FRAME_SIZE_ERROR)
def _(c, s):
    c.send(frame(GOAWAY, 0, 0, b"\x00\x00\x01"))


@case("goaway-with-garbage", "connection")
def _(c, s):
    # Well formed, saying nonsense: an error code nobody defined and 4 KB of
    # random debug data. The stream is below its last id, so it must end
    # when the worker closes without answering.
    c.send(frame(GOAWAY, 0, 0, s.id.to_bytes(4, "big") + b"\xde\xad\xbe\xef" +
                 os.urandom(4096)))
    time.sleep(0.1)
    c.close()


@case("close-mid-frame-header", "connection")
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS, s.id, STATUS_200)[:5], close=True)


@case("close-before-answering", "connection")
def _(c, s):
    c.close()


# Before the response head, on the stream only.

@case("uppercase-field-name", "stream", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id,
                 STATUS_200 + literal(b"X-Upper", b"1")))


@case("no-status", "stream", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id, literal(b"content-type", b"text/x")))


@case("status-abc", "stream", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id, literal(b":status", b"abc")))


# nghttp2 takes any three digits; tandem's response parser refuses these.
@case("status-000", "stream", flag="UP")
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id, literal(b":status", b"000")))


@case("status-099", "stream", flag="UP")
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id, literal(b":status", b"099")))


@case("connection-specific-field", "stream", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id,
                 STATUS_200 + literal(b"transfer-encoding", b"chunked")))


@case("stream-window-overflow", "stream", FLOW_CONTROL_ERROR)
def _(c, s):
    c.send(frame(WINDOW_UPDATE, 0, s.id, (0x7FFFFFFF).to_bytes(4, "big")))


@case("interim-with-end-stream", "stream", PROTOCOL_ERROR)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, s.id, literal(b":status", b"103")))


@case("reset-before-answering", "stream")
def _(c, s):
    c.send(frame(RST_STREAM, 0, s.id, INTERNAL_ERROR.to_bytes(4, "big")))


@case("endless-interim-responses", "stream", CANCEL, flag="U[CP]")
def _(c, s):
    # 103s for ever (HEADERS frames are not flow-controlled), until reset.
    block = frame(HEADERS, END_HEADERS, s.id, literal(b":status", b"103")) * 100
    deadline = Deadline(scaled(30))
    while not deadline.expired() and s.reset is None and not c.closed:
        if not c.send(block):
            return
        s.sent += 100


# After the response head: a cut response.

@case("close-mid-data", "connection", before=False, sent=b"d" * 300)
def _(c, s):
    c.send(head_200(s.id, 1000) + frame(DATA, 0, s.id, b"d" * 1000)[:9 + 300], close=True)


@case("data-over-max-frame-size", "connection", FRAME_SIZE_ERROR, before=False, sent=b"a" * 100)
def _(c, s):
    c.send(head_200(s.id, 40000) + frame(DATA, 0, s.id, b"a" * 100) +
           frame(DATA, END_STREAM, s.id, b"b" * 39900))


@case("content-length-shorter-than-data", "stream", PROTOCOL_ERROR, before=False,
      sent=b"0123456789")
def _(c, s):
    c.send(head_200(s.id, 10) + frame(DATA, END_STREAM, s.id, b"0123456789SMUGGLED!!"))


@case("content-length-longer-than-data", "stream", PROTOCOL_ERROR, before=False, sent=b"01234")
def _(c, s):
    c.send(head_200(s.id, 20) + frame(DATA, END_STREAM, s.id, b"01234"))


@case("trailers-without-end-stream", "stream", PROTOCOL_ERROR, before=False,
      sent=b"chunk of body")
def _(c, s):
    c.send(head_200(s.id) + frame(DATA, 0, s.id, b"chunk of body") +
           frame(HEADERS, END_HEADERS, s.id, literal(b"x-trailer", b"1")))
    time.sleep(0.2)
    c.send(frame(DATA, END_STREAM, s.id, b"more"))


@case("reset-mid-body", "stream", before=False, sent=b"x" * 5000)
def _(c, s):
    c.send(head_200(s.id))
    c.data(s, b"x" * 5000)
    time.sleep(0.1)
    c.send(frame(RST_STREAM, 0, s.id, INTERNAL_ERROR.to_bytes(4, "big")))


@case("reset-no-error-mid-body", "stream", before=False, sent=b"y" * 3000)
def _(c, s):
    # NO_ERROR says nothing about the body: cut short all the same.
    c.send(head_200(s.id) + frame(DATA, 0, s.id, b"y" * 3000))
    time.sleep(0.1)
    c.send(frame(RST_STREAM, 0, s.id, NO_ERROR.to_bytes(4, "big")))


# Wrong, but ignored or cut away: the client gets a well-formed answer.

@case("unknown-frame-types", "none")
def _(c, s):
    c.send(frame(0xBB, 0xFF, 0, os.urandom(100)) + frame(0xBC, 0, s.id, os.urandom(50)))
    ok_answer(c, s)


@case("data-after-the-end", "none")
def _(c, s):
    ok_answer(c, s)
    time.sleep(0.05)
    c.send(frame(DATA, END_STREAM, s.id, b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED"))


@case("body-on-a-204", "none")
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS, s.id, literal(b":status", b"204")) +
           frame(DATA, END_STREAM, s.id, b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED"))


# Odd but valid framing: the body arrives whole.

def padded(stream_id, data, pad, flags=0):
    return frame(DATA, flags | PADDED, stream_id, bytes([pad]) + data + b"\0" * pad)


PADDED_BODY = b"".join(b"%05d" % i for i in range(2000)) + b"end"


@case("empty-data-frames", "odd")
def _(c, s):
    c.send(head_200(s.id) + frame(DATA, 0, s.id, b"abc") + frame(DATA, 0, s.id) * 10000 +
           frame(DATA, 0, s.id, b"def") + frame(DATA, END_STREAM, s.id))


@case("padding-past-the-window", "odd")
def _(c, s):
    # 2,000 frames with 255 bytes of padding each: 520 KB of the stream's
    # window (256 KiB) for 10 KB of body; tandem must give the padding back.
    c.send(head_200(s.id) + b"".join(padded(s.id, b"%05d" % i, 255) for i in range(2000)) +
           padded(s.id, b"end", 10, END_STREAM))


@case("one-byte-frames", "odd")
def _(c, s):
    c.send(head_200(s.id) + b"".join(frame(DATA, 0, s.id, b"%d" % (i % 10))
                                     for i in range(20000)) + frame(DATA, END_STREAM, s.id))


ODD_BODIES = {
    "empty-data-frames": b"abcdef",
    "padding-past-the-window": PADDED_BODY,
    "one-byte-frames": b"0123456789" * 2000,
}


# An answer before the request's body is all in, then RST_STREAM(NO_ERROR):
# RFC 9113 §8.1 lets a server stop the upload so; the answer is whole.
@case("early-answer", "odd", early=True)
def _(c, s):
    c.send(frame(HEADERS, END_HEADERS, s.id, literal(b":status", b"413") +
                 literal(b"content-length", b"10")) +
           frame(DATA, END_STREAM, s.id, b"too large\n") +
           frame(RST_STREAM, 0, s.id, NO_ERROR.to_bytes(4, "big")))


# Refusing everything: never reached, so retried, but not for ever.

@case("refuse-every-stream", "never")
def _(c, s):
    c.send(frame(RST_STREAM, 0, s.id, REFUSED_STREAM.to_bytes(4, "big")))


@case("goaway-before-every-stream", "never")
def _(c, s):
    c.send(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))


# Refusing an upload after its first window of body came in, having sent
# nothing on its stream: a server at its stream limit, or one whose GOAWAY
# crossed the request (nginx at keepalive_requests). Never reached, so a POST
# too is retried, with all its body.
REFUSE_AFTER = 0.5  # seconds: the client's upload has gone far past 64 KiB


@case("refuse-an-upload-late", "never", early=True, hold_window=True)
def _(c, s):
    time.sleep(REFUSE_AFTER)
    c.send(frame(RST_STREAM, 0, s.id, REFUSED_STREAM.to_bytes(4, "big")))


@case("goaway-under-an-upload", "never", early=True, hold_window=True)
def _(c, s):
    time.sleep(REFUSE_AFTER)
    c.send(frame(GOAWAY, 0, 0, (s.id - 2 if s.id > 2 else 0).to_bytes(4, "big") +
                 NO_ERROR.to_bytes(4, "big")))


# Opening the stream's window only once all of it is used, and answering only
# after the whole body: nothing comes on the stream until the window is spent.
@case("lazy-window-upload", "none", lazy_window=True)
def _(c, s):
    ok_answer(c, s)


@case("window-changed-under-an-upload", "none", lazy_window=True, window_after_head=True)
def _(c, s):
    ok_answer(c, s)


# Interim responses are HEADERS, outside flow control, and HPACK lets a
# byte on the wire stand for a 4 KB field of its table: 15 references make a
# 60 KB head of about 26 bytes. 2,000 of them in one burst (52 KB), which
# tandem reads at once: 120 MB decoded.
INTERIM_BOMB = 2000


@case("interim-bomb", "stream", CANCEL)
def _(c, s):
    # The first 103 puts the field in the table; the rest refer to it.
    fields = [(":status", "103")] + [("x-big", "v" * 4000)] * 15
    c.headers(s.id, fields)
    time.sleep(0.1)
    with c.lock:
        burst = b"".join(frame(HEADERS, END_HEADERS, s.id, c.encoder.encode(fields))
                         for _ in range(INTERIM_BOMB))
    if c.send(burst):
        s.sent = INTERIM_BOMB


# Endless bodies.

@case("endless", "endless")
def _(c, s):
    """A 200 without a length, then DATA as fast as the windows allow until
    tandem resets the stream or the connection closes."""
    c.headers(s.id, [(":status", "200"), ("content-type", "application/octet-stream")])
    piece = b"E" * MAX_FRAME
    deadline = Deadline(scaled(60))
    while not deadline.expired():
        if not c.data(s, piece, timeout=scaled(60)):
            return


@case("endless-padded", "endless")
def _(c, s):
    """The same with padding: each DATA frame 200 bytes of body and 255 of
    padding (legal, and counted against the windows), as fast as the windows
    allow."""
    c.headers(s.id, [(":status", "200"), ("content-type", "application/octet-stream")])
    piece = bytes([255]) + b"P" * 200 + b"\0" * 255
    deadline = Deadline(scaled(60))
    while not deadline.expired():
        with c.cond:
            while min(c.send_window, c.stream_windows.get(s.id, 0)) < len(piece):
                if s.reset is not None or c.closed or deadline.expired():
                    return
                c.cond.wait(0.2)
            c.send_window -= len(piece)
            c.stream_windows[s.id] -= len(piece)
        if not c.send(frame(DATA, PADDED, s.id, piece)):
            return
        s.sent += 200


FLOOD = 24 * MIB  # more than tandem's 16 MiB connection window


@case("flood-ignoring-the-window", "endless")
def _(c, s):
    """DATA ignoring tandem's windows and its RST_STREAM: FLOOD bytes."""
    c.send(head_200(s.id))
    piece = frame(DATA, 0, s.id, b"F" * MAX_FRAME)
    while s.sent < FLOOD:
        if not c.send(piece):
            return
        s.sent += MAX_FRAME


# ---- helpers ---------------------------------------------------------------------------


def partial_body(raw):
    """(head text, body bytes, complete) of a response cut short: the body as
    far as it came, unframed (content-length or chunked)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    text = head.decode("latin-1").lower()
    if "transfer-encoding: chunked" not in text:
        length = re.search(r"content-length: (\d+)", text)
        return text, rest, length is not None and len(rest) >= int(length.group(1))
    body = bytearray()
    while True:
        line, crlf, after = rest.partition(b"\r\n")
        if not crlf:
            return text, bytes(body), False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return text, bytes(body), after.endswith(b"\r\n")
        body += after[:size]
        if len(after) < size + 2:
            return text, bytes(body), False
        rest = after[size + 2:]


def plateau(value, timeout, settle=1.0, guard=None):
    """Waits until `value()` has not changed for `settle` seconds; returns it.
    `guard()` is called on each look (it fails the test early)."""
    deadline = Deadline(timeout)
    last, since = value(), time.monotonic()
    while not deadline.expired():
        time.sleep(0.1)
        if guard is not None:
            guard()
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now
    raise AssertionError("still changing after %.1fs: %r" % (timeout, last))


class Inflight:
    """GETs sent at once, each on a connection of its own, answered later."""

    def __init__(self, port, paths):
        self.results = {}
        self.threads = [threading.Thread(target=self._one, args=(port, path), daemon=True)
                        for path in paths]
        for thread in self.threads:
            thread.start()

    def _one(self, port, path):
        try:
            with Client(port, timeout=scaled(15)) as client:
                self.results[path] = client.get(path)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.results[path] = e

    def join(self):
        for thread in self.threads:
            thread.join(scaled(20))
        return self.results


class WorkerFaultCase(TandemTestCase):
    """One raw worker behind an h2c cluster; HTTP/1.1 and h2c clients."""

    @classmethod
    def setUpClass(cls):
        cls.worker = RawH2Worker("raw")
        cls.addClassCleanup(cls.worker.close)
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.worker.address], listener_opts=H2C_LISTENER, cluster_opts=H2C_CLUSTER))

    def setUp(self):
        self.assertTrue(self.tandem.running(), self.tandem.output()[-5000:])

    def access_line(self, path, start, status=r"\d+"):
        try:
            return self.tandem.wait_access_line(r'"GET %s HTTP/[\d.]+" %s .*' % (
                re.escape(path), status), start=start).group(0)
        except TimeoutError:
            self.fail("no access log line for %s:\n%s" % (
                path, "\n".join(self.tandem.access_lines()[start:])))

    def assert_ok(self, response, path):
        self.assertNotIsInstance(response, Exception, path)
        self.assertEqual(response.status, 200, (path, response))
        self.assertEqual(response.body, ok_body(path), "%s got another body" % path)

    def assert_next_is_served(self, client, tag):
        """The same client connection's next request, and a new one, get
        their own answers from the same worker."""
        path = "/ok/after-%s" % tag
        self.assert_ok(client.get(path), path)
        path = "/ok/after-%s-new" % tag
        with Client(self.tandem.port) as other:
            self.assert_ok(other.get(path), path)

    def assert_told(self, c):
        """The worker heard why from tandem: GOAWAY on the case's connection
        or RST_STREAM on its stream, with the case's code."""
        if c.code is None:
            return
        stream = self.worker.stream_of(c.path)
        if c.scope == "connection":
            self.worker.wait_event(
                lambda e: e[:2] == ("goaway", stream.connection.number) and e[3] == c.code,
                scaled(5), "GOAWAY(%d) for %s" % (c.code, c.name))
        else:
            self.worker.wait_event(
                lambda e: e == ("rst", stream.connection.number, stream.id, c.code),
                scaled(5), "RST_STREAM(%d) for %s" % (c.code, c.name))

    def goaways_on(self, connection):
        return [e for e in self.worker.events_of("goaway") if e[1] == connection]

    def in_flight(self, tag, count=3, delay=0.6, size=30000):
        """`count` good GETs held `delay` s by the worker, all arrived."""
        paths = ["/ok/%s-%d?delay=%s&size=%d" % (tag, i, delay, size) for i in range(count)]
        inflight = Inflight(self.tandem.port, paths)
        wait_until(lambda: all(self.worker.connection_of(p) is not None for p in paths),
                   scaled(5), "the good requests at the worker")
        return paths, inflight


# ---- 1: malformed frames, and other misbehaviour ------------------------------------------


class MalformedBeforeTheResponseTest(WorkerFaultCase):

    def run_before_case(self, c):
        """The case's GET alongside three good ones in flight on the same
        worker connection: the case's own 502 at once; returns the good
        ones' results."""
        start = self.tandem.stdout.count()
        paths, inflight = self.in_flight(c.name)
        connection = self.worker.connection_of(paths[0])
        client = self.client(self.tandem.port, timeout=scaled(15))
        began = time.monotonic()
        response = client.get(c.path)
        elapsed = time.monotonic() - began
        self.assertEqual(response.status, 502, response)
        self.assertTrue(response.body.startswith(b"502 Bad Gateway"), response)
        self.assertLess(elapsed, scaled(1.5), "a 502 that waited")
        self.assertEqual(self.worker.connection_of(c.path), connection,
                         "the case did not share the good requests' connection")
        line = self.access_line(c.path, start, "502")
        self.assertRegex(line, "flags=%s" % c.flag)
        self.assert_told(c)
        results = inflight.join()
        self.assert_next_is_served(client, c.name)
        return paths, results

    def test_connection_errors_are_a_502_at_once_and_fail_the_streams_beside_cleanly(self):
        for c in cases("connection", before=True):
            with self.subTest(c.name):
                paths, results = self.run_before_case(c)
                # The connection was broken under them: tandem's own 502
                # each, nobody's body.
                for path in paths:
                    response = results[path]
                    self.assertNotIsInstance(response, Exception, path)
                    self.assertEqual(response.status, 502, (path, response))
                    self.assertTrue(response.body.startswith(b"502 Bad Gateway"), response)
        self.assertTrue(self.tandem.running())

    def test_stream_errors_are_a_502_at_once_and_spare_the_streams_beside(self):
        for c in cases("stream", before=True):
            with self.subTest(c.name):
                paths, results = self.run_before_case(c)
                for path in paths:
                    self.assert_ok(results[path], path)
                # The connection went on: tandem sent no GOAWAY on it.
                self.assertEqual(self.goaways_on(self.worker.connection_of(c.path)), [])
        self.assertTrue(self.tandem.running())


class MalformedAfterTheResponseTest(WorkerFaultCase):

    def test_a_worker_breaking_mid_response_cuts_it(self):
        for c in cases("connection", before=False) + cases("stream", before=False):
            with self.subTest(c.name):
                start = self.tandem.stdout.count()
                paths, inflight = (self.in_flight(c.name) if c.scope == "stream"
                                   else ([], None))
                client = self.client(self.tandem.port, timeout=scaled(15))
                began = time.monotonic()
                client.request("GET", c.path)
                with self.assertRaises(IncompleteMessage) as cut:
                    client.response()
                self.assertLess(time.monotonic() - began, scaled(1.5))
                head, body, complete = partial_body(cut.exception.partial)
                self.assertTrue(head.startswith("http/1.1 200 "), head)
                self.assertFalse(complete, cut.exception.partial)
                self.assertTrue(c.sent.startswith(body), "%r is not what the worker sent" % body)
                line = self.access_line(c.path, start, "200")
                self.assertIn("flags=UC", line)
                self.assert_told(c)
                if inflight is not None:
                    results = inflight.join()
                    for path in paths:
                        self.assert_ok(results[path], path)
                with Client(self.tandem.port) as other:
                    self.assert_ok(other.get("/ok/after-" + c.name), "/ok/after-" + c.name)
        self.assertTrue(self.tandem.running())

    def test_odd_but_valid_framing_arrives_whole(self):
        # Empty DATA frames (10,000 of them), padding worth twice the stream
        # window, 20,000 one-byte frames: the body as the worker meant it.
        for name, body in ODD_BODIES.items():
            with self.subTest(name):
                with Client(self.tandem.port, timeout=scaled(15)) as client:
                    response = client.get(CASES[name].path)
                    self.assertEqual(response.status, 200, response)
                    self.assertEqual(response.body, body)
                    self.assert_next_is_served(client, name)

    def test_an_early_answer_with_rst_stream_no_error_reaches_the_client_whole(self):
        # The worker answers 413 on the request head and resets the stream
        # with NO_ERROR while tandem still sends 4 MiB of body.
        body = b"u" * (4 * MIB)
        for i in range(5):
            with Client(self.tandem.port, timeout=scaled(15)) as client:
                client.send(b"POST %s?%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
                    CASES["early-answer"].path.encode(), i, len(body)))

                def upload():
                    try:
                        client.send(body)
                    except OSError:
                        pass  # tandem stopped taking it: the answer is out
                sender = threading.Thread(target=upload, daemon=True)
                sender.start()
                response = client.response("POST")
                self.assertEqual(response.status, 413, response)
                self.assertEqual(response.body, b"too large\n")
                sender.join(scaled(10))

    def test_bytes_past_the_response_never_reach_the_client(self):
        # A 204 with a body, DATA after END_STREAM, frames of unknown type:
        # the answer as it should be, and the next answer on the same client
        # connection is its own (nothing was smuggled into it).
        for name in ("body-on-a-204", "data-after-the-end", "unknown-frame-types"):
            with self.subTest(name):
                path = CASES[name].path
                client = self.client(self.tandem.port, timeout=scaled(15))
                response = client.get(path)
                if name == "body-on-a-204":
                    self.assertEqual(response.status, 204, response)
                    self.assertEqual(response.body, b"")
                else:
                    self.assert_ok(response, path)
                self.assertNotIn(b"SMUGGLED", response.raw)
                self.assert_next_is_served(client, name)


class H2ClientTest(WorkerFaultCase):

    def test_an_h2_client_gets_the_error_on_its_stream_only(self):
        client = H2Client(self.tandem.port, timeout=scaled(15))
        self.addCleanup(client.close)
        good = client.request("GET", "/ok/h2-good?delay=0.5&size=50000")
        self.worker.wait_event(lambda e: e[0] == "request" and e[3].startswith("/ok/h2-good"),
                               scaled(5), "the good request")
        before = client.request("GET", CASES["uppercase-field-name"].path)
        mid = client.request("GET", CASES["content-length-longer-than-data"].path)
        reset = client.request("GET", CASES["reset-mid-body"].path)
        client.wait_done([good, before, mid, reset])
        stream = client.streams[before]
        self.assertEqual(stream.status, 502, stream)
        self.assertTrue(stream.ended)
        self.assertTrue(bytes(stream.data).startswith(b"502 Bad Gateway"), stream)
        for stream_id, c in ((mid, CASES["content-length-longer-than-data"]),
                             (reset, CASES["reset-mid-body"])):
            stream = client.streams[stream_id]
            # The head may or may not have left before the cut was seen.
            self.assertIn(stream.status, (None, 200), stream)
            self.assertFalse(stream.ended, "a cut response ended as if whole: %r" % stream)
            self.assertIsNotNone(stream.reset, stream)
            self.assertTrue(c.sent.startswith(bytes(stream.data)), stream)
        stream = client.streams[good]
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.data), ok_body("/ok/h2-good?delay=0.5&size=50000"))
        # A connection-level error at the worker is a 502 on its stream; the
        # client's connection goes on.
        stream = client.get(CASES["data-on-stream-0"].path)
        self.assertEqual(stream.status, 502, stream)
        stream = client.get("/ok/h2-after")
        self.assertEqual(bytes(stream.data), ok_body("/ok/h2-after"))
        self.assertEqual(client.goaways, [])


class NeverReachedTest(WorkerFaultCase):

    def test_a_worker_refusing_every_stream_is_tried_a_bounded_number_of_times(self):
        for name in ("refuse-every-stream", "goaway-before-every-stream"):
            with self.subTest(name):
                path = CASES[name].path
                start = self.tandem.stdout.count()
                began = time.monotonic()
                with Client(self.tandem.port, timeout=scaled(15)) as client:
                    response = client.get(path)
                self.assertEqual(response.status, 502, response)
                self.assertLess(time.monotonic() - began, scaled(1.5))
                # Retried (it never reached the worker), but at most
                # once per backend and `retries` (2) more: attempt.cc's bound
                # on pooled-connection races.
                tries = [e for e in self.worker.events_of("request") if e[3] == path]
                self.assertGreaterEqual(len(tries), 2, tries)
                self.assertLessEqual(len(tries), 4, tries)
                self.assertIn(":PR", self.access_line(path, start, "502"))
        with Client(self.tandem.port) as client:
            self.assert_ok(client.get("/ok/after-refusals"), "/ok/after-refusals")


class LargeUploadNeverReachedTest(TandemTestCase):
    """A POST of 1 MiB (from an HTTP/1.1 and from an h2c client), larger than
    retry_buffer (64 KiB), to a worker that
    refuses its stream (RST_STREAM REFUSED_STREAM, or a GOAWAY below it) half a
    second later, having sent nothing on it: the request never reached the
    worker, so it goes to the other worker with its whole body. tandem keeps
    what it took of such a body until the worker shows it has the stream, and
    takes no more than the stream's window meanwhile (fixed: tandem read on,
    dropped the copy past 64 KiB and answered 502 "body too large to
    replay")."""

    def test_a_refused_upload_goes_whole_to_another_worker(self):
        refuser = RawH2Worker("refuser")
        self.addCleanup(refuser.close)
        good = RawH2Worker("good", all_ok=True)
        self.addCleanup(good.close)
        tandem = self.start_tandem(make_config([refuser.address, good.address],
                                               listener_opts=H2C_LISTENER,
                                               cluster_opts=H2C_CLUSTER))
        for client_kind in ("http/1.1", "h2c"):
            for name in ("refuse-an-upload-late", "goaway-under-an-upload"):
                for n in range(2):  # round robin: one of each begins at the refuser
                    with self.subTest(name, client=client_kind, n=n):
                        path = CASES[name].path + "?client=%s&n=%d" % (client_kind, n)
                        body = os.urandom(MIB)
                        start = tandem.stdout.count()
                        status, worker = self.upload(tandem.port, client_kind, path, body)
                        self.assertEqual((status, worker), (200, "good"), path)
                        stream = good.stream_of(path)
                        self.assertIsNotNone(stream, "the good worker never got " + path)
                        self.assertEqual(hashlib.sha256(stream.body).hexdigest(),
                                         hashlib.sha256(body).hexdigest(),
                                         "%s: the good worker got %d bytes, not the body sent"
                                         % (path, len(stream.body)))
                        tandem.wait_access_line(r'"POST %s HTTP/[\d.]+" 200' % re.escape(path),
                                                start=start)
        refused = [e for e in refuser.events_of("request") if e[3].startswith("/case/")]
        self.assertGreaterEqual(len(refused), 4, "the refuser got no upload")
        retried = [line for line in tandem.access_lines() if "POST /case/" in line
                   and "failed_tries=%s" % refuser.address in line]
        self.assertEqual(len(retried), len(refused), "\n".join(tandem.access_lines()))

    def test_with_retry_buffer_0_no_body_is_kept(self):
        refuser = RawH2Worker("refuser")
        self.addCleanup(refuser.close)
        tandem = self.start_tandem(make_config(
            [refuser.address], cluster_opts=dict(H2C_CLUSTER, retry_buffer=0)))
        path = CASES["refuse-an-upload-late"].path + "?retry_buffer=0"
        start = tandem.stdout.count()
        status, _ = self.upload(tandem.port, "http/1.1", path, os.urandom(MIB))
        self.assertEqual(status, 502)
        line = tandem.wait_access_line(r'"POST %s HTTP/1.1" 502 .*' % re.escape(path),
                                       start=start).group(0)
        self.assertIn('not_retried="body too large to replay"', line)

    @staticmethod
    def upload(port, client_kind, path, body):
        """POSTs `body` to `path`: the status and x-worker of the answer."""
        if client_kind == "h2c":
            client = H2Client(port, timeout=scaled(15))
            try:
                stream_id = client.request("POST", path,
                                           [("content-type", "application/octet-stream")],
                                           body=body)
                stream = client.wait_done(stream_id)
                return int(stream.status), stream.header("x-worker")
            finally:
                client.close()
        with Client(port, timeout=scaled(15)) as client:
            sender = threading.Thread(target=client.request, args=(
                "POST", path, {"Content-Type": "application/octet-stream"}, body))
            sender.start()
            response = client.response("POST")
            sender.join(scaled(10))
        return response.status, response.header("x-worker")


class WholeUploadTestCase(TandemTestCase):

    def assert_upload_whole(self, tandem, worker, path):
        """POSTs 6 MiB to `path` over HTTP/1.1: a 200, the worker got every
        byte, and in well under a timeout (no stall)."""
        body = os.urandom(6 * MIB)
        began = time.monotonic()
        with Client(tandem.port, timeout=scaled(15)) as client:
            sender = threading.Thread(target=client.request, args=(
                "POST", path, {"Content-Type": "application/octet-stream"}, body))
            sender.start()
            response = client.response("POST")
            sender.join(scaled(10))
        self.assertEqual(response.status, 200, (path, response))
        stream = worker.stream_of(path)
        self.assertEqual(len(stream.body), len(body))
        self.assertEqual(hashlib.sha256(stream.body).digest(), hashlib.sha256(body).digest())
        self.assertLess(time.monotonic() - began, scaled(5))
        tandem.stop()


class LazyWindowUploadTest(WholeUploadTestCase):
    """The other side of LargeUploadNeverReachedTest: tandem keeps an upload's
    body, and takes no more of it, only up to what the worker's stream window
    lets it send; a worker that sends nothing on the stream until that window
    is spent (then opens it, and answers after the whole body) gets every
    upload whole, never a stall. With windows of 64 KiB and 1 MiB (kept up
    to) and 4 MiB (past kMaxHeldWindow: not kept past retry_buffer)."""

    def test_uploads_to_a_worker_opening_its_window_late_arrive_whole(self):
        for window in (65535, MIB, 4 * MIB):
            with self.subTest(window=window):
                worker = RawH2Worker("lazy", settings=[(SETTINGS_INITIAL_WINDOW_SIZE, window)])
                self.addCleanup(worker.close)
                tandem = self.start_tandem(make_config([worker.address],
                                                       cluster_opts=H2C_CLUSTER))
                path = CASES["lazy-window-upload"].path + "?window=%d" % window
                self.assert_upload_whole(tandem, worker, path)


class WindowChangedUnderAnUploadTest(WholeUploadTestCase):
    """A worker's SETTINGS that change its stream window while tandem holds an
    upload for it (nothing heard on the stream yet): the hold goes by the new
    window. The worker gives 64 KiB, raises it once the request's head is in,
    and opens the stream's window only when all of the new one is spent: to
    1 MiB (still held, up to the new window) and to 4 MiB (past kMaxHeldWindow:
    no longer held). Holding to the old 64 KiB would stall both."""

    def test_uploads_go_by_the_window_the_worker_set_last(self):
        for window in (MIB, 4 * MIB):
            with self.subTest(window=window):
                worker = RawH2Worker("changed")
                self.addCleanup(worker.close)
                tandem = self.start_tandem(make_config([worker.address],
                                                       cluster_opts=H2C_CLUSTER))
                path = (CASES["window-changed-under-an-upload"].path +
                        "?window_after=%d" % window)
                self.assert_upload_whole(tandem, worker, path)


class TlsWorkerBurstTest(TandemTestCase):
    """An h2 worker over TLS that answers twenty streams in one burst, a TLS
    record per frame, all in tandem's socket at once, and then sends
    nothing: every answer reaches the client. tandem reads ahead on TLS
    worker sessions, and records OpenSSL holds are no poll's to report
    (docs/performance.md, "TLS records read whole")."""

    COUNT = 20

    @classmethod
    def setUpClass(cls):
        from tlsutil import Pki
        cls.pki = Pki()
        cls.addClassCleanup(cls.pki.close)
        cls.pki.ca("ca", "tandem h2 worker test CA")
        cls.pki.leaf("worker", "ca", "worker.test", dns=["worker.test"], ips=["127.0.0.1"])

    def burst_worker(self):
        """The worker's address: it takes one connection, waits for COUNT
        requests, answers them all at once, then holds the connection."""
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert("worker"), self.pki.key("worker"))
        context.set_alpn_protocols(["h2"])
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        finished = threading.Event()
        self.addCleanup(listener.close)
        self.addCleanup(finished.set)

        def read(sock, n):
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data

        def serve():
            try:
                raw, _ = listener.accept()
                with context.wrap_socket(raw, server_side=True) as sock:
                    if read(sock, len(PREFACE)) != PREFACE:
                        return
                    sock.sendall(frame(SETTINGS, 0, 0))
                    streams = []
                    while len(streams) < self.COUNT:
                        head = read(sock, 9)
                        payload = read(sock, int.from_bytes(head[:3], "big"))
                        ftype, flags = head[3], head[4]
                        if ftype == SETTINGS and not flags & ACK:
                            sock.sendall(frame(SETTINGS, ACK, 0))
                        elif ftype == HEADERS and flags & END_STREAM:
                            streams.append(int.from_bytes(head[5:9], "big") & 0x7FFFFFFF)
                    for stream_id in streams:
                        body = b"answer %d\n" % stream_id
                        sock.sendall(head_200(stream_id, len(body)))  # a record
                        sock.sendall(frame(DATA, END_STREAM, stream_id, body))  # another
                    finished.wait(scaled(30))
            except (OSError, EOFError):
                pass

        threading.Thread(target=serve, daemon=True).start()
        return "127.0.0.1:%d" % listener.getsockname()[1]

    def test_a_burst_of_answers_in_many_records_all_arrive(self):
        tandem = self.start_tandem(make_config([self.burst_worker()], cluster_opts={
            "protocol": "h2", "tls": True, "ca_file": self.pki.cert("ca"),
            "request_timeout": "20s", "retries": 0}))
        client = H2Client(tandem.port, timeout=scaled(10))
        self.addCleanup(client.close)
        ids = [client.request("GET", "/burst/%d" % i) for i in range(self.COUNT)]
        streams = client.wait_done(ids, timeout=scaled(5))
        self.assertEqual([int(s.status) for s in streams], [200] * self.COUNT)


class ZeroStreamsWorkerTest(TandemTestCase):

    def test_a_worker_allowing_no_stream_leaves_no_connection_open(self):
        # SETTINGS_MAX_CONCURRENT_STREAMS 0: a connection the worker allows no
        # stream on. Each request goes on a new one (its HEADERS leave before
        # the worker's SETTINGS come; this worker answers them anyway), which
        # must close once its stream is done rather than stay open, useless,
        # for the cluster's idle_timeout: one held per request would run
        # tandem (and the worker) out of descriptors.
        worker = RawH2Worker("zero", all_ok=True, settings=[(SETTINGS_MAX_CONCURRENT_STREAMS, 0)])
        self.addCleanup(worker.close)
        tandem = self.start_tandem(make_config([worker.address], cluster_opts=H2C_CLUSTER))
        descriptors = open_descriptors(tandem.pid)
        for i in range(100):
            path = "/ok/zero-%d" % i
            with Client(tandem.port, timeout=scaled(15)) as client:
                response = client.get(path)
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.body, ok_body(path))

        def still_open():
            return len(worker.events_of("accepted")) - len(worker.events_of("closed"))
        try:
            wait_until(lambda: still_open() <= 1, scaled(5), "the connections closed")
        finally:
            print("\n100 requests to a worker allowing 0 streams: %d connections made, %d still "
                  "open; tandem holds %+d descriptors" % (
                      len(worker.events_of("accepted")), still_open(),
                      open_descriptors(tandem.pid) - descriptors))
        self.assertLessEqual(open_descriptors(tandem.pid) - descriptors, 2)


class InterimBombTest(WorkerFaultCase):

    def test_a_burst_of_amplified_interim_responses_costs_no_memory(self):
        # 2,000 103s of 60 KB each once decoded, 52 KB on the wire: tandem
        # must not hold them for the try (which takes no more than 16 interim
        # responses anyway).
        c = CASES["interim-bomb"]
        for i in range(5):
            with Client(self.tandem.port) as client:
                self.assert_ok(client.get("/ok/warm-%d" % i), "/ok/warm-%d" % i)
        rss = self.tandem.memory_kib("VmRSS")
        self.assertTrue(self.tandem.reset_peak_rss())
        start = self.tandem.stdout.count()
        with Client(self.tandem.port, timeout=scaled(15)) as client:
            response = client.get(c.path)
        self.assertEqual(response.status, 502, response)
        self.assertLessEqual(len(response.interim), 16, response)
        self.assertIn("flags=U", self.access_line(c.path, start, "502"))
        self.assert_told(c)
        peak = self.tandem.memory_kib("VmHWM") - rss
        print("\n%d interim heads of 60 KB in %d KB: tandem's peak RSS grew %d KiB" % (
            INTERIM_BOMB, INTERIM_BOMB * 26 // 1000, peak))
        self.assertLess(peak, GROWTH_KIB)
        with Client(self.tandem.port) as client:
            self.assert_ok(client.get("/ok/after-bomb"), "/ok/after-bomb")


class RetryToGoodWorkerTest(TandemTestCase):
    """A broken worker and a good one: the GETs it fails go to the good one."""

    def test_a_get_the_broken_worker_failed_goes_to_the_good_one(self):
        bad = RawH2Worker("bad")
        self.addCleanup(bad.close)
        good = RawH2Worker("good", all_ok=True)
        self.addCleanup(good.close)
        tandem = self.start_tandem(make_config([bad.address, good.address],
                                               cluster_opts=H2C_CLUSTER))
        names = ("data-on-stream-0", "bad-hpack", "uppercase-field-name", "status-abc",
                 "close-before-answering", "reset-before-answering")
        for round_ in range(4):
            for name in names:
                path = CASES[name].path + "?round=%d" % round_
                with Client(tandem.port, timeout=scaled(15)) as client:
                    response = client.get(path)
                self.assertEqual(response.status, 200, (path, response))
                self.assertEqual(response.header("x-worker"), "good", response)
                self.assertEqual(response.body, ok_body(path))
        failed = bad.events_of("request")
        self.assertGreater(len(failed), 0, "the broken worker got no request")
        wait_until(lambda: len(tandem.access_lines()) >= 4 * len(names), scaled(5),
                   "the access log")
        retried = [line for line in tandem.access_lines() if re.search(r"flags=\S*RT", line)]
        self.assertEqual(len(retried), len(failed), "\n".join(tandem.access_lines()))
        for line in retried:
            self.assertRegex(line, r"failed_tries=%s:U[CP]" % re.escape(bad.address))


# ---- 2: an endless body to a client that does not read -----------------------------------


class EndlessBodyTest(WorkerFaultCase):

    def warm(self):
        for i in range(20):
            with Client(self.tandem.port) as client:
                self.assert_ok(client.get("/ok/warm-%d?size=100000" % i),
                               "/ok/warm-%d?size=100000" % i)

    def memory_guard(self, rss):
        """Fails at once when tandem grew 64 MiB over `rss` (KiB): a test that
        finds the body unbounded stops before it eats the machine."""
        def guard():
            grown = self.tandem.memory_kib("VmRSS") - rss
            self.assertLess(grown, 64 * 1024, "tandem's memory grows without bound")
        return guard

    def stalled(self, path, what, rss):
        """Waits until the worker can send no more on `path` (tandem stopped
        opening its window) and checks the connection still serves others."""
        stream = wait_until(lambda: self.worker.stream_of(path), scaled(5), "the request")
        sent = plateau(lambda: stream.sent, scaled(20), guard=self.memory_guard(rss))
        self.assertLess(stream.connection.window_of(stream), MAX_FRAME + 256,
                        "the worker stopped with window left")
        self.assertLess(sent, 32 * MIB)
        # Meanwhile the same worker connection serves other requests.
        for i in range(10):
            path_i = "/ok/meanwhile-%s-%d?size=100000" % (what, i)
            with Client(self.tandem.port) as client:
                self.assert_ok(client.get(path_i), path_i)
            self.assertEqual(self.worker.connection_of(path_i), stream.connection.number)
        time.sleep(1)
        self.assertEqual(stream.sent, sent, "tandem took more of the endless body")
        return stream, sent

    def check_endless(self, what, open_stream, leave, name="endless"):
        self.warm()
        rss = self.tandem.memory_kib("VmRSS")
        self.assertTrue(self.tandem.reset_peak_rss())
        path = "/case/%s?%s" % (name, what)
        start = self.tandem.stdout.count()
        handle = open_stream(path)
        stream, sent = self.stalled(path, what, rss)
        peak = self.tandem.memory_kib("VmHWM") - rss
        print("\nendless body to a %s that does not read: the worker sent %.1f MiB, "
              "tandem's peak RSS grew %d KiB" % (what, sent / MIB, peak))
        self.assertLess(peak, GROWTH_KIB)
        leave(handle)
        self.worker.wait_event(lambda e: e[0] == "rst" and e[2] == stream.id and
                               e[1] == stream.connection.number and e[3] == CANCEL,
                               scaled(5), "RST_STREAM(CANCEL) of the endless stream")
        self.assertEqual(self.goaways_on(stream.connection.number), [])
        self.access_line(path, start, "200")
        # (Under AddressSanitizer freed memory stays resident a while.)
        back_kib = GROWTH_KIB if SANITIZED else 2 * 1024
        after = wait_until(lambda: (lambda v: v if v - rss < back_kib else None)(
            self.tandem.memory_kib("VmRSS")), scaled(5), "the memory back")
        print("after it left: RSS %+d KiB" % (after - rss))

    def test_an_endless_body_to_an_http11_client_that_does_not_read(self):
        def open_stream(path):
            client = self.client(self.tandem.port)
            client.request("GET", path)
            return client

        def leave(client):
            client.close()

        self.check_endless("http11-client", open_stream, leave)

    def test_a_stream_reset_while_its_client_does_not_read_is_cut_when_it_reads(self):
        # tandem stops reading the stream for a client that does not read; the
        # worker then resets it. What tandem holds reaches the client, and the
        # cut right after, as soon as the client reads (fixed: the reset was
        # seen while reading was off and then forgotten, so the client waited
        # for request_timeout).
        self.warm()
        rss = self.tandem.memory_kib("VmRSS")
        path = "/case/endless?reset-while-stalled"
        start = self.tandem.stdout.count()
        client = self.client(self.tandem.port, timeout=scaled(15))
        client.request("GET", path)
        stream, sent = self.stalled(path, "reset-while-stalled", rss)
        with stream.connection.cond:
            stream.reset = INTERNAL_ERROR  # the endless sender stops
            stream.connection.cond.notify_all()
        self.assertTrue(stream.connection.send(
            frame(RST_STREAM, 0, stream.id, struct.pack(">I", INTERNAL_ERROR))))
        time.sleep(scaled(0.5))  # tandem has the reset; the client still reads nothing
        began = time.monotonic()
        with self.assertRaises(IncompleteMessage) as cut:
            client.response()
        waited = time.monotonic() - began
        head, body, complete = partial_body(cut.exception.partial)
        self.assertTrue(head.startswith("http/1.1 200 "), head)
        self.assertFalse(complete)
        self.assertEqual(body, b"E" * sent, "the body is what the worker sent")
        self.assertLess(waited, scaled(3), "the cut came late")
        self.assertIn("flags=UC", self.access_line(path, start, "200"))
        with Client(self.tandem.port) as other:
            self.assert_ok(other.get("/ok/after-reset-while-stalled"),
                           "/ok/after-reset-while-stalled")

    def test_an_endless_body_to_an_h2_client_that_does_not_read(self):
        client = H2Client(self.tandem.port, timeout=scaled(15))
        self.addCleanup(client.close)

        def open_stream(path):
            return client.request("GET", path)

        def leave(stream_id):
            # The client resets its stream (and reads at last): the worker's
            # stream is reset, the client's connection goes on.
            client.reset(stream_id)

        self.check_endless("h2-client", open_stream, leave)
        stream = client.get("/ok/h2-after-endless", timeout=scaled(20))
        self.assertEqual(bytes(stream.data), ok_body("/ok/h2-after-endless"))

    def test_an_endless_padded_body_to_an_http11_client_that_does_not_read(self):
        # Padding counts against the windows and nghttp2 gives it back
        # itself: given back twice, each frame of less body than padding
        # would open the window further, whoever reads.
        def open_stream(path):
            client = self.client(self.tandem.port)
            client.request("GET", path)
            return client

        self.check_endless("http11-client-padded", open_stream, lambda client: client.close(),
                           name="endless-padded")

    def test_a_worker_ignoring_the_window_is_reset_and_its_flood_costs_nothing(self):
        self.warm()
        rss = self.tandem.memory_kib("VmRSS")
        self.assertTrue(self.tandem.reset_peak_rss())
        path = CASES["flood-ignoring-the-window"].path
        client = self.client(self.tandem.port)
        client.request("GET", path)
        stream = wait_until(lambda: self.worker.stream_of(path), scaled(5), "the request")
        self.worker.wait_event(lambda e: e[0] == "rst" and e[2] == stream.id and
                               e[3] == FLOW_CONTROL_ERROR, scaled(10),
                               "RST_STREAM(FLOW_CONTROL_ERROR)")
        guard = self.memory_guard(rss)
        wait_until(lambda: guard() or stream.sent >= FLOOD or stream.connection.closed,
                   scaled(30), "the end of the flood")
        # All of it, past the reset, and past the connection's window: the
        # connection goes on and its window was not used up by the flood.
        # Then 20 MB of answers on it, more than its 16 MiB window: tandem
        # gives the window back as bodies arrive.
        self.assertEqual(stream.sent, FLOOD)
        for i in range(10):
            path_i = "/ok/after-flood-%d?size=2000000" % i
            with Client(self.tandem.port) as other:
                self.assert_ok(other.get(path_i), path_i)
            self.assertEqual(self.worker.connection_of(path_i), stream.connection.number)
        self.assertEqual(self.goaways_on(stream.connection.number), [])
        peak = self.tandem.memory_kib("VmHWM") - rss
        print("\n%d MiB ignoring the window: tandem's peak RSS grew %d KiB" % (FLOOD // MIB, peak))
        self.assertLess(peak, GROWTH_KIB)


class PaddedRequestBodyTest(TandemTestCase):
    """The client side of the padding rule (dispatcher/proxy/h2_connection.cc
    had the same double give-back): an HTTP/2 client uploading DATA frames of
    more padding than body to a backend that reads nothing is held to its
    stream window."""

    def test_a_padded_upload_to_a_backend_that_does_not_read_is_held_to_the_window(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        held = []  # accepted, never read

        def accept():
            try:
                while True:
                    held.append(listener.accept()[0])
            except OSError:
                pass
        threading.Thread(target=accept, daemon=True).start()
        self.addCleanup(lambda: [sock.close() for sock in held])
        tandem = self.start_tandem(make_config(
            ["127.0.0.1:%d" % listener.getsockname()[1]], listener_opts=H2C_LISTENER,
            cluster_opts={"request_timeout": "60s"}))
        client = H2Client(tandem.port, timeout=scaled(15))
        self.addCleanup(client.close)
        client.wait(lambda: client.server_settings, what="SETTINGS")
        rss = tandem.memory_kib("VmRSS")
        stream_id = client.request("POST", "/upload", [("content-type", "x")], end_stream=False)
        piece = bytes([255]) + b"P" * 200 + b"\0" * 255
        sent = 0
        last_progress = time.monotonic()
        deadline = Deadline(scaled(20))
        # Send as the windows allow until they stay shut for a second.
        while time.monotonic() - last_progress < 1.0:
            self.assertFalse(deadline.expired(), "the windows never shut: %d bytes sent" % sent)
            if min(client.send_window, client.stream_windows[stream_id]) >= len(piece):
                client.send(frame(DATA, PADDED, stream_id, piece))
                client.send_window -= len(piece)
                client.stream_windows[stream_id] -= len(piece)
                sent += 200
                last_progress = time.monotonic()
                if sent % (1 << 20) < 200:
                    self.assertLess(tandem.memory_kib("VmRSS") - rss, 64 * 1024,
                                    "tandem's memory grows without bound")
            else:
                client.pump(0.05)
                self.assertFalse(client.closed)
        grown = tandem.memory_kib("VmRSS") - rss
        print("\npadded upload to a backend that reads nothing: %.1f MiB of body taken, "
              "tandem's RSS grew %d KiB" % (sent / MIB, grown))
        self.assertLess(sent, 32 * MIB)
        self.assertLess(grown, GROWTH_KIB)


if __name__ == "__main__":
    unittest.main()
