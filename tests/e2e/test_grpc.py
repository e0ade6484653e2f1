"""HTTP/2 to workers and gRPC through tandem, end to end.

A cluster's `protocol` says what tandem speaks to its workers: "http1" (the
default), "h2" (TLS with ALPN h2; needs `tls = true`) or "h2c" (cleartext,
prior knowledge). Requests to an HTTP/2 cluster share a few multiplexed
sessions per backend, each try a stream; `max_requests_per_connection` bounds
the streams one session carries. A stream the worker refused (RST_STREAM
REFUSED_STREAM) or above a worker GOAWAY's last stream id never reached it and
goes to another connection or worker, even a POST; the streams below a GOAWAY
finish. A gRPC client's `grpc-timeout` bounds the exchange (capped by
request_timeout), the time left goes on to the worker as grpc-timeout, and
when it runs out the client gets DEADLINE_EXCEEDED. A worker's status,
message, metadata and trailers reach the client unchanged; a Trailers-Only
answer stays Trailers-Only.

Workers are Python gRPC servers (python3-grpcio, generic handlers) and a small
HTTP/2 server on python3-h2 (grpcutil.py), each in its own process so a test
can SIGKILL or SIGSTOP it. Clients are python3-grpcio channels, HTTP/1.1
requests (harness) and the frame-level client of test_http2.
"""

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

from grpcutil import GRPC_OPTIONS, GrpcWorker, H2Worker, grpc_frame, identity
from harness import (TandemTestCase, chunked_body, http_request, make_config, run_tandem,
                     scaled, wait_until, write_file)
from test_http2 import H2Client

H2C = {"protocol": "h2c"}
GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def start_grpc_worker(case, name, cert=None, key=None):
    worker = GrpcWorker(name, cert, key)
    case.addCleanup(worker.close)
    return worker


def start_h2_worker(case, name="h2", **options):
    worker = H2Worker(name, **options)
    case.addCleanup(worker.close)
    return worker


class GrpcClient:
    """A channel to tandem's listener and the test.Svc methods on it."""

    def __init__(self, port, credentials=None):
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % port, options=GRPC_OPTIONS)
        kwargs = {"request_serializer": identity, "response_deserializer": identity}
        self.echo = self.channel.unary_unary("/test.Svc/Echo", **kwargs)
        self.count = self.channel.unary_stream("/test.Svc/Count", **kwargs)
        self.join = self.channel.stream_unary("/test.Svc/Join", **kwargs)
        self.upper = self.channel.stream_stream("/test.Svc/Upper", **kwargs)
        self.fail = self.channel.unary_unary("/test.Svc/Fail", **kwargs)
        self.meta = self.channel.unary_unary("/test.Svc/Meta", **kwargs)
        self.sleep = self.channel.unary_unary("/test.Svc/Sleep", **kwargs)
        self.remaining = self.channel.unary_unary("/test.Svc/Remaining", **kwargs)

    def close(self):
        self.channel.close()


def grpc_client(case, port):
    client = GrpcClient(port)
    case.addCleanup(client.close)
    return client


def code_of(call, *args, **kwargs):
    """(status code, details, result) of one call."""
    try:
        return grpc.StatusCode.OK, None, call(*args, **kwargs)
    except grpc.RpcError as e:
        return e.code(), e.details(), None


def fields_dict(fields):
    seen = {}
    for name, value in fields:
        seen.setdefault(name, []).append(value)
    return seen


# ---- 1, 2: calls, statuses, metadata -------------------------------------------------


