"""The admin listener under hostile clients (issue "Hardening"): whoever reaches
the admin port can open connections without a token (/healthz, /status,
/metrics), so the head size, the time a request may take to arrive, the idle
time between keep-alive requests and the number of connections are all
bounded, and normal admin use keeps working.

The limits are constants of dispatcher/admin/admin_server.h: a 16 KiB head (400 and close,
as libevent 2.1's evhttp answers it), a 64 KiB body (413), 10 s from the
connection or from a later request's first byte until the request has arrived
whole (408 and close), 10 s from an answer to the next request's first byte
(close), 64 connections (more wait in the kernel's accept queue until one
closes)."""

import json
import select
import socket
import time
import unittest

from harness import (Deadline, HttpReader, TandemTestCase, http_request, make_config,
                     read_response, scaled, wait_until)
from ops import AUTH

HEAD_LIMIT = 16 * 1024
# evhttp answers 400 to a head over its limit; 431 would say it more precisely.
HEAD_REFUSED = (400, 431)
BODY_LIMIT = 64 * 1024
REQUEST_TIMEOUT = 10.0  # seconds
IDLE_TIMEOUT = 10.0  # seconds
CONNECTION_LIMIT = 64

# How far past its deadline tandem may close a connection (timer and
# scheduling slack; sanitizer builds are slower).
LATE = scaled(2.5)
# How early: a deadline is never cut short.
EARLY = 0.5


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_closed(sock, timeout):
    """Reads until the peer closes `sock` (EOF or reset) or `timeout` passes.

    Returns (closed, data received before the close).
    """
    deadline = Deadline(timeout)
    data = b""
    while not deadline.expired():
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline.end - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def status_of(data):
    """The status code of the response at the start of `data`, or None."""
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split(b" ", 2)[1])


class AdminTestCase(TandemTestCase):

    def setUp(self):
        self.worker = self.start_worker("w1")
        self.tandem = self.start_tandem(make_config([self.worker.address]))

    def open(self):
        sock = connect(self.tandem.admin_port)
        self.addCleanup(sock.close)
        return sock

    def assertAdminAnswers(self):
        response = self.tandem.admin("/healthz")
        self.assertEqual(response.status, 200, response)


