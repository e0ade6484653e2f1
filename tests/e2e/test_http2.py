"""HTTP/2 towards clients, as docs/http2.md states it: a TLS listener offers
"h2" by ALPN and a plain one takes HTTP/2 by prior knowledge ("h2c", the
`PRI * HTTP/2.0` preface), both next to HTTP/1.1 unless `protocols` says
otherwise ("h2" on a plain listener and "h2c" on a TLS one are config errors).
Each stream is carried to an HTTP/1.1 backend as one request: `:authority`
becomes Host (a Host naming another origin is a 400), cookies are joined with
"; ", a body without content-length goes chunked with its trailers, and the
HTTP/1.1 limits apply per stream (431, 413) without ending the connection.
Responses lose their hop-by-hop fields, keep content-length, and a chunked
response's trailers come as a trailers HEADERS frame.

The connection advertises SETTINGS_MAX_CONCURRENT_STREAMS and the initial
window from the config; a slow stream or a stalled upload does not hold the
others. Client resets are logged (flag DC) and counted; rapid resets,
SETTINGS/PING floods and CONTINUATION floods end the connection. A drain sends
GOAWAY(2^31-1), a PING, then GOAWAY with the last stream taken, and in-flight
streams finish; `h2_max_streams_per_connection` ends a connection with
GOAWAY(NO_ERROR) after that many streams. gRPC clients get tandem's own errors
as grpc-status (UNAVAILABLE, RESOURCE_EXHAUSTED). A reload applies to the new
streams of an open connection.

The frame-level client below speaks HTTP/2 with python3-h2's framing and HPACK
(hyperframe, hpack) directly: h2's own state machine refuses frames after a
GOAWAY and will not send floods, both of which these tests need.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (BYTES_PATTERN, MIB, Deadline, HttpReader, IncompleteMessage, ProtocolError,
                     TandemTestCase, chunked_body, curl, make_config, read_request,
                     refused_address, require_tool, run_tandem, scaled, serve_each, toml_table,
                     wait_until, write_file)

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = 2 ** 31 - 1
NO_ERROR, CANCEL = 0, 8

H2C = {"protocols": ["http/1.1", "h2c"]}


# ---- a frame-level HTTP/2 client ---------------------------------------------------


class H2Stream:
    """What arrived on one stream: header blocks in order, DATA, the end."""

    def __init__(self, stream_id):
        self.id = stream_id
        self.blocks = []  # [[(name, value)]] in order: 1xx, response, trailers
        self.data = bytearray()
        self.ended = False  # END_STREAM came
        self.reset = None  # RST_STREAM error code
        self.done_at = None

    @property
    def done(self):
        return self.ended or self.reset is not None

    def _response_index(self):
        for i, block in enumerate(self.blocks):
            status = dict(block).get(":status")
            if status is not None and not status.startswith("1"):
                return i
        return None

    @property
    def response(self):
        i = self._response_index()
        return None if i is None else self.blocks[i]

    @property
    def status(self):
        response = self.response
        return None if response is None else int(dict(response)[":status"])

    def header(self, name):
        for key, value in self.response or ():
            if key == name:
                return value
        return None

    @property
    def trailers(self):
        i = self._response_index()
        return [] if i is None else [f for block in self.blocks[i + 1:] for f in block]

    def __repr__(self):
        return "<stream %d blocks=%r data=%r ended=%s reset=%s>" % (
            self.id, self.blocks, bytes(self.data[:200]), self.ended, self.reset)


class H2Client:
    """One HTTP/2 connection (prior knowledge) to 127.0.0.1:`port`.

    It answers SETTINGS and PING, keeps its receive windows open and follows
    the send windows tandem grants; `pump` reads, `wait` waits for a state.
    Everything received is in `streams`, `goaways` and `frames`.
    """

    def __init__(self, port, timeout=None, rcvbuf=None):
        self.timeout = timeout or scaled(10)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = bytearray()
        self.block = None  # (stream id, end_stream, bytearray) of a header block
        self.streams = {}
        self.goaways = []  # (last_stream_id, error_code)
        self.frames = []  # a summary of every frame received
        self.pings = []  # opaque data of PINGs tandem sent
        self.ping_acks = []
        self.server_settings = {}
        self.closed = False
        self.send_window = 65535
        self.initial_send_window = 65535
        self.stream_windows = {}
        self.next_id = 1
        self.answer = True  # ack SETTINGS and PING, open windows
        self.send(PREFACE + SettingsFrame(0, settings={
            SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 24,
            SettingsFrame.ENABLE_PUSH: 0}).serialize() +
            WindowUpdateFrame(0, window_increment=1 << 30).serialize())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def send_frames(self, *frames):
        self.send(b"".join(f.serialize() for f in frames))

    # -- requests

    def request(self, method="GET", path="/", headers=(), body=None, end_stream=None,
                authority="example.test"):
        """Opens a stream: HEADERS (ending the stream when there is no body and
        `end_stream` is not False), then `body` if given. Returns the id."""
        stream_id = self.next_id
        self.next_id += 2
        fields = [(":method", method), (":scheme", "http")]
        if authority is not None:
            fields.append((":authority", authority))
        fields += [(":path", path)] + list(headers)
        end = (body is None) if end_stream is None else (end_stream and body is None)
        self.streams[stream_id] = H2Stream(stream_id)
        self.stream_windows[stream_id] = self.initial_send_window
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        self.send_frames(HeadersFrame(stream_id, data=self.encoder.encode(fields), flags=flags))
        if body is not None:
            self.send_data(stream_id, body, end_stream is not False)
        return stream_id

    def send_data(self, stream_id, data, end=True, timeout=None):
        """Sends `data` on a stream as the windows allow, reading meanwhile."""
        deadline = Deadline(timeout or self.timeout)
        view = memoryview(data)
        while True:
            room = min(self.send_window, self.stream_windows.get(stream_id, 0), 16384, len(view))
            if room > 0 or not view:
                last = end and room == len(view)
                self.send_frames(DataFrame(stream_id, data=bytes(view[:room]),
                                           flags=["END_STREAM"] if last else []))
                self.send_window -= room
                self.stream_windows[stream_id] -= room
                view = view[room:]
                if not view:
                    return
                continue
            if deadline.expired():
                raise AssertionError("stream %d: no window to send %d more bytes within %.1fs" %
                                     (stream_id, len(view), deadline.seconds))
            if self.closed:
                raise AssertionError("connection closed while sending on stream %d" % stream_id)
            self.pump(0.05)

    def send_trailers(self, stream_id, fields):
        self.send_frames(HeadersFrame(stream_id, data=self.encoder.encode(list(fields)),
                                      flags=["END_HEADERS", "END_STREAM"]))

    def reset(self, stream_id, code=CANCEL):
        self.send_frames(RstStreamFrame(stream_id, error_code=code))

    def ping(self, opaque=b"testping"):
        self.send_frames(PingFrame(0, opaque_data=opaque))

    def round_trip(self, timeout=None):
        """A PING and its ack: tandem has processed everything sent before."""
        opaque = os.urandom(8)
        self.ping(opaque)
        self.wait(lambda: opaque in self.ping_acks, timeout, "a PING ack")

    # -- reading

    def pump(self, timeout):
        """Reads what arrives within `timeout` and handles it; False when
        nothing came (or the connection is closed)."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        self._parse()
        return True

    def wait(self, predicate, timeout=None, what="a condition"):
        deadline = Deadline(timeout or self.timeout)
        while not predicate():
            if self.closed:
                raise AssertionError("connection closed before %s; frames: %s" %
                                     (what, self.frames[-30:]))
            if deadline.expired():
                raise AssertionError("no %s within %.1fs; frames: %s" %
                                     (what, deadline.seconds, self.frames[-30:]))
            self.pump(min(0.2, max(0.001, deadline.end - time.monotonic())))
        return True

    def wait_done(self, stream_ids, timeout=None):
        ids = [stream_ids] if isinstance(stream_ids, int) else list(stream_ids)
        self.wait(lambda: all(self.streams[i].done for i in ids), timeout,
                  "the end of stream(s) %s" % ids)
        return self.streams[ids[0]] if isinstance(stream_ids, int) else [self.streams[i] for i in ids]

    def get(self, path, headers=(), timeout=None, **kwargs):
        stream_id = self.request("GET", path, headers, **kwargs)
        return self.wait_done(stream_id, timeout)

    def wait_closed(self, timeout):
        """True when tandem closes the connection within `timeout`."""
        deadline = Deadline(timeout)
        while not self.closed and not deadline.expired():
            self.pump(min(0.2, max(0.001, deadline.end - time.monotonic())))
        return self.closed

    def _parse(self):
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(self.buf[9:9 + length])))
            del self.buf[:9 + length]
            self._handle(frame)

    def _answer(self, *frames):
        if not self.answer:
            return
        try:
            self.send_frames(*frames)
        except OSError:
            pass

    def _stream(self, stream_id):
        return self.streams.setdefault(stream_id, H2Stream(stream_id))

    def _handle(self, frame):
        summary = [type(frame).__name__, frame.stream_id, sorted(frame.flags)]
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                summary.append(dict(frame.settings))
                size = frame.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
                if size is not None:
                    delta = size - self.initial_send_window
                    self.initial_send_window = size
                    for key in self.stream_windows:
                        self.stream_windows[key] += delta
                self.server_settings.update(frame.settings)
                self._answer(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.ping_acks.append(frame.opaque_data)
            else:
                self.pings.append(frame.opaque_data)
                self._answer(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, GoAwayFrame):
            summary.append((frame.last_stream_id, frame.error_code))
            self.goaways.append((frame.last_stream_id, frame.error_code))
        elif isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.send_window += frame.window_increment
            else:
                self.stream_windows[frame.stream_id] = \
                    self.stream_windows.get(frame.stream_id, 0) + frame.window_increment
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                self.block = (frame.stream_id, "END_STREAM" in frame.flags, bytearray())
            self.block[2].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                stream_id, end, block = self.block
                self.block = None
                fields = self.decoder.decode(bytes(block))
                summary.append(fields)
                stream = self._stream(stream_id)
                stream.blocks.append(fields)
                if end:
                    stream.ended = True
                    stream.done_at = time.monotonic()
        elif isinstance(frame, DataFrame):
            summary.append(len(frame.data))
            stream = self._stream(frame.stream_id)
            stream.data += frame.data
            if "END_STREAM" in frame.flags:
                stream.ended = True
                stream.done_at = time.monotonic()
            n = frame.flow_controlled_length
            if n:
                updates = [WindowUpdateFrame(0, window_increment=n)]
                if not stream.ended:
                    updates.append(WindowUpdateFrame(frame.stream_id, window_increment=n))
                self._answer(*updates)
        elif isinstance(frame, RstStreamFrame):
            summary.append(frame.error_code)
            stream = self._stream(frame.stream_id)
            stream.reset = frame.error_code
            stream.done_at = time.monotonic()
        self.frames.append(summary)


# ---- helpers ---------------------------------------------------------------------------


def h2_metrics(tandem, listener="web"):
    """{name or (name, reason): value} of the tandem_h2_* counters of `listener`."""
    out = {}
    for key, value in tandem.metrics().items():
        match = re.match(r'(tandem_h2_\w+)\{(.*)\}$', key)
        if not match or 'listener="%s"' % listener not in match.group(2):
            continue
        reason = re.search(r'reason="([^"]*)"', match.group(2))
        out[(match.group(1), reason.group(1)) if reason else match.group(1)] = value
    return out


def goaway_total(metrics):
    return sum(v for k, v in metrics.items() if isinstance(k, tuple) and k[0] == "tandem_h2_goaway_total")


def grown(tandem, before, key, listener="web", what=None):
    """Waits until counter `key` of `listener` is above its value in `before`."""
    def check():
        now = h2_metrics(tandem, listener)
        return now if now.get(key, 0) > before.get(key, 0) else None
    try:
        return wait_until(check, scaled(5), what or str(key))
    except TimeoutError:
        raise AssertionError("%s did not grow: before %s, now %s" % (
            key, before, h2_metrics(tandem, listener))) from None


def echo_json(request):
    """What the application backend saw, as the body of its answer."""
    return json.dumps({"method": request.method, "target": request.target,
                       "headers": request.headers, "body": len(request.body),
                       "chunked": request.chunked, "trailers": request.trailers}).encode()


class AppBackend:
    """A raw HTTP/1.1 backend for the frame-level tests (one thread per connection):
      /stall...     the request is left unread (its first line is recorded)
      /trailers     a chunked answer with trailer fields
      /hop          an answer with hop-by-hop and mixed-case fields
      /empty        204
      /not-modified 304 (with the content-length a GET would have)
      anything else 200 with the request as JSON (echo_json)
    """

    def __init__(self):
        self.stop = threading.Event()
        self.stalled = []  # first lines of stalled requests
        self.cond = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.threads = []
        self.socks = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self):
        self.listener.settimeout(0.05)
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock):
        sock.settimeout(scaled(30))
        reader = HttpReader(sock)
        try:
            while not self.stop.is_set():
                if not reader.has_buffered():
                    peek = sock.recv(256, socket.MSG_PEEK)
                    if not peek:
                        return
                    while b"\n" not in peek and len(peek) < 256:
                        time.sleep(0.005)
                        peek = sock.recv(256, socket.MSG_PEEK)
                        if not peek:
                            return
                    line = peek.split(b"\r\n", 1)[0].decode("latin-1")
                    if " /stall" in line:
                        with self.cond:
                            self.stalled.append(line)
                            self.cond.notify_all()
                        self.stop.wait(scaled(60))
                        return
                request = read_request(reader)
                if request is None:
                    return
                sock.sendall(self._answer(request))
        except (OSError, EOFError, IncompleteMessage, ProtocolError):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _answer(request):
        if request.target.startswith("/trailers"):
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Checksum\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" +
                    chunked_body([b"hello ", b"trailers"],
                                 [("X-Checksum", "abc123"), ("X-Count", "2")]))
        if request.target.startswith("/hop"):
            body = b"hop\n"
            return (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop-Named\r\n"
                    b"Keep-Alive: timeout=5\r\nX-Hop-Named: 1\r\nX-Mixed-Case: Value\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
        if request.target.startswith("/empty"):
            return b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n"
        if request.target.startswith("/not-modified"):
            return b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 99\r\n\r\n"
        body = echo_json(request)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def wait_stalled(self, count, timeout=None):
        deadline = Deadline(timeout or scaled(10))
        with self.cond:
            while len(self.stalled) < count:
                left = deadline.end - time.monotonic()
                if left <= 0:
                    raise AssertionError("%d stalled request(s) never reached the backend" % count)
                self.cond.wait(min(left, 0.1))
            return list(self.stalled)

    def close(self):
        self.stop.set()
        self.accepter.join(scaled(5))
        self.listener.close()
        for sock in list(self.socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(scaled(5))


def fields_of(stream_body):
    """The headers the backend saw ({lower name: [values]}), from echo_json."""
    seen = {}
    for name, value in json.loads(stream_body)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


# ---- negotiation --------------------------------------------------------------------------


class NegotiationTest(TandemTestCase):
    """Which protocol a client gets, by listener kind and `protocols`."""

    @classmethod
    def setUpClass(cls):
        from tlsutil import Pki
        cls.pki = Pki()
        cls.addClassCleanup(cls.pki.close)
        cls.pki.ca("ca", "tandem h2 test CA")
        cls.pki.leaf("site", "ca", "site.example.test", dns=["site.example.test"],
                     ips=["127.0.0.1"])
        cls.worker = cls.start_class_worker()

    def tls_opts(self, **more):
        opts = {"tls_cert": self.pki.cert("site"), "tls_key": self.pki.key("site")}
        opts.update(more)
        return opts

    def curl_summary(self, args, url):
        result = curl(["-w", "\n%{http_code} %{http_version}"] + list(args) + [url])
        body, _, summary = result.stdout.decode(errors="replace").rpartition("\n")
        return result, body, summary

    def https(self, port, args=()):
        return self.curl_summary(["--resolve", "site.example.test:%d:127.0.0.1" % port,
                                  "--cacert", self.pki.cert("ca")] + list(args),
                                 "https://site.example.test:%d/bytes?n=100" % port)

    def test_plain_listener_takes_h2c_by_prior_knowledge_and_http11(self):
        # No `protocols`: a plain listener's default is ["http/1.1", "h2c"].
        tandem = self.start_tandem(make_config([self.worker.address]))
        url = "http://127.0.0.1:%d/bytes?n=100" % tandem.port
        result, body, summary = self.curl_summary(["--http2-prior-knowledge"], url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(summary, "200 2")
        self.assertEqual(body.encode(), (BYTES_PATTERN * 2)[:100])
        tandem.wait_access_line(r'"GET /bytes\?n=100 HTTP/2\.0" 200 100 ')
        result, body, summary = self.curl_summary(["--http1.1"], url)
        self.assertEqual(summary, "200 1.1", result.stderr)
        self.assertEqual(body.encode(), (BYTES_PATTERN * 2)[:100])
        tandem.wait_access_line(r'"GET /bytes\?n=100 HTTP/1\.1" 200 100 ')
        metrics = h2_metrics(tandem)
        self.assertEqual(metrics.get("tandem_h2_connections_total"), 1, metrics)
        self.assertEqual(metrics.get("tandem_h2_streams_total"), 1, metrics)

    def test_tls_listener_offers_h2_by_alpn_and_http11(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               listener_opts=self.tls_opts()))
        result, body, summary = self.https(tandem.port, ["--http2"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(summary, "200 2")
        self.assertEqual(body.encode(), (BYTES_PATTERN * 2)[:100])
        result, _, summary = self.https(tandem.port, ["--http1.1"])
        self.assertEqual(summary, "200 1.1", result.stderr)
        from tlsutil import client_context
        for offer, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
            context = client_context(self.pki.cert("ca"), alpn=offer)
            with socket.create_connection(("127.0.0.1", tandem.port), timeout=scaled(10)) as raw:
                with context.wrap_socket(raw, server_hostname="site.example.test") as sock:
                    self.assertEqual(sock.selected_alpn_protocol(), chosen, offer)
        tandem.wait_access_line(r'"GET /bytes\?n=100 HTTP/2\.0" 200 100 ')

    def test_requests_in_many_tls_records_sent_at_once_are_all_answered(self):
        # One TCP send carries 40 requests, each in a TLS record of its own,
        # and the client sends nothing more: every record must be read
        # although the socket has nothing left to report (OpenSSL's
        # read-ahead holds them, docs/performance.md).
        import ssl
        from tlsutil import client_context
        tandem = self.start_tandem(make_config([self.worker.address],
                                               listener_opts=self.tls_opts()))
        context = client_context(self.pki.cert("ca"), alpn=["h2"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="site.example.test")
        end = time.monotonic() + scaled(10)
        with socket.create_connection(("127.0.0.1", tandem.port), timeout=scaled(10)) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    self.assertTrue(data, "closed in the handshake")
                    incoming.write(data)
            sock.sendall(outgoing.read())
            self.assertEqual(tls.selected_alpn_protocol(), "h2")
            encoder = Encoder()
            tls.write(PREFACE + SettingsFrame(0).serialize())
            count = 40
            for i in range(count):
                frame = HeadersFrame(1 + 2 * i, flags=["END_STREAM", "END_HEADERS"])
                frame.data = encoder.encode([(":method", "GET"), (":scheme", "https"),
                                             (":authority", "site.example.test"),
                                             (":path", "/bytes?n=10&i=%d" % i)])
                tls.write(frame.serialize())  # a record each
            batch = outgoing.read()
            self.assertGreater(len(batch), count * 22)  # a record's overhead each
            sock.sendall(batch)
            ended, buffer = set(), b""
            while len(ended) < count and time.monotonic() < end:
                sock.settimeout(max(0.05, end - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                incoming.write(data)
                try:
                    while True:
                        buffer += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                    if len(buffer) < 9 + length:
                        break
                    if "END_STREAM" in frame.flags:
                        ended.add(frame.stream_id)
                    buffer = buffer[9 + length:]
        self.assertEqual(len(ended), count, "answered: %s" % sorted(ended))

    def test_http11_only_listeners_do_not_speak_http2(self):
        plain = self.start_tandem(make_config([self.worker.address],
                                              listener_opts={"protocols": ["http/1.1"]}))
        url = "http://127.0.0.1:%d/bytes?n=100" % plain.port
        result, _, summary = self.curl_summary(["--http2-prior-knowledge"], url)
        self.assertNotEqual(summary, "200 2", result.stderr)
        self.assertNotEqual(result.returncode, 0, (summary, result.stderr))
        result, _, summary = self.curl_summary(["--http1.1"], url)
        self.assertEqual(summary, "200 1.1", result.stderr)
        self.assertEqual(h2_metrics(plain).get("tandem_h2_connections_total"), 0)

        tls = self.start_tandem(make_config(
            [self.worker.address], listener_opts=self.tls_opts(protocols=["http/1.1"])))
        result, _, summary = self.https(tls.port, ["--http2", "-v"])
        self.assertEqual(summary, "200 1.1", result.stderr)
        self.assertIn(b"ALPN: server accepted http/1.1", result.stderr)

    def test_h2_on_a_plain_listener_and_h2c_on_tls_are_config_errors(self):
        directory = tempfile.mkdtemp(prefix="tandem-h2-check-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", directory]))
        cases = [
            ("plain-h2", {"protocols": ["h2"]}, r'"h2" needs TLS'),
            ("plain-h2-and-11", {"protocols": ["http/1.1", "h2"]}, r'"h2" needs TLS'),
            ("tls-h2c", self.tls_opts(protocols=["h2c"]), r'"h2c" is HTTP/2 without TLS'),
            ("unknown", {"protocols": ["http/1.1", "spdy/3"]}, r'unknown protocol "spdy/3"'),
            ("empty", {"protocols": []}, r"at least one protocol"),
        ]
        for name, opts, message in cases:
            with self.subTest(case=name):
                path = os.path.join(directory, name + ".toml")
                text = make_config([self.worker.address], listener_opts=opts)
                write_file(path, text)
                result = run_tandem(["-c", path, "--check"])
                output = (result.stdout + result.stderr).decode()
                self.assertEqual(result.returncode, 1, output)
                line = next(i for i, l in enumerate(text.splitlines(), 1)
                            if l.startswith("protocols"))
                self.assertRegex(output, re.escape(path) + r":%d:\d+: .*protocols" % line)
                self.assertRegex(output, message)
        # A good one passes.
        path = os.path.join(directory, "good.toml")
        write_file(path, make_config([self.worker.address], listener_opts=H2C))
        result = run_tandem(["-c", path, "--check"])
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode())


# ---- nghttp and curl ------------------------------------------------------------------------


class NghttpTest(TandemTestCase):
    """Settings as nghttp sees them; large request bodies through flow control."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker()
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.worker.address],
            listener_opts={"protocols": ["http/1.1", "h2c"], "h2_initial_window_size": "128KiB"}))
        cls.url = "http://127.0.0.1:%d" % cls.tandem.port

    def nghttp(self, args, timeout=None):
        nghttp = require_tool("nghttp2-client", "nghttp")
        return subprocess.run([nghttp] + list(args), capture_output=True,
                              timeout=timeout or scaled(30))

    def test_settings_carry_the_configured_limits(self):
        result = self.nghttp(["-nv", self.url + "/"])
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        received = out.split("recv SETTINGS frame", 1)
        self.assertEqual(len(received), 2, out)
        settings = received[1].split("frame", 1)[0]
        self.assertIn("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]", settings)
        self.assertIn("[SETTINGS_INITIAL_WINDOW_SIZE(0x04):131072]", settings)
        self.assertRegex(out, r"recv \(stream_id=\d+\) :status: 200")

    def test_large_bodies_arrive_whole_with_and_without_a_length(self):
        size = 3 * MIB
        body = os.urandom(size)
        with tempfile.NamedTemporaryFile(prefix="tandem-h2-body-") as f:
            f.write(body)
            f.flush()
            # nghttp sends content-length for a file.
            result = self.nghttp(["-v", "-d", f.name, self.url + "/sink"])
        out = result.stdout.decode(errors="replace")
        self.assertEqual(result.returncode, 0, out[-3000:] + result.stderr.decode())
        self.assertRegex(out, r"content-length: %d" % size)
        answer = json.loads(out[out.rindex('{"worker"'):].split("\n", 1)[0])
        self.assertEqual(answer["bytes"], size, out[-2000:])
        # curl from a pipe: no length, the body goes as DATA until END_STREAM
        # (chunked to the worker).
        result = curl(["--http2-prior-knowledge", "-X", "POST", "-T", "-",
                       "-w", "\n%{http_version}", self.url + "/sink"], input=body)
        text, _, version = result.stdout.decode().rpartition("\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(version, "2")
        self.assertEqual(json.loads(text)["bytes"], size)
        self.tandem.wait_access_line(r'"POST /sink HTTP/2\.0" 200 ')


# ---- frame level ----------------------------------------------------------------------------


class FrameTest(TandemTestCase):
    """One tandem with three h2c listeners:
      web     in front of AppBackend (cluster "compute")
      strict  the same, with max_header_size 4 KiB, max_body_size 16 KiB and
              client_header_timeout 1 s
      wk      in front of a tandem-worker (cluster "workers")
    """

    @classmethod
    def setUpClass(cls):
        cls.app = AppBackend()
        cls.addClassCleanup(cls.app.close)
        cls.worker = cls.start_class_worker(threads=2)
        extra = toml_table("listeners.strict", dict(
            H2C, listen="127.0.0.1:0", cluster="compute", max_header_size="4KiB",
            max_body_size="16KiB", client_header_timeout="1s"))
        extra += toml_table("listeners.wk", dict(H2C, listen="127.0.0.1:0", cluster="workers"))
        extra += toml_table("clusters.workers", {"max_idle_connections": 200})
        extra += toml_table("[clusters.workers.backends]", {"address": cls.worker.address})
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.app.address], listener_opts=H2C, cluster_opts={"retries": 0}, extra=extra))

    def setUp(self):
        self.assertTrue(self.tandem.running(), self.tandem.output()[-5000:])

    def h2(self, listener="web"):
        client = H2Client(self.tandem.ports[listener])
        self.addCleanup(client.close)
        return client

    def test_100_concurrent_streams_a_slow_one_does_not_hold_the_others(self):
        client = self.h2("wk")
        client.wait(lambda: client.server_settings, what="SETTINGS")
        self.assertEqual(client.server_settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS), 100)
        slow = client.request("GET", "/sleep?ms=1500")
        fast = [client.request("GET", "/bytes?n=%d" % (1000 + i)) for i in range(99)]
        client.wait_done(fast, scaled(10))
        self.assertFalse(client.streams[slow].done, client.streams[slow])
        for i, stream_id in enumerate(fast):
            stream = client.streams[stream_id]
            self.assertEqual(stream.status, 200, stream)
            self.assertEqual(len(stream.data), 1000 + i)
            self.assertTrue(stream.ended)
        stream = client.wait_done(slow, scaled(10))
        self.assertEqual(stream.status, 200, stream)
        self.assertTrue(stream.ended)
        self.assertGreater(stream.done_at, max(client.streams[i].done_at for i in fast))
        self.assertEqual(client.goaways, [])

    def test_a_stalled_upload_does_not_hold_other_streams(self):
        client = self.h2()
        client.round_trip()
        window = client.initial_send_window
        self.assertEqual(window, 65536)
        count = len(self.app.stalled)
        stalled = client.request("POST", "/stall", [("content-length", str(64 * MIB))],
                                 end_stream=False)
        self.app.wait_stalled(count + 1)
        # The backend reads nothing: once the kernel buffers are full tandem
        # takes no more and the stream's window stays shut.
        sent = 0
        deadline = Deadline(scaled(20))
        while not deadline.expired():
            try:
                client.send_data(stalled, b"x" * 65536, end=False, timeout=1.0)
            except AssertionError:
                break
            sent += 65536
        self.assertLess(sent, 64 * MIB)
        self.assertEqual(client.stream_windows[stalled], 0)
        # Other streams go on: a response, and an upload of more than a window.
        response = client.get("/bytes-please")
        self.assertEqual(response.status, 200, response)
        upload = client.request("POST", "/upload", body=os.urandom(3 * window))
        stream = client.wait_done(upload)
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(json.loads(stream.data)["body"], 3 * window)
        self.assertFalse(client.streams[stalled].done)
        self.assertEqual(client.stream_windows[stalled], 0)

    def test_a_client_reset_is_logged_dc_and_counted(self):
        before = h2_metrics(self.tandem)
        start = self.tandem.stdout.count()
        stalled = len(self.app.stalled)
        client = self.h2()
        stream_id = client.request("POST", "/stall-reset", [("content-length", "100000")],
                                   body=b"y" * 1000, end_stream=False)
        self.app.wait_stalled(stalled + 1)
        client.reset(stream_id, CANCEL)
        grown(self.tandem, before, "tandem_h2_resets_received_total")
        line = self.tandem.wait_access_line(r'"POST /stall-reset HTTP/2\.0" .* flags=(\S+)',
                                            start=start)
        self.assertIn("DC", line.group(1), line.group(0))
        # The connection goes on.
        self.assertEqual(client.get("/after-reset").status, 200)

    def test_rapid_reset_ends_the_connection(self):
        before = h2_metrics(self.tandem, "wk")
        client = self.h2("wk")
        client.round_trip()
        encoder_fields = [(":method", "GET"), (":scheme", "http"), (":authority", "x.test"),
                          (":path", "/")]
        ended = False
        for batch in range(20):
            frames = []
            for _ in range(500):
                stream_id = client.next_id
                client.next_id += 2
                frames.append(HeadersFrame(stream_id, data=client.encoder.encode(encoder_fields),
                                           flags=["END_HEADERS", "END_STREAM"]))
                frames.append(RstStreamFrame(stream_id, error_code=CANCEL))
            try:
                client.send_frames(*frames)
            except OSError:
                ended = True
                break
            client.pump(0.001)
            if client.goaways or client.closed:
                break
        self.assertTrue(ended or client.wait_closed(scaled(5)),
                        "still open after %d streams reset; frames %s" %
                        (client.next_id // 2, client.frames[-10:]))
        self.assertTrue(client.goaways or ended, client.frames[-10:])
        if client.goaways:
            self.assertNotEqual(client.goaways[-1][1], NO_ERROR, client.goaways)
        after = grown(self.tandem, before, "tandem_h2_resets_received_total", "wk")
        self.assertGreater(goaway_total(after), goaway_total(before), after)
        self.assertTrue(self.tandem.running())

    def flood(self, frame_bytes, count):
        """Sends up to `count` copies of a frame without reading a byte (a small
        receive buffer: the acks back up past the kernel's buffers, then
        tandem's, into nghttp2's queue); returns the client."""
        client = H2Client(self.tandem.port, rcvbuf=4096)
        self.addCleanup(client.close)
        client.round_trip()
        client.answer = False
        blob = frame_bytes * 1000
        try:
            for _ in range(count // 1000):
                client.send(blob)
        except OSError:
            pass  # the connection ended under the flood
        return client

    def test_settings_and_ping_floods_end_the_connection(self):
        floods = {"settings": SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}),
                  "ping": PingFrame(0, opaque_data=b"floodfld")}
        for name, frame in floods.items():
            with self.subTest(flood=name):
                before = h2_metrics(self.tandem)
                client = self.flood(frame.serialize(), 2000000)
                self.assertTrue(client.wait_closed(scaled(5)), "%s flood: still open" % name)
                after = grown(self.tandem, before, ("tandem_h2_goaway_total", "flood"))
                self.assertGreater(goaway_total(after), goaway_total(before))
        self.assertTrue(self.tandem.running())
        self.assertEqual(self.h2().get("/after-flood").status, 200)

    def test_a_continuation_flood_ends_the_connection(self):
        client = self.h2("web")
        client.round_trip()
        block = client.encoder.encode([(":method", "GET"), (":scheme", "http"),
                                       (":authority", "x.test"), (":path", "/cont")])
        frames = [HeadersFrame(1, data=block)]  # no END_HEADERS
        for _ in range(200):
            # A small field each: the list stays far below any size limit
            # (nghttp2's limit is 8 CONTINUATION frames; 5 leave it open).
            frames.append(ContinuationFrame(1, data=client.encoder.encode(
                [("x-c", "v")], huffman=False)))
        started = time.monotonic()
        try:
            client.send_frames(*frames)
        except OSError:
            pass
        # client_header_timeout is 10 s here: only the CONTINUATION limit ends it now.
        self.assertTrue(client.wait_closed(scaled(3)),
                        "open after 200 CONTINUATION frames: %s" % client.frames[-5:])
        self.assertLess(time.monotonic() - started, scaled(3))
        self.assertNotIn(1, client.streams)  # no response began
        self.assertEqual(self.h2().get("/after-continuation").status, 200)

    def test_a_head_that_never_ends_closes_the_connection_after_client_header_timeout(self):
        client = self.h2("strict")
        client.round_trip()
        block = client.encoder.encode([(":method", "GET"), (":scheme", "http"),
                                       (":authority", "x.test"), (":path", "/slow-head")])
        started = time.monotonic()
        client.send_frames(HeadersFrame(1, data=block))  # and no CONTINUATION
        self.assertTrue(client.wait_closed(scaled(5)), client.frames[-5:])
        self.assertGreaterEqual(time.monotonic() - started, 0.9)

    def test_a_header_list_over_max_header_size_is_431_on_that_stream_only(self):
        client = self.h2("strict")
        big = client.request("GET", "/big-head", [("x-big", "b" * 5000)])
        small = client.request("GET", "/small-head", [("x-small", "s" * 1000)])
        big_stream, small_stream = client.wait_done([big, small])
        self.assertEqual(big_stream.status, 431, big_stream)
        self.assertIn(b"431", bytes(big_stream.data))
        self.assertEqual(small_stream.status, 200, small_stream)
        self.assertEqual(fields_of(small_stream.data)["x-small"], ["s" * 1000])
        # Many fields adding up past the limit, too.
        many = client.get("/many", [("x-f%02d" % i, "v" * 100) for i in range(45)])
        self.assertEqual(many.status, 431, many)
        self.assertEqual(client.get("/still-open").status, 200)
        self.assertEqual(client.goaways, [])
        self.assertFalse(client.closed)

    def test_an_hpack_bomb_is_431_and_costs_no_memory(self):
        # 40,000 references to one 4 KB field: ~44 KB on the wire (HEADERS
        # and three CONTINUATION frames), 160 MB decoded. tandem counts the
        # fields past the limit and keeps none of them.
        client = self.h2("strict")
        client.round_trip()
        self.assertTrue(self.tandem.reset_peak_rss())
        before = self.tandem.memory_kib("VmHWM")
        stream_id = client.next_id
        client.next_id += 2
        client.streams[stream_id] = H2Stream(stream_id)
        block = client.encoder.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"),
             (":path", "/bomb")] + [("x-bomb", "a" * 4000)] * 40000)
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        self.assertLessEqual(len(pieces), 8)  # within nghttp2's CONTINUATION limit
        frames = [HeadersFrame(stream_id, data=pieces[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(stream_id, data=piece) for piece in pieces[1:]]
        frames[-1].flags.add("END_HEADERS")
        client.send_frames(*frames)
        stream = client.wait_done(stream_id)
        grown = self.tandem.memory_kib("VmHWM") - before
        print("\nHPACK bomb from a client: %s, peak RSS grew %d KiB" % (stream.status, grown))
        self.assertEqual(stream.status, 431, stream)
        self.assertLess(grown, 32 * 1024)
        self.assertEqual(client.get("/still-open").status, 200)

    def test_a_body_over_max_body_size_is_413(self):
        client = self.h2("strict")
        client.round_trip()
        # A declared length over the limit: 413 before the body.
        declared = client.request("POST", "/declared", [("content-length", str(64 * 1024))],
                                  end_stream=False)
        stream = client.wait_done(declared)
        self.assertEqual(stream.status, 413, stream)
        # No length: 413 once past the limit; the client was still sending, so
        # the stream is reset with NO_ERROR after the response.
        unbounded = client.request("POST", "/unbounded", end_stream=False)
        client.send_data(unbounded, b"z" * (20 * 1024), end=False)
        stream = client.wait_done(unbounded)
        self.assertEqual(stream.status, 413, stream)
        client.wait(lambda: client.streams[unbounded].reset is not None, what="RST_STREAM")
        self.assertEqual(client.streams[unbounded].reset, NO_ERROR)
        # Within the limit, both ways.
        ok = client.request("POST", "/fits", body=b"a" * (15 * 1024))
        self.assertEqual(json.loads(client.wait_done(ok).data)["body"], 15 * 1024)
        self.assertFalse(client.closed)

    def test_host_differing_from_authority_is_400(self):
        client = self.h2()
        stream = client.get("/host", [("host", "other.example.test")],
                            authority="example.test")
        self.assertEqual(stream.status, 400, stream)
        same = client.get("/host", [("host", "example.test")], authority="example.test")
        self.assertEqual(same.status, 200, same)
        self.assertEqual(fields_of(same.data)["host"], ["example.test"])
        # No :authority: Host is used.
        only_host = client.get("/host", [("host", "h.example.test")], authority=None)
        self.assertEqual(only_host.status, 200, only_host)
        self.assertEqual(fields_of(only_host.data)["host"], ["h.example.test"])

    def test_the_request_head_as_the_backend_sees_it(self):
        client = self.h2()
        stream = client.get("/head?q=1", [("cookie", "a=1"), ("cookie", "b=2"),
                                          ("cookie", "c=3"), ("x-one", "1")],
                            authority="site.example.test:8443")
        seen = json.loads(stream.data)
        fields = fields_of(stream.data)
        self.assertEqual((seen["method"], seen["target"]), ("GET", "/head?q=1"))
        self.assertEqual(fields["cookie"], ["a=1; b=2; c=3"])
        self.assertEqual(fields["host"], ["site.example.test:8443"])
        self.assertEqual(fields["x-one"], ["1"])
        self.assertNotIn("transfer-encoding", fields)
        # A body with content-length keeps it.
        sized = client.request("POST", "/sized", [("content-length", "5")], body=b"12345")
        stream = client.wait_done(sized)
        seen = json.loads(stream.data)
        self.assertEqual((seen["body"], seen["chunked"]), (5, False))
        self.assertEqual(fields_of(stream.data)["content-length"], ["5"])
        # Without one the body goes chunked, with the client's trailers.
        unsized = client.request("POST", "/unsized", end_stream=False)
        client.send_data(unsized, b"abcdef", end=False)
        client.send_trailers(unsized, [("x-request-checksum", "r1"), ("x-more", "m")])
        stream = client.wait_done(unsized)
        seen = json.loads(stream.data)
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual((seen["body"], seen["chunked"]), (6, True))
        self.assertEqual(fields_of(stream.data)["transfer-encoding"], ["chunked"])
        self.assertIn(["x-request-checksum", "r1"], seen["trailers"])
        self.assertIn(["x-more", "m"], seen["trailers"])
        self.tandem.wait_access_line(r'"POST /unsized HTTP/2\.0" 200 ')

    def test_response_trailers_come_as_a_trailers_headers_frame(self):
        client = self.h2()
        stream = client.get("/trailers")
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(bytes(stream.data), b"hello trailers")
        self.assertEqual(len(stream.blocks), 2, stream)
        self.assertIn(("x-checksum", "abc123"), stream.trailers)
        self.assertIn(("x-count", "2"), stream.trailers)
        self.assertTrue(stream.ended)
        self.assertIsNone(stream.header("transfer-encoding"))
        # The trailers frame ends the stream (not the last DATA).
        frames = [f for f in client.frames if f[1] == stream.id]
        self.assertEqual(frames[-1][0], "HeadersFrame", frames)
        self.assertIn("END_STREAM", frames[-1][2], frames)

    def test_response_fields_lose_hop_by_hop_and_bodiless_ends_in_headers(self):
        client = self.h2()
        stream = client.get("/hop")
        names = [name for name, _ in stream.response]
        self.assertEqual(stream.status, 200, stream)
        for hop in ("connection", "keep-alive", "x-hop-named", "transfer-encoding"):
            self.assertNotIn(hop, names)
        self.assertIn(("x-mixed-case", "Value"), stream.response)
        self.assertEqual(stream.header("content-length"), "4")
        self.assertEqual(names, [n.lower() for n in names])
        self.assertEqual(bytes(stream.data), b"hop\n")
        for method, path, status in (("HEAD", "/hop", 200), ("GET", "/empty", 204),
                                     ("GET", "/not-modified", 304)):
            with self.subTest(method=method, path=path):
                stream_id = client.request(method, path)
                stream = client.wait_done(stream_id)
                frames = [f for f in client.frames if f[1] == stream_id]
                self.assertEqual(len(frames), 1, frames)
                self.assertEqual(frames[0][0], "HeadersFrame")
                self.assertIn("END_STREAM", frames[0][2])
                self.assertEqual(stream.status, status, stream)
                self.assertEqual(bytes(stream.data), b"")


# ---- drain and stream limits -------------------------------------------------------------------


class DrainTest(TandemTestCase):

    def drain(self, answer_ping):
        """Two slow streams in flight, then SIGTERM; returns (client, stream
        ids, seconds from SIGTERM to the final GOAWAY)."""
        worker = self.start_worker()
        tandem = self.start_tandem(make_config([worker.address], listener_opts=H2C))
        client = H2Client(tandem.port)
        self.addCleanup(client.close)
        ids = [client.request("GET", "/sleep?ms=2000") for _ in range(2)]
        client.round_trip()  # tandem has taken both streams
        client.answer = answer_ping
        signalled = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        client.wait(lambda: len(client.goaways) >= 2, scaled(5), "two GOAWAY frames")
        final_after = time.monotonic() - signalled
        self.assertEqual(client.goaways[0], (MAX_STREAM_ID, NO_ERROR))
        self.assertEqual(client.goaways[1], (ids[-1], NO_ERROR))
        self.assertTrue(client.pings, "no PING with the shutdown notice")
        self.assertFalse(any(client.streams[i].done for i in ids),
                         "the final GOAWAY came after the streams ended")
        client.answer = True
        for stream in client.wait_done(ids, scaled(5)):
            self.assertEqual(stream.status, 200, stream)
            self.assertTrue(stream.ended, stream)
        self.assertTrue(client.wait_closed(scaled(5)), "the connection stayed open")
        self.assertEqual(tandem.wait(scaled(10)), 0, tandem.output()[-3000:])
        self.assertEqual(len(client.goaways), 2, client.goaways)
        return client, ids, final_after

    def test_sigterm_sends_goaway_twice_and_lets_streams_finish(self):
        client, ids, final_after = self.drain(answer_ping=True)
        # The final GOAWAY follows the PING's ack, not the 1 s timer.
        self.assertLess(final_after, 0.9)
        # Order: the notice, then the PING whose ack shows the client has
        # the notice, then the final GOAWAY (RFC 9113 section 6.8).
        kinds = [f[0] + ("-ack" if "ACK" in f[2] else "") for f in client.frames
                 if f[0] in ("GoAwayFrame", "PingFrame")]
        self.assertEqual([k for k in kinds if k != "PingFrame-ack"][-3:],
                         ["GoAwayFrame", "PingFrame", "GoAwayFrame"], client.frames)

    def test_without_the_ping_ack_the_final_goaway_comes_after_a_second(self):
        client, ids, final_after = self.drain(answer_ping=False)
        self.assertGreaterEqual(final_after, 0.9)
        self.assertLess(final_after, scaled(1.0) + 0.8)


class MaxStreamsTest(TandemTestCase):

    def test_goaway_after_h2_max_streams_per_connection(self):
        worker = self.start_worker()
        tandem = self.start_tandem(make_config(
            [worker.address], listener_opts=dict(H2C, h2_max_streams_per_connection=3)))
        client = H2Client(tandem.port)
        self.addCleanup(client.close)
        for _ in range(2):
            self.assertEqual(client.get("/bytes?n=10").status, 200)
        self.assertEqual(client.goaways, [])
        third = client.request("GET", "/sleep?ms=300")
        client.wait(lambda: client.goaways, scaled(5), "GOAWAY after the 3rd stream")
        self.assertEqual(client.goaways, [(5, NO_ERROR)])
        self.assertFalse(client.streams[third].done, "GOAWAY came only after the stream ended")
        stream = client.wait_done(third, scaled(5))
        self.assertEqual(stream.status, 200, stream)
        self.assertTrue(stream.ended)
        self.assertTrue(client.wait_closed(scaled(5)), "open after the last stream")
        self.assertGreaterEqual(h2_metrics(tandem).get(("tandem_h2_goaway_total", "no_error")), 1)


# ---- gRPC ----------------------------------------------------------------------------------------


class GrpcTest(TandemTestCase):

    def call(self, port):
        import grpc
        channel = grpc.insecure_channel("127.0.0.1:%d" % port,
                                        options=[("grpc.enable_http_proxy", 0)])
        self.addCleanup(channel.close)
        method = channel.unary_unary("/pkg.Svc/Method", request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        try:
            method(b"\x08\x01", timeout=scaled(10))
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, None

    def test_local_errors_are_grpc_statuses(self):
        import grpc
        address, holder = refused_address()
        self.addCleanup(holder.close)
        limited = toml_table("listeners.limited", {"listen": "127.0.0.1:0", "cluster": "compute"})
        limited += toml_table("listeners.limited.rate_limit", {"rate": 0.05, "burst": 1})
        tandem = self.start_tandem(make_config([address], cluster_opts={"retries": 0},
                                               extra=limited))
        # No backend: UNAVAILABLE, told in grpc-status (an HTTP 502 or 503
        # would map to UNAVAILABLE in the client too; the message tells them
        # apart), as one HEADERS frame that ends the stream (Trailers-Only).
        code, details = self.call(tandem.port)
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)
        self.assertNotIn("http2 header with status", details or "")
        client = H2Client(tandem.port)
        self.addCleanup(client.close)
        grpc_fields = [("content-type", "application/grpc"), ("te", "trailers")]
        stream_id = client.request("POST", "/pkg.Svc/Method", grpc_fields,
                                   body=b"\x00\x00\x00\x00\x02\x08\x01")
        stream = client.wait_done(stream_id)
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "14", stream)
        self.assertTrue(stream.header("grpc-message"), stream)
        self.assertEqual(len(stream.blocks), 1, stream)
        self.assertEqual(bytes(stream.data), b"")
        self.assertTrue(stream.ended, stream)
        # Over a rate limit (429): RESOURCE_EXHAUSTED, which no HTTP status
        # maps to.
        port = tandem.ports["limited"]
        code, details = self.call(port)
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)
        code, details = self.call(port)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        tandem.wait_access_line(r'"POST /pkg\.Svc/Method HTTP/2\.0" 429 .*limited.*RL')
        # Not a gRPC request: tandem's plain answer.
        plain = client.get("/plain")
        self.assertIn(plain.status, (502, 503), plain)
        self.assertIsNone(plain.header("grpc-status"))


    def test_a_workers_unavailable_is_retried_as_its_503(self):
        # A worker's UNAVAILABLE in its response head (Trailers-Only: no
        # message sent) is retried elsewhere as a 503 would be: for an
        # idempotent call; a POST that reached the worker gets it relayed.
        def answer(grpc_status):
            head = ("HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                    "grpc-status: %d\r\ngrpc-message: busy\r\ncontent-length: 0\r\n\r\n"
                    % grpc_status).encode()
            return serve_each(lambda request: head)
        busy = self.start_backend(answer(14))
        good = self.start_backend(answer(0))
        tandem = self.start_tandem(make_config([busy.address, good.address],
                                               listener_opts=H2C))
        client = H2Client(tandem.port)
        self.addCleanup(client.close)
        grpc_fields = [("content-type", "application/grpc"), ("te", "trailers")]

        def statuses(method):
            found = []
            for _ in range(4):
                stream = client.wait_done(client.request(method, "/pkg.Svc/Method", grpc_fields,
                                                         body=b"\x00\x00\x00\x00\x00"))
                self.assertEqual(stream.status, 200, stream)
                found.append(stream.header("grpc-status"))
            return found
        # Round-robin sends every other call to the busy worker first.
        self.assertEqual(statuses("PUT"), ["0"] * 4)
        tandem.wait_access_line(r'"PUT /pkg\.Svc/Method HTTP/2\.0" 200 .*R5.*failed_tries=%s:R5'
                                % re.escape(busy.address))
        self.assertEqual(sorted(statuses("POST")), ["0", "0", "14", "14"])


# ---- reload --------------------------------------------------------------------------------------


class ReloadTest(TandemTestCase):

    def test_an_open_connection_takes_the_new_config_for_new_streams(self):
        worker = self.start_worker()
        config = lambda size: make_config([worker.address],
                                          listener_opts=dict(H2C, max_body_size=size))
        tandem = self.start_tandem(config("1MiB"))
        client = H2Client(tandem.port)
        self.addCleanup(client.close)
        body = os.urandom(40 * 1024)
        stream = client.wait_done(client.request("POST", "/sink", body=body))
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(json.loads(stream.data)["bytes"], len(body))
        self.assertTrue(tandem.reload(config("16KiB")))
        stream = client.wait_done(client.request("POST", "/sink", body=body))
        self.assertEqual(stream.status, 413, stream)
        stream = client.wait_done(client.request("POST", "/sink", body=body[:1000]))
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(json.loads(stream.data)["bytes"], 1000)
        self.assertEqual(client.get("/bytes?n=5").status, 200)
        self.assertEqual(client.goaways, [])
        self.assertFalse(client.closed)


if __name__ == "__main__":
    unittest.main()