class GrpcCallsTest(TandemTestCase):
    """Two gRPC workers behind an h2c cluster."""

    @classmethod
    def setUpClass(cls):
        cls.workers = [GrpcWorker("w1"), GrpcWorker("w2")]
        for worker in cls.workers:
            cls.addClassCleanup(worker.close)
        cls.tandem = cls.start_class_tandem(make_config([w.address for w in cls.workers],
                                                        cluster_opts=H2C))
        cls.client = GrpcClient(cls.tandem.port)
        cls.addClassCleanup(cls.client.close)

    def test_unary_and_streaming_calls_spread_over_both_workers(self):
        client = self.client
        replies = [client.echo(b"hello %d" % i, timeout=scaled(10)) for i in range(20)]
        names = collections.Counter(reply.split(b":", 1)[0] for reply in replies)
        self.assertEqual(set(names), {b"w1", b"w2"}, replies)
        for i, reply in enumerate(replies):
            self.assertEqual(reply.split(b":", 1)[1], b"hello %d" % i)
        # A message larger than every window on the way, both ways.
        big = os.urandom(3 * 1024 * 1024)
        reply = client.echo(big, timeout=scaled(20))
        self.assertIn(reply[:3], (b"w1:", b"w2:"))
        self.assertEqual(hashlib.sha256(reply[3:]).hexdigest(), hashlib.sha256(big).hexdigest())
        # Server streaming.
        self.assertEqual(list(client.count(b"500", timeout=scaled(10))),
                         [b"%d" % i for i in range(500)])
        # Client streaming.
        self.assertEqual(client.join(iter([b"a", b"b", b"c"] * 100), timeout=scaled(10)),
                         b",".join([b"a", b"b", b"c"] * 100))
        # Bidirectional, one message at a time: each answer comes before the
        # next request is sent.
        outbox = collections.deque()
        ready = threading.Event()

        def requests():
            for i in range(50):
                outbox.append(b"msg-%d" % i)
                yield b"msg-%d" % i
                if not ready.wait(scaled(10)):
                    return
                ready.clear()

        answers = []
        for answer in client.upper(requests(), timeout=scaled(20)):
            answers.append(answer)
            ready.set()
        self.assertEqual(answers, [b"MSG-%d" % i for i in range(50)])
        # Each kind went through tandem as one HTTP/2 request.
        for method in ("Echo", "Count", "Join", "Upper"):
            self.tandem.wait_access_line(r'"POST /test\.Svc/%s HTTP/2\.0" 200 ' % method)

    def test_a_worker_status_and_message_reach_the_client_unchanged(self):
        message = "no such thing: 50% of /x \u00e9t\u00e9"
        code, details, _ = code_of(self.client.fail, message.encode(), timeout=scaled(10))
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND, details)
        self.assertEqual(details, message)
        # At frame level: the worker's Trailers-Only answer stays one HEADERS
        # frame that ends the stream, its grpc-message as the worker wrote it.
        h2 = H2Client(self.tandem.port)
        self.addCleanup(h2.close)
        stream = h2.wait_done(h2.request("POST", "/test.Svc/Fail", GRPC_HEADERS,
                                         body=grpc_frame(b"gone 100%")))
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "5", stream)
        self.assertEqual(stream.header("grpc-message"), "gone 100%25", stream)
        self.assertEqual(len(stream.blocks), 1, stream)
        self.assertEqual(bytes(stream.data), b"", stream)
        self.assertTrue(stream.ended, stream)
        self.assertIsNone(stream.reset, stream)
        # A normal answer: HEADERS, DATA, then trailers with grpc-status 0.
        stream = h2.wait_done(h2.request("POST", "/test.Svc/Echo", GRPC_HEADERS,
                                         body=grpc_frame(b"raw")))
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("content-type"), "application/grpc", stream)
        self.assertIsNone(stream.header("grpc-status"), stream)
        payload = bytes(stream.data)
        self.assertIn(payload, (grpc_frame(b"w1:raw"), grpc_frame(b"w2:raw")))
        self.assertEqual(dict(stream.trailers).get("grpc-status"), "0", stream)

    def test_metadata_both_ways(self):
        metadata = (("x-request-id", "r-42"), ("x-user", "alice"),
                    ("x-blob-bin", b"\x00\x01\xff"))
        reply, call = self.client.meta.with_call(b"", metadata=metadata, timeout=scaled(10))
        seen = fields_dict(json.loads(reply))
        self.assertEqual(seen.get("x-request-id"), ["r-42"], seen)
        self.assertEqual(seen.get("x-user"), ["alice"], seen)
        self.assertEqual(seen.get("x-blob-bin"), ["0001ff"], seen)
        initial = dict(call.initial_metadata())
        trailing = dict(call.trailing_metadata())
        worker = initial.get("x-initial", "")[2:]
        self.assertIn(worker, ("w1", "w2"), initial)
        self.assertEqual(trailing.get("x-trailer"), "t-" + worker, trailing)
        self.assertEqual(trailing.get("x-trace-bin"), b"\x00\x01\xfe\xff", trailing)
        self.assertEqual(call.code(), grpc.StatusCode.OK)


# ---- 3: grpc-timeout ---------------------------------------------------------------------


class StreamingIdleTest(TandemTestCase):
    """A streaming call has no idle timeout (docs/http2.md): one quiet for
    longer than the cluster's idle_timeout goes on."""

    def test_a_bidi_call_quiet_past_idle_timeout_goes_on(self):
        worker = start_grpc_worker(self, "w1")
        tandem = self.start_tandem(make_config(
            [worker.address], cluster_opts=dict(H2C, idle_timeout="1s")))
        client = grpc_client(self, tandem.port)

        def messages():
            yield b"a"
            time.sleep(2.5)
            yield b"b"

        started = time.monotonic()
        replies = list(client.upper(messages(), timeout=20))
        self.assertEqual(replies, [b"A", b"B"])
        self.assertGreaterEqual(time.monotonic() - started, 2.4)