class HeadSizeTest(AdminTestCase):

    def test_an_endless_header_line_is_cut_off_and_memory_stays_flat(self):
        # Let the admin listener's buffers reach their working size first.
        for _ in range(3):
            self.assertEqual(self.tandem.admin("/metrics").status, 200)
        if self.tandem.reset_peak_rss():
            baseline = self.tandem.memory_kib("VmRSS")
        else:
            baseline = self.tandem.memory_kib("VmHWM")

        sock = self.open()
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\nX-Endless: ")
        chunk = b"a" * 4096
        sent = 0
        ended = False
        received = b""
        budget = Deadline(scaled(20))
        # Far more than the limit plus what the two socket buffers hold.
        while sent < 64 * 1024 * 1024 and not budget.expired():
            try:
                _, writable, _ = select.select([], [sock], [], 0.5)
                if writable:
                    sent += sock.send(chunk)
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        ended = True
                        break
                    received += data
            except (ConnectionResetError, BrokenPipeError):
                ended = True
                break
        if not ended:
            ended, more = wait_closed(sock, scaled(5))
            received += more
        growth_kib = self.tandem.memory_kib("VmHWM") - baseline
        print("\nendless header line: %d KiB sent, tandem VmHWM grew by %d KiB"
              % (sent // 1024, growth_kib), flush=True)

        self.assertTrue(ended, "the connection was still open after %d KiB of one header line"
                        % (sent // 1024))
        if received:
            self.assertIn(status_of(received), HEAD_REFUSED, received[:200])
        self.assertLess(growth_kib, 4 * 1024)
        self.assertAdminAnswers()

    def test_a_head_just_under_the_limit_is_answered(self):
        padding = "p" * (HEAD_LIMIT - 1024)
        response = self.tandem.admin("/healthz", headers={"X-Padding": padding})
        self.assertEqual(response.status, 200, response)

    def test_a_head_over_the_limit_is_refused(self):
        headers = [("X-Padding-%d" % i, "p" * 1000) for i in range(HEAD_LIMIT // 1000 + 1)]
        sock = self.open()
        request = "GET /healthz HTTP/1.1\r\nHost: admin\r\n"
        request += "".join("%s: %s\r\n" % pair for pair in headers) + "\r\n"
        sock.sendall(request.encode())
        closed, data = wait_closed(sock, scaled(5))
        self.assertTrue(closed)
        self.assertIn(status_of(data), HEAD_REFUSED, data[:200])

    def test_a_body_over_the_limit_is_refused(self):
        sock = self.open()
        sock.sendall(b"POST /admin/reload HTTP/1.1\r\nHost: admin\r\n"
                     b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % (BODY_LIMIT + 1))
        closed, data = wait_closed(sock, scaled(5))
        self.assertTrue(closed)
        self.assertEqual(status_of(data), 413, data[:200])


class DeadlineTest(AdminTestCase):

    def trickle(self, sock, data, start, until):
        """Sends `data` one byte per 0.5 s until tandem closes `sock` or
        `until` seconds after `start` pass. Returns (seconds from `start` to
        the close or None, bytes received)."""
        received = b""
        for byte in data:
            if time.monotonic() - start > until:
                return None, received
            try:
                sock.send(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start, received
            closed, more = wait_closed(sock, 0.5)
            received += more
            if closed:
                return time.monotonic() - start, received
        raise AssertionError("ran out of bytes to trickle")

    def assertClosedAt(self, elapsed, received, deadline, what):
        self.assertIsNotNone(elapsed, "%s: still open %.1f s after its %.0f s deadline"
                             % (what, LATE, deadline))
        self.assertGreaterEqual(elapsed, deadline - EARLY, what)
        self.assertLessEqual(elapsed, deadline + LATE, what)
        if received:
            self.assertEqual(status_of(received), 408, received[:200])

    def test_a_head_sent_one_byte_at_a_time_is_cut_off_at_the_deadline(self):
        start = time.monotonic()
        sock = self.open()
        head = b"GET /status HTTP/1.1\r\nHost: admin\r\nX-Slow: " + b"s" * 1000
        elapsed, received = self.trickle(sock, head, start, REQUEST_TIMEOUT + LATE)
        self.assertClosedAt(elapsed, received, REQUEST_TIMEOUT, "slow head")
        self.assertEqual(status_of(received), 408, received[:200])
        self.assertAdminAnswers()

    def test_a_silent_connection_is_closed_at_the_deadline(self):
        start = time.monotonic()
        sock = self.open()
        closed, received = wait_closed(sock, REQUEST_TIMEOUT + LATE)
        self.assertTrue(closed)
        self.assertClosedAt(time.monotonic() - start, received, REQUEST_TIMEOUT, "silent")
        self.assertEqual(received, b"")

    def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(self):
        client = self.client(self.tandem.admin_port)
        self.assertEqual(client.get("/healthz").status, 200)
        answered = time.monotonic()
        closed, received = wait_closed(client.sock, IDLE_TIMEOUT + LATE)
        self.assertTrue(closed, "an idle admin connection was still open after %.1f s"
                        % (IDLE_TIMEOUT + LATE))
        self.assertClosedAt(time.monotonic() - answered, received, IDLE_TIMEOUT, "idle")
        self.assertEqual(received, b"")

    def test_a_later_request_gets_its_own_deadline_from_its_first_byte(self):
        client = self.client(self.tandem.admin_port)
        self.assertEqual(client.get("/healthz").status, 200)
        time.sleep(IDLE_TIMEOUT / 2)
        start = time.monotonic()
        head = b"GET /status HTTP/1.1\r\nHost: admin\r\nX-Slow: " + b"s" * 1000
        elapsed, received = self.trickle(client.sock, head, start, REQUEST_TIMEOUT + LATE)
        self.assertClosedAt(elapsed, received, REQUEST_TIMEOUT, "slow second head")
        self.assertEqual(status_of(received), 408, received[:200])

    def test_keep_alive_requests_within_the_idle_timeout_are_answered(self):
        client = self.client(self.tandem.admin_port)
        for _ in range(3):
            self.assertEqual(client.get("/healthz").status, 200)
            time.sleep(IDLE_TIMEOUT / 3)
        self.assertEqual(client.get("/readyz").status, 200)


class ConnectionLimitTest(AdminTestCase):

    def test_connections_over_the_limit_wait_until_one_closes(self):
        holders = []
        for _ in range(CONNECTION_LIMIT):
            client = self.client(self.tandem.admin_port)
            self.assertEqual(client.get("/healthz").status, 200)
            holders.append(client)

        extra = self.open()
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        ready, _, _ = select.select([extra], [], [], 1.0)
        self.assertEqual(ready, [], "a connection over the limit of %d was served"
                         % CONNECTION_LIMIT)

        holders.pop().close()
        reader = HttpReader(extra)
        response = read_response(reader)
        self.assertEqual(response.status, 200, response)

        # `extra` holds a slot too until it is closed (or idles out after
        # IDLE_TIMEOUT, as long as a client's own timeout): close it here.
        extra.close()
        for client in holders:
            client.close()
        wait_until(lambda: self.tandem.admin("/healthz").status == 200, scaled(10),
                   "/healthz answering after the connections closed")
        # Every slot is free again: as many connections as the limit are served.
        for _ in range(CONNECTION_LIMIT):
            client = self.client(self.tandem.admin_port)
            self.assertEqual(client.get("/healthz").status, 200)


class NormalUseTest(AdminTestCase):

    def test_status_metrics_and_token_calls_still_work(self):
        response = self.tandem.admin("/status")
        self.assertEqual(response.status, 200)
        self.assertIn("clusters", json.loads(response.body))

        response = self.tandem.admin("/metrics")
        self.assertEqual(response.status, 200)
        self.assertIn(b"tandem_requests_total", response.body)

        self.assertEqual(self.tandem.admin("/readyz").status, 200)
        self.assertEqual(self.tandem.admin("/").status, 200)
        self.assertEqual(self.tandem.admin("/admin/reload", "POST").status, 401)
        response = self.tandem.admin("/admin/reload", "POST", headers=AUTH)
        self.assertEqual(response.status, 200, response)
        response = self.tandem.admin(
            "/admin/clusters/compute/backends/%s/drain" % self.worker.address, "POST",
            headers=AUTH)
        self.assertEqual(response.status, 200, response)

    def test_a_post_with_a_body_under_the_limit_is_answered(self):
        response = http_request(self.tandem.admin_port, "POST", "/admin/reload",
                                headers=dict(AUTH), body=b"x" * (BODY_LIMIT // 2))
        self.assertEqual(response.status, 200, response)

    def test_one_keep_alive_connection_serves_many_requests(self):
        client = self.client(self.tandem.admin_port)
        for path in ("/healthz", "/status", "/metrics", "/readyz", "/"):
            response = client.get(path)
            self.assertEqual(response.status, 200, (path, response))
        client.request("POST", "/admin/reload", AUTH)
        self.assertEqual(client.response("POST").status, 200)


if __name__ == "__main__":
    unittest.main()
