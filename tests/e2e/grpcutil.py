"""HTTP/2 workers for the gRPC end-to-end tests, each its own process so a test
can SIGKILL or SIGSTOP it (by PID):

  grpc   a Python gRPC server (python3-grpcio, generic handlers) serving
         test.Svc: Echo, Count, Join, Upper, Fail, Meta, Sleep, Remaining
  h2     a small HTTP/2 server built on python3-h2's H2Connection over plain
         sockets: answers each request with the request as JSON, and can be
         told to send GOAWAY after N streams of a connection or to refuse
         streams with RST_STREAM(REFUSED_STREAM)

This file is also the script those processes run:
  python3 grpcutil.py grpc --name W [--cert C --key K]
  python3 grpcutil.py h2 [--goaway-after N] [--refuse-every K] [--refuse-first]
Each prints "port N" once it listens on 127.0.0.1, then one line per event.
"""

import argparse
import json
import os
import select
import socket
import sys
import threading
import time

from harness import ChildProcess, scaled

SCRIPT = os.path.abspath(__file__)
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]


def identity(data):
    return data


def grpc_frame(message):
    """One gRPC length-prefixed message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# ---- the processes, seen from the tests ---------------------------------------------


class ServerProcess(ChildProcess):
    """One of this file's servers in a process of its own."""

    def __init__(self, kind, args, name):
        super().__init__([sys.executable, SCRIPT, kind] + list(args), name=name)
        try:
            _, match = self.stdout.wait_for(r"^port (\d+)$", scaled(20))
        except TimeoutError:
            self.kill()
            raise RuntimeError("%s did not start:\n%s" % (name, self.output())) from None
        self.port = int(match.group(1))
        self.address = "127.0.0.1:%d" % self.port

    def events(self, prefix):
        """Event lines starting with `prefix`, parsed as {key: value}."""
        found = []
        for line in self.stdout.lines():
            words = line.split()
            if words and words[0] == prefix:
                found.append(dict(word.split("=", 1) for word in words[1:] if "=" in word))
        return found

    def close(self):
        """Stops it (SIGCONT first, in case a test left it stopped), by PID."""
        if self.running():
            try:
                os.kill(self.pid, 18)  # SIGCONT
            except OSError:
                pass
            self.kill()


class GrpcWorker(ServerProcess):
    def __init__(self, name, cert=None, key=None):
        args = ["--name", name]
        if cert:
            args += ["--cert", cert, "--key", key]
        super().__init__("grpc", args, "grpc-" + name)
        self.worker_name = name


class H2Worker(ServerProcess):
    def __init__(self, name="h2", goaway_after=0, refuse_every=0, refuse_first=False):
        super().__init__("h2", ["--name", name, "--goaway-after", str(goaway_after),
                                "--refuse-every", str(refuse_every)] +
                         (["--refuse-first"] if refuse_first else []), "h2-" + name)

    def connections(self):
        return len(self.events("conn"))


# ---- the gRPC worker -------------------------------------------------------------------


def grpc_main(options):
    import grpc
    from concurrent import futures

    name = options.name
    say_lock = threading.Lock()

    def say(text):
        with say_lock:
            print(text, flush=True)

    def echo(request, context):
        return name.encode() + b":" + request

    def count(request, context):
        for i in range(int(request)):
            yield b"%d" % i

    def join(requests, context):
        return b",".join(requests)

    def upper(requests, context):
        for request in requests:
            yield request.upper()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, request.decode())

    def meta(request, context):
        context.send_initial_metadata((("x-initial", "i-" + name),))
        context.set_trailing_metadata((("x-trailer", "t-" + name),
                                       ("x-trace-bin", b"\x00\x01\xfe\xff")))
        seen = [[key, value.hex() if isinstance(value, bytes) else value]
                for key, value in context.invocation_metadata()]
        return json.dumps(seen).encode()

    def sleep(request, context):
        say("sleep remaining=%r" % context.time_remaining())
        end = time.monotonic() + float(request)
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        return b"slept"

    def remaining(request, context):
        return json.dumps({"worker": name, "remaining": context.time_remaining()}).encode()

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Join": grpc.stream_unary_rpc_method_handler(join),
        "Upper": grpc.stream_stream_rpc_method_handler(upper),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Meta": grpc.unary_unary_rpc_method_handler(meta),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Remaining": grpc.unary_unary_rpc_method_handler(remaining),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
    if options.cert:
        with open(options.key, "rb") as f:
            key = f.read()
        with open(options.cert, "rb") as f:
            cert = f.read()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    say("port %d" % port)
    server.wait_for_termination()