class GrpcTimeoutTest(TandemTestCase):

    @classmethod
    def setUpClass(cls):
        cls.worker = GrpcWorker("t1")
        cls.addClassCleanup(cls.worker.close)
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.worker.address], cluster_opts=dict(H2C, request_timeout="8s")))
        cls.client = GrpcClient(cls.tandem.port)
        cls.addClassCleanup(cls.client.close)

    def test_a_deadline_ends_the_call_in_time_and_the_worker_is_told(self):
        start = self.worker.stdout.count()
        began = time.monotonic()
        code, details, _ = code_of(self.client.sleep, b"2", timeout=0.5)
        elapsed = time.monotonic() - began
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED, details)
        self.assertLess(elapsed, 1.5)
        _, match = self.worker.stdout.wait_for(r"sleep remaining=([0-9.e-]+)", scaled(5), start)
        self.assertGreater(float(match.group(1)), 0)
        # The gRPC client rounds its grpc-timeout up a little (0.5 s goes as
        # "501m"); tandem forwards what is left of it.
        self.assertLessEqual(float(match.group(1)), 0.502)

    def test_a_raw_grpc_timeout_ends_the_call(self):
        # Without a deadline of the client's own: grpc-status 4
        # (DEADLINE_EXCEEDED) after about 500 ms, not the 8 s request_timeout
        # nor the worker's 2 s. (The worker, told the time left, ends it at
        # the same moment; H2WorkerTest has a worker that does not.)
        client = H2Client(self.tandem.port)
        self.addCleanup(client.close)
        start = self.worker.stdout.count()
        began = time.monotonic()
        stream = client.wait_done(client.request(
            "POST", "/test.Svc/Sleep", GRPC_HEADERS + [("grpc-timeout", "500m")],
            body=grpc_frame(b"2")), timeout=scaled(10))
        elapsed = time.monotonic() - began
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "4", stream)
        self.assertGreaterEqual(elapsed, 0.45, stream)
        self.assertLess(elapsed, 1.5, stream)
        _, match = self.worker.stdout.wait_for(r"sleep remaining=([0-9.e-]+)", scaled(5), start)
        self.assertGreater(float(match.group(1)), 0)
        self.assertLessEqual(float(match.group(1)), 0.5)

    def test_the_worker_gets_the_time_left_capped_by_request_timeout(self):
        client = H2Client(self.tandem.port)
        self.addCleanup(client.close)
        stream = client.wait_done(client.request(
            "POST", "/test.Svc/Remaining", GRPC_HEADERS + [("grpc-timeout", "5000m")],
            body=grpc_frame(b"")))
        self.assertEqual(dict(stream.trailers).get("grpc-status"), "0", stream)
        left = json.loads(bytes(stream.data)[5:])["remaining"]
        self.assertIsNotNone(left)
        self.assertGreater(left, 4)
        self.assertLessEqual(left, 5)
        # From a gRPC client, which rounds its grpc-timeout up by up to about
        # 0.5 % (a direct call with timeout=20 sees 20.1 s left).
        left = json.loads(self.client.remaining(b"", timeout=5))["remaining"]
        self.assertIsNotNone(left)
        self.assertGreater(left, 4)
        self.assertLess(left, 5.03)
        # A deadline beyond the cluster's request_timeout (8 s) is cut to it.
        left = json.loads(self.client.remaining(b"", timeout=20))["remaining"]
        self.assertIsNotNone(left)
        self.assertGreater(left, 7)
        self.assertLessEqual(left, 8)


# ---- 4: HTTP/1.1 clients to an HTTP/2 worker ---------------------------------------


class H2WorkerTest(TandemTestCase):
    """HTTP/1.1 clients (and one frame-level HTTP/2 client) to the python3-h2
    worker over h2c."""

    @classmethod
    def setUpClass(cls):
        cls.worker = H2Worker("echo")
        cls.addClassCleanup(cls.worker.close)
        cls.tandem = cls.start_class_tandem(make_config([cls.worker.address], cluster_opts=H2C))

    def request(self, method, target, headers=(), body=None):
        response = http_request(self.tandem.port, method, target, headers=list(headers),
                                body=body, timeout=scaled(20))
        return response, (json.loads(response.body)
                          if response.header("content-type") == "application/json" else None)

    def test_an_hpack_bomb_from_the_worker_is_refused_without_growing_memory(self):
        # 40,000 references to one 4 KB field: ~40 KB on the wire, 160 MB
        # decoded. tandem keeps no more of a response head than its limit.
        self.assertTrue(self.tandem.reset_peak_rss())
        before = self.tandem.memory_kib("VmHWM")
        response, _ = self.request("GET", "/bomb/40000")
        grown = self.tandem.memory_kib("VmHWM") - before
        print("\nHPACK bomb: %d, peak RSS grew %d KiB" % (response.status, grown))
        self.assertEqual(response.status, 502)
        self.assertLess(grown, 32 * 1024)
        # The worker and the cluster go on.
        self.assertEqual(self.request("GET", "/after-bomb")[0].status, 200)

    def test_the_request_arrives_without_hop_by_hop_fields(self):
        response, seen = self.request("GET", "/some/path?q=1&r=%20", [
            ("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "timeout=5"), ("X-Hop", "1"),
            ("Proxy-Connection", "keep-alive"), ("TE", "trailers, gzip"),
            ("X-End-To-End", "kept"), ("Accept", "text/plain")])
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.header("x-h2-server"), "echo")
        self.assertEqual(int(response.header("content-length")), len(response.body))
        self.assertEqual(seen["path"], "/some/path?q=1&r=%20")
        fields = fields_dict(seen["fields"])
        self.assertEqual(fields[":method"], ["GET"])
        self.assertEqual(fields[":scheme"], ["http"])
        self.assertEqual(fields[":authority"], ["example.test"])
        self.assertEqual(fields["x-end-to-end"], ["kept"])
        self.assertEqual(fields["accept"], ["text/plain"])
        for name in ("connection", "keep-alive", "x-hop", "proxy-connection",
                     "transfer-encoding", "upgrade", "host"):
            self.assertNotIn(name, fields, seen["fields"])
        self.assertIn(fields.get("te"), (None, ["trailers"]), seen["fields"])
        self.assertTrue(all(name == name.lower() for name in fields), seen["fields"])
        # The worker's status comes through.
        for status in (404, 418, 503):
            response, seen = self.request("GET", "/status/%d" % status)
            self.assertEqual(response.status, status, response)
            self.assertEqual(seen["path"], "/status/%d" % status)

    def test_request_and_response_bodies_arrive_whole(self):
        body = os.urandom(1024 * 1024)
        response, seen = self.request("POST", "/upload", body=body)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(seen["body"], len(body))
        self.assertEqual(seen["sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(fields_dict(seen["fields"]).get("content-length"), [str(len(body))])
        # Chunked, with trailers: the body whole, the trailers as HTTP/2 ones.
        pieces = [os.urandom(100 * 1024) for _ in range(10)]
        response, seen = self.request(
            "POST", "/chunked", [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")],
            body=chunked_body(pieces, [("X-Sum", "s1")]))
        self.assertEqual(response.status, 200, response)
        self.assertEqual(seen["body"], sum(map(len, pieces)))
        self.assertEqual(seen["sha256"], hashlib.sha256(b"".join(pieces)).hexdigest())
        self.assertIn(["x-sum", "s1"], seen["trailers"])
        # A response far over the stream window.
        response, _ = self.request("GET", "/big/3000000")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, (b"0123456789abcdef" * 187500)[:3000000])

    def test_tandem_ends_a_call_the_worker_never_answers_at_its_grpc_timeout(self):
        client = H2Client(self.tandem.port)
        self.addCleanup(client.close)
        start = self.tandem.stdout.count()
        began = time.monotonic()
        stream = client.wait_done(client.request(
            "POST", "/stall/grpc", GRPC_HEADERS + [("grpc-timeout", "500m")],
            body=grpc_frame(b"x")), timeout=scaled(10))
        elapsed = time.monotonic() - began
        self.assertEqual(stream.status, 200, stream)
        self.assertEqual(stream.header("grpc-status"), "4", stream)
        self.assertEqual(len(stream.blocks), 1, stream)
        self.assertTrue(stream.ended, stream)
        self.assertGreaterEqual(elapsed, 0.45, stream)
        self.assertLess(elapsed, 1.5, stream)
        try:
            self.tandem.wait_access_line(r'"POST /stall/grpc HTTP/2\.0" 504 .*UT', start=start)
        except TimeoutError:
            self.fail("no 504 UT in the access log:\n" + "\n".join(self.tandem.access_lines()))
        # The worker's stream was cancelled.
        wait_until(lambda: any(e.get("code") == "8" for e in self.worker.events("reset")),
                   scaled(5), "RST_STREAM(CANCEL) at the worker")
        # From a gRPC client.
        channel = grpc.insecure_channel("127.0.0.1:%d" % self.tandem.port, options=GRPC_OPTIONS)
        self.addCleanup(channel.close)
        stall = channel.unary_unary("/stall/x", request_serializer=identity,
                                    response_deserializer=identity)
        began = time.monotonic()
        code, details, _ = code_of(stall, b"x", timeout=0.5)
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED, details)
        self.assertLess(time.monotonic() - began, 1.5)

    def test_a_grpc_timeout_goes_on_in_milliseconds(self):
        client = H2Client(self.tandem.port)
        self.addCleanup(client.close)
        stream = client.wait_done(client.request(
            "POST", "/test.Svc/Echo", GRPC_HEADERS + [("grpc-timeout", "5S")],
            body=grpc_frame(b"x")))
        self.assertEqual(stream.status, 200, stream)
        fields = fields_dict(json.loads(bytes(stream.data))["fields"])
        value = fields.get("grpc-timeout", [""])[0]
        self.assertRegex(value, r"^\d+m$", fields)
        self.assertGreater(int(value[:-1]), 4000)
        self.assertLessEqual(int(value[:-1]), 5000)
        self.assertEqual(fields.get("te"), ["trailers"], fields)


# ---- 5: streams that never reached the worker ---------------------------------------


class NeverReachedTest(TandemTestCase):

    def post_all(self, port, count, concurrent, prefix="p", size=20000):
        """POSTs /PREFIX/0../PREFIX/COUNT-1 (each `size` bytes), `concurrent`
        at once; returns [(path, response, json)]."""
        def one(i):
            path = "/%s/%d" % (prefix, i)
            body = bytes([i % 256]) * size
            response = http_request(port, "POST", path, body=body, timeout=scaled(20))
            seen = None
            if response.header("content-type") == "application/json":
                seen = json.loads(response.body)
            return path, response, seen

        with concurrent_pool(concurrent) as pool:
            return list(pool.map(one, range(count)))

    def check_all_answered_once(self, results, workers, size=20000):
        for path, response, seen in results:
            self.assertEqual(response.status, 200, (path, response, [
                line for w in workers for line in w.stdout.lines()
                if "path=%s " % path in line + " "]))
            self.assertEqual(seen["path"], path)
            self.assertEqual(seen["body"], size)
        def answered():
            return collections.Counter(e["path"] for w in workers for e in w.events("answered"))
        # The workers' lines come through a pipe: wait until each has come.
        wait_until(lambda: all(answered()[path] for path, _, _ in results), scaled(5),
                   "the workers' lines")
        counts = answered()
        for path, _, _ in results:
            self.assertEqual(counts[path], 1, (path, counts))

    def test_streams_above_a_goaway_go_elsewhere_and_those_below_finish(self):
        workers = [start_h2_worker(self, "g%d" % i, goaway_after=3) for i in (1, 2)]
        tandem = self.start_tandem(make_config([w.address for w in workers], cluster_opts=H2C))
        results = []
        for round in range(3):
            results += self.post_all(tandem.port, 12, 12, prefix="r%d" % round)
        self.check_all_answered_once(results, workers)
        try:
            wait_until(lambda: any(w.events("beyond") for w in workers), scaled(2))
        except TimeoutError:
            pass
        beyond = sum(len(w.events("beyond")) for w in workers)
        goaways = sum(len(w.events("goaway")) for w in workers)
        connections = sum(w.connections() for w in workers)
        self.assertGreater(goaways, 1)
        # Streams came above the GOAWAY's last id: the case under test happened.
        self.assertGreater(beyond, 0, [w.stdout.text() for w in workers])
        self.assertGreaterEqual(connections, 36 // 3)
        for w in workers:
            per_conn = collections.Counter(e["conn"] for e in w.events("answered"))
            self.assertLessEqual(max(per_conn.values()), 3, w.stdout.text())

    def test_refused_streams_go_elsewhere(self):
        # Each worker refuses the first stream for each path: every request
        # is refused once or twice (on either worker) before it is answered.
        workers = [start_h2_worker(self, "r1", refuse_first=True),
                   start_h2_worker(self, "r2", refuse_first=True)]
        tandem = self.start_tandem(make_config([w.address for w in workers], cluster_opts=H2C))
        results = self.post_all(tandem.port, 20, 1, prefix="one")
        results += self.post_all(tandem.port, 20, 10, prefix="many")
        self.check_all_answered_once(results, workers)
        def refused():
            return collections.Counter(e["path"] for w in workers for e in w.events("refused"))
        try:
            wait_until(lambda: all(refused()[path] for path, _, _ in results), scaled(5))
        except TimeoutError:
            pass
        counts = refused()
        for path, _, _ in results:
            self.assertIn(counts[path], (1, 2), (path, counts))

    def test_max_requests_per_connection_opens_new_connections(self):
        for limit, connections in ((3, 4), (0, 1)):
            with self.subTest(max_requests_per_connection=limit):
                worker = start_h2_worker(self, "m%d" % limit)
                tandem = self.start_tandem(make_config(
                    [worker.address], cluster_opts=dict(H2C, max_requests_per_connection=limit)))
                for i in range(10):
                    response = http_request(tandem.port, "POST", "/m/%d" % i, body=b"x" * 100)
                    self.assertEqual(response.status, 200, response)
                wait_until(lambda: len(worker.events("answered")) == 10, scaled(5),
                           "10 answered lines")
                per_conn = collections.Counter(e["conn"] for e in worker.events("headers"))
                self.assertEqual(sum(per_conn.values()), 10, worker.stdout.text())
                self.assertEqual(len(per_conn), connections, per_conn)
                if limit:
                    self.assertLessEqual(max(per_conn.values()), limit, per_conn)
                self.assertEqual(worker.events("reset"), [], worker.stdout.text())


def concurrent_pool(workers):
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers)


# ---- 6: a worker killed or frozen under load ---------------------------------------------


class LoadRun:
    """Unary Echo calls, open loop: call i is due at i / `rate` s, rate × seconds
    calls in all, each with a deadline of `deadline` s; `fault(elapsed)` is
    called from the pacing loop at least every 10 ms.

    One grpc.aio channel on an event loop of the caller's thread: about 0.25 ms
    of CPU per call here, against 0.36 ms with the synchronous API's futures,
    so that 1,000 calls/s leave room on two cores for tandem, four workers and
    another test. A call behind its due time (the machine is busy) is sent at
    once; no call is sent after `seconds` + 5 s (scaled), so a load generator
    that cannot keep up shows as calls missing, never as a longer run. Each
    record is [sent, ended, code, worker], times in seconds from the start;
    `max_late` is the worst delay of a send past its due time.
    """

    def __init__(self, port, rate, seconds, deadline=2.0):
        self.port = port
        self.rate = rate
        self.total = int(rate * seconds)
        self.seconds = seconds
        self.deadline = deadline
        self.calls = []
        self.sent = 0
        self.max_late = 0.0

    def run(self, fault):
        asyncio.run(self._run(fault))
        return [list(r) for r in self.calls]

    async def _run(self, fault):
        channel = grpc.aio.insecure_channel("127.0.0.1:%d" % self.port, options=GRPC_OPTIONS)
        echo = channel.unary_unary("/test.Svc/Echo", request_serializer=identity,
                                   response_deserializer=identity)
        tasks = []
        began = time.monotonic()
        hard_end = self.seconds + scaled(5)
        try:
            while self.sent < self.total:
                elapsed = time.monotonic() - began
                if elapsed >= hard_end:
                    break
                fault(elapsed)
                while self.sent < self.total and self.sent / self.rate <= elapsed:
                    self.max_late = max(self.max_late, elapsed - self.sent / self.rate)
                    record = [elapsed, None, None, None]
                    tasks.append(asyncio.ensure_future(self._call(echo, record, began)))
                    self.sent += 1
                due = self.sent / self.rate
                await asyncio.sleep(min(max(due - (time.monotonic() - began), 0), 0.01))
            if tasks:
                # Every call ends by its deadline; one still open after the
                # grace below is lost (it has no record).
                _, pending = await asyncio.wait(tasks, timeout=self.deadline + scaled(10))
                for task in pending:
                    task.cancel()
        finally:
            await channel.close()

    async def _call(self, echo, record, began):
        try:
            reply = await echo(b"x", timeout=self.deadline)
            record[3] = reply.split(b":", 1)[0].decode()
            record[2] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            record[2] = e.code()
        except Exception as e:  # a client-side error: counted as a failed call
            record[2] = grpc.StatusCode.UNKNOWN
            record[3] = repr(e)
        record[1] = time.monotonic() - began
        self.calls.append(record)


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else None


class WorkerFaultCases:
    """A worker killed (SIGKILL) or frozen (SIGSTOP) under RATE calls/s to four
    workers; the cases of FaultTest and FaultAt1000Test."""

    RATE = 250
    SECONDS = 6

    def setUp(self):
        self.workers = [start_grpc_worker(self, "f%d" % i) for i in range(1, 5)]
        self.tandem = self.start_tandem(make_config([w.address for w in self.workers],
                                                    cluster_opts=H2C))

    def load(self, fault, seconds=None):
        """Runs the load; every call was sent and answered (none lost)."""
        run = LoadRun(self.tandem.port, self.RATE, seconds or self.SECONDS)
        calls = run.run(fault)
        print("\n%d calls/s: %d of %d sent, worst send %.1f ms past its due time" % (
            self.RATE, run.sent, run.total, 1000 * run.max_late))
        self.assertEqual(run.sent, run.total, "the load generator fell behind")
        self.assertEqual(len(calls), run.total, "calls without an answer")
        return calls

    def summary(self, calls, what):
        failed = [c for c in calls if c[2] != grpc.StatusCode.OK]
        latencies = [c[1] - c[0] for c in calls if c[2] == grpc.StatusCode.OK]
        codes = collections.Counter(c[2].name for c in failed)
        per_worker = collections.Counter(c[3] for c in calls if c[2] == grpc.StatusCode.OK)
        text = ("%s: %d calls, %d failed %s, p99 of successes %.1f ms, per worker %s" % (
            what, len(calls), len(failed), dict(codes), 1000 * (p99(latencies) or 0),
            dict(sorted(per_worker.items()))))
        print(text)
        return failed, text

    def test_a_worker_killed_under_load(self):
        victim = self.workers[0]
        killed = []

        def fault(elapsed):
            if elapsed >= 2.0 and not killed:
                # SIGKILL by PID; the cleanup reaps it, not the pacing loop.
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(elapsed)

        calls = self.load(fault)
        failed, text = self.summary(calls, "SIGKILL at 2 s")
        at = killed[0]
        self.assertLess(len(failed), 0.02 * len(calls), text)
        # Only calls in flight at that instant may fail.
        for start, end, code, _ in failed:
            self.assertLessEqual(start, at + 0.05, (text, start, end, code))
            self.assertGreaterEqual(end, at - 0.05, (text, start, end, code))
        after = [c for c in calls if c[0] > at + 0.1]
        self.assertTrue(after)
        self.assertTrue(all(c[2] == grpc.StatusCode.OK for c in after), text)
        self.assertNotIn("f1", {c[3] for c in after}, text)
        self.assertEqual({c[3] for c in after if c[0] > at + 1}, {"f2", "f3", "f4"}, text)

    def test_a_worker_frozen_under_load(self):
        victim = self.workers[0]
        state = {}

        def fault(elapsed):
            if elapsed >= 2.0 and "stop" not in state:
                os.kill(victim.pid, signal.SIGSTOP)
                state["stop"] = elapsed
            if elapsed >= 5.0 and "cont" not in state:
                os.kill(victim.pid, signal.SIGCONT)
                state["cont"] = elapsed

        calls = self.load(fault)
        self.assertIn("cont", state)
        failed, text = self.summary(calls, "SIGSTOP 2-5 s")
        frozen = [c for c in calls if state["stop"] + 0.5 <= c[0] < state["cont"]]
        ok = [c for c in frozen if c[2] == grpc.StatusCode.OK]
        print("during the freeze (from 0.5 s in): %d of %d calls succeeded" % (len(ok), len(frozen)))
        self.assertGreaterEqual(len(ok), 0.95 * len(frozen), text)
        self.assertEqual({c[3] for c in ok}, {"f2", "f3", "f4"}, text)
        self.assertLess(len(failed), 0.05 * len(calls), text)


class FaultTest(WorkerFaultCases, TandemTestCase):

    def test_a_hundred_reloads_under_load_lose_no_call(self):
        # Each reload changes the cluster (its retries), so every stream after
        # it runs under a new config generation while older ones finish.
        addresses = [w.address for w in self.workers]
        configs = [make_config(addresses, cluster_opts=dict(H2C, retries=r)) for r in (2, 3)]
        reloads = []

        span = []

        def reload_loop():
            span.append(time.monotonic())
            for i in range(100):
                reloads.append(self.tandem.reload(configs[i % 2]))
                time.sleep(0.05)  # spread over the load
            span.append(time.monotonic())

        thread = threading.Thread(target=reload_loop, daemon=True)
        started = []

        def fault(elapsed):
            if not started:
                started.append(elapsed)
                thread.start()

        calls = self.load(fault, seconds=8)
        thread.join(scaled(60))
        failed, text = self.summary(calls, "100 reloads")
        print("reloads: %d in %.1f s, all accepted: %s" % (
            len(reloads), span[-1] - span[0], all(reloads)))
        self.assertEqual(len(reloads), 100)
        # They were spread over the load (8 s of calls).
        self.assertTrue(4 < span[-1] - span[0] < 8, span)
        reloaded = [line for line in self.tandem.stderr.lines() if 'msg="config reloaded"' in line]
        self.assertGreaterEqual(len(reloaded), 100)
        self.assertTrue(all(reloads))
        self.assertEqual(failed, [], text)
        self.assertEqual(len(calls), self.RATE * 8)


class FaultAt1000Test(WorkerFaultCases, TandemTestCase):
    """The same faults and bars at 1,000 calls/s (6,000 calls in 6 s)."""

    RATE = 1000


# ---- 7: h2 over TLS --------------------------------------------------------------------------


class TlsTest(TandemTestCase):

    @classmethod
    def setUpClass(cls):
        from tlsutil import Pki
        cls.pki = Pki()
        cls.addClassCleanup(cls.pki.close)
        cls.pki.ca("ca", "tandem grpc test CA")
        cls.pki.ca("other", "another CA")
        cls.pki.leaf("worker", "ca", "worker.test", dns=["worker.test"], ips=["127.0.0.1"])

    def test_a_grpc_call_over_h2_with_tls(self):
        worker = start_grpc_worker(self, "tls1", self.pki.cert("worker"), self.pki.key("worker"))
        tandem = self.start_tandem(make_config([worker.address], cluster_opts={
            "protocol": "h2", "tls": True, "ca_file": self.pki.cert("ca")}))
        client = grpc_client(self, tandem.port)
        self.assertEqual(client.echo(b"secure", timeout=scaled(10)), b"tls1:secure")
        self.assertEqual(list(client.count(b"3", timeout=scaled(10))), [b"0", b"1", b"2"])
        # A worker whose certificate the cluster does not trust is not used.
        untrusting = self.start_tandem(make_config([worker.address], cluster_opts={
            "protocol": "h2", "tls": True, "ca_file": self.pki.cert("other"), "retries": 0}))
        code, details, _ = code_of(grpc_client(self, untrusting.port).echo, b"x",
                                   timeout=scaled(10))
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)

    def test_protocol_and_tls_mismatches_are_config_errors(self):
        directory = tempfile.mkdtemp(prefix="tandem-grpc-check-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", directory]))
        cases = [
            ("h2-plain", {"protocol": "h2"}, "protocol", r'"h2" .*needs tls = true'),
            ("h2c-tls", {"protocol": "h2c", "tls": True}, "protocol", r'"h2c" is HTTP/2 without TLS'),
            ("unknown", {"protocol": "h3"}, "protocol", r'unknown protocol "h3"'),
            ("negative", {"protocol": "h2c", "max_requests_per_connection": -1},
             "max_requests_per_connection", r"between 0 and"),
        ]
        for name, opts, key, message in cases:
            with self.subTest(case=name):
                path = os.path.join(directory, name + ".toml")
                text = make_config(["127.0.0.1:1"], cluster_opts=opts)
                write_file(path, text)
                result = run_tandem(["-c", path, "--check"])
                output = (result.stdout + result.stderr).decode()
                self.assertEqual(result.returncode, 1, output)
                line = next(i for i, l in enumerate(text.splitlines(), 1)
                            if l.startswith(key + " "))
                self.assertRegex(output, re.escape(path) + r":%d:\d+: clusters\.compute\.%s" %
                                 (line, key))
                self.assertRegex(output, message)
        for name, opts in (("h2-tls", {"protocol": "h2", "tls": True}),
                           ("h2c", {"protocol": "h2c", "max_requests_per_connection": 3}),
                           ("http1", {"protocol": "http1"})):
            with self.subTest(case=name):
                path = os.path.join(directory, name + ".toml")
                write_file(path, make_config(["127.0.0.1:1"], cluster_opts=opts))
                result = run_tandem(["-c", path, "--check"])
                self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode())