# ---- the h2 worker ---------------------------------------------------------------------


class H2ServerConnection:
    """One accepted connection, served on its own thread with h2's state machine.

    Every request is answered 200 (or NNN for /status/NNN) with JSON naming
    the connection, stream, method, path, request fields and body size;
    /big/N answers N bytes; /bomb/N answers N copies of a 4 KB field (an
    HPACK bomb); /stall... is never answered. `goaway_after` N: once N streams have begun on
    the connection (and 100 ms more for further ones to come), a GOAWAY with
    the N-th stream's id is sent, the streams up to it are answered, the
    others never, and the connection is closed when the answered ones are
    done. `refuse_every` K: every K-th stream of the process is refused
    (RST_STREAM REFUSED_STREAM) on its HEADERS; `refuse_first`: the first
    stream for each path the process sees is refused.
    """

    def __init__(self, server, sock, number):
        import h2.config
        import h2.connection
        self.server = server
        self.sock = sock
        self.number = number
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                             validate_inbound_headers=False))
        self.streams = {}  # id -> {"fields", "body", "size", "ended"}
        self.pending = {}  # id -> bytearray of response body not sent yet
        self.begun = 0
        self.goaway_last = None  # last stream id of the GOAWAY, once decided
        self.goaway_at = None
        self.goaway_sent = False
        self.answered = 0

    def say(self, text):
        self.server.say(text)

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def run(self):
        import h2.events
        import h2.exceptions
        self.conn.initiate_connection()
        self.flush()
        try:
            while True:
                timeout = 1.0
                if self.goaway_at is not None and not self.goaway_sent:
                    timeout = max(0.0, self.goaway_at - time.monotonic())
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if ready:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    for event in self.conn.receive_data(data):
                        self.on_event(event, h2.events)
                if (self.goaway_at is not None and not self.goaway_sent and
                        time.monotonic() >= self.goaway_at):
                    self.send_goaway()
                self.answer_ready()
                self.send_pending()
                self.flush()
                if self.goaway_sent and self.all_answered():
                    self.linger()
                    return
        except (OSError, h2.exceptions.ProtocolError) as e:
            self.say("error conn=%d what=%s" % (self.number, type(e).__name__))
        finally:
            self.say("closed conn=%d" % self.number)
            try:
                self.sock.close()
            except OSError:
                pass

    def on_event(self, event, events):
        if isinstance(event, events.RequestReceived):
            fields = [(k, v) for k, v in event.headers]
            path = dict(fields).get(":path", "")
            self.begun += 1
            stream_id = event.stream_id
            self.say("headers conn=%d stream=%d path=%s" % (self.number, stream_id, path))
            if self.goaway_last is not None and stream_id > self.goaway_last:
                self.say("beyond conn=%d stream=%d path=%s" % (self.number, stream_id, path))
                return
            if ((self.server.refuse_every and
                 self.server.next_stream() % self.server.refuse_every == 0) or
                    (self.server.refuse_first and self.server.first_sight(path))):
                from h2.errors import ErrorCodes
                self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
                self.say("refused conn=%d stream=%d path=%s" % (self.number, stream_id, path))
                return
            self.streams[stream_id] = {"fields": fields, "size": 0, "ended": False,
                                       "path": path, "hash": __import__("hashlib").sha256()}
            if event.stream_ended is not None:
                self.streams[stream_id]["ended"] = True
            if self.server.goaway_after and self.begun == self.server.goaway_after:
                self.goaway_last = stream_id
                self.goaway_at = time.monotonic() + 0.1
        elif isinstance(event, events.DataReceived):
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream["size"] += len(event.data)
                stream["hash"].update(event.data)
        elif isinstance(event, events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream["ended"] = True
        elif isinstance(event, events.StreamReset):
            self.streams.pop(event.stream_id, None)
            self.pending.pop(event.stream_id, None)
            self.say("reset conn=%d stream=%d code=%d" % (self.number, event.stream_id,
                                                           event.error_code))
        elif isinstance(event, events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream["trailers"] = list(event.headers)

    def linger(self):
        """A graceful close: FIN after the answers, then what still comes is
        read (not left unread, which would make the close a reset that can
        destroy the answers in flight) until the peer closes, 5 s at most."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 5
            while time.monotonic() < end:
                ready, _, _ = select.select([self.sock], [], [], 0.1)
                if ready and not self.sock.recv(65536):
                    return
        except OSError:
            pass

    def send_goaway(self):
        from hyperframe.frame import GoAwayFrame
        self.flush()
        self.sock.sendall(GoAwayFrame(0, last_stream_id=self.goaway_last,
                                      error_code=0).serialize())
        self.goaway_sent = True
        self.say("goaway conn=%d last=%d" % (self.number, self.goaway_last))

    def all_answered(self):
        return not self.streams and not self.pending

    def answer_ready(self):
        if self.goaway_last is not None and not self.goaway_sent:
            return  # the streams below the GOAWAY are answered after it
        for stream_id in sorted(self.streams):
            stream = self.streams[stream_id]
            if not stream["ended"] or stream["path"].startswith("/stall"):
                continue
            del self.streams[stream_id]
            self.answer(stream_id, stream)

    def answer(self, stream_id, stream):
        path = stream["path"]
        status = 200
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
        if path.startswith("/big/"):
            body = (b"0123456789abcdef" * (int(path.split("/")[2]) // 16 + 1))[:int(path.split("/")[2])]
            ctype = "application/octet-stream"
        else:
            body = json.dumps({
                "server": self.server.name, "conn": self.number, "stream": stream_id,
                "path": path, "fields": stream["fields"], "body": stream["size"],
                "sha256": stream["hash"].hexdigest(),
                "trailers": stream.get("trailers", [])}).encode()
            ctype = "application/json"
        headers = [(":status", str(status)), ("content-type", ctype),
                   ("content-length", str(len(body))), ("x-h2-server", self.server.name)]
        if path.startswith("/bomb/"):
            # An HPACK bomb: one 4 KB field, then N one-byte references to it
            # in the dynamic table (about N bytes on the wire, N × 4 KB decoded).
            headers += [("x-bomb", "a" * 4000)] * int(path.split("/")[2])
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.pending[stream_id] = bytearray(body)
        self.answered += 1
        self.say("answered conn=%d stream=%d path=%s bytes=%d" %
                 (self.number, stream_id, path, stream["size"]))

    def send_pending(self):
        for stream_id in list(self.pending):
            data = self.pending[stream_id]
            while data:
                try:
                    room = min(self.conn.local_flow_control_window(stream_id),
                               self.conn.max_outbound_frame_size, len(data))
                except Exception:
                    data.clear()
                    break
                if room <= 0:
                    break
                last = room == len(data)
                self.conn.send_data(stream_id, bytes(data[:room]), end_stream=last)
                del data[:room]
            if not data:
                del self.pending[stream_id]


class H2Server:
    def __init__(self, options):
        self.name = options.name
        self.goaway_after = options.goaway_after
        self.refuse_every = options.refuse_every
        self.refuse_first = options.refuse_first
        self.seen_paths = set()
        self.lock = threading.Lock()
        self.streams = 0
        self.connections = 0

    def say(self, text):
        with self.lock:
            print(text, flush=True)

    def first_sight(self, path):
        with self.lock:
            first = path not in self.seen_paths
            self.seen_paths.add(path)
            return first

    def next_stream(self):
        with self.lock:
            self.streams += 1
            return self.streams

    def serve(self):
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.say("port %d" % listener.getsockname()[1])
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                number = self.connections
            self.say("conn n=%d" % number)
            connection = H2ServerConnection(self, sock, number)
            threading.Thread(target=connection.run, daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["grpc", "h2"])
    parser.add_argument("--name", default="w")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--goaway-after", type=int, default=0)
    parser.add_argument("--refuse-every", type=int, default=0)
    parser.add_argument("--refuse-first", action="store_true")
    options = parser.parse_args()
    if options.kind == "grpc":
        grpc_main(options)
    else:
        H2Server(options).serve()


if __name__ == "__main__":
    main()