# ---- 8: reload -------------------------------------------------------------------------------


class ReloadTest(TandemTestCase):

    def test_reload_from_http1_to_h2c(self):
        http1_worker = self.start_worker("plain")
        grpc_worker = start_grpc_worker(self, "g1")
        tandem = self.start_tandem(make_config([http1_worker.address],
                                               cluster_opts={"protocol": "http1"}))
        client = grpc_client(self, tandem.port)
        before = [code_of(client.echo, b"x", timeout=scaled(10))[0] for _ in range(3)]
        self.assertTrue(all(code != grpc.StatusCode.OK for code in before), before)
        # The gRPC worker over HTTP/1.1 does not work either.
        self.assertTrue(tandem.reload(make_config([grpc_worker.address],
                                                  cluster_opts={"protocol": "http1",
                                                                "retries": 0})))
        code = code_of(client.echo, b"x", timeout=scaled(10))[0]
        self.assertNotEqual(code, grpc.StatusCode.OK)
        self.assertTrue(tandem.reload(make_config([grpc_worker.address], cluster_opts=H2C)))
        # The same client connection: its next calls go to the gRPC worker.
        after = [code_of(client.echo, b"x%d" % i, timeout=scaled(10)) for i in range(5)]
        self.assertEqual([a[0] for a in after], [grpc.StatusCode.OK] * 5, after)
        self.assertEqual([a[2] for a in after], [b"g1:x%d" % i for i in range(5)])
        self.assertEqual(list(client.count(b"4", timeout=scaled(10))),
                         [b"0", b"1", b"2", b"3"])


if __name__ == "__main__":
    unittest.main()
