"""Request smuggling and malformed input: each bad request of DESIGN.md's "Limits and
their answers" gets its status, its connection is closed, and none of it reaches the
backend (asserted on the bytes the raw backend received). What tandem sends a backend
is always CRLF-framed."""

import socket
import time
import unittest

from harness import (TandemTestCase, bare_line_ends, build_request, http_request,
                     make_config, scaled, serve_once)

# Appended after a bad request: if any of it ever reaches the backend, the
# rejected request's framing leaked.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


class RejectedRequestsTest(TandemTestCase):
    """One tandem in front of a raw backend per test, so that the backend's
    recorded bytes belong to that test alone."""

    def setUp(self):
        self.backend = self.start_backend()
        self.tandem = self.start_tandem(make_config([self.backend.address]))

    # ---- helpers ----

    def send_raw(self, data):
        """Sends `data` on a new connection; returns (client, first response)."""
        client = self.client(self.tandem.port, timeout=scaled(5))
        client.send(data)
        return client, client.response()

    def assertClosedAfter(self, client, response):
        """Nothing follows `response`: tandem closes the connection."""
        try:
            rest = client.read_until_close()
        except socket.timeout:
            self.fail("tandem kept the connection open after answering %d" % response.status)
        self.assertEqual(rest, b"", "more than one answer to a rejected request")

    def assertOnlySentinelReached(self):
        """A good request on a new connection reaches the backend, and it is all
        the backend ever received."""
        response = http_request(self.tandem.port, "GET", "/sentinel")
        self.assertEqual(response.status, 200)
        requests = self.backend.wait_requests(1)
        received = self.backend.received()
        self.assertNotIn(b"smuggled", received)
        self.assertEqual([r.target for r in requests], ["/sentinel"], received)
        self.assertEqual(received, requests[0].raw)

    def assertRejected(self, data, status):
        """`data` gets `status` from tandem, the connection closes after that one
        answer, and nothing of it reaches the backend."""
        client, response = self.send_raw(data)
        self.assertEqual(response.status, status, response.body)
        self.assertTrue(response.body.startswith(b"%d " % status), response.body)
        self.assertEqual((response.header("connection") or "").lower(), "close")
        self.assertClosedAfter(client, response)
        self.assertOnlySentinelReached()

    def assertBodyRejected(self, data, status):
        """For a request whose head is valid and whose body is not. Bodies are
        streamed, so the head may already be on its way when the body breaks the
        rules; the backend must then see its connection end before a complete
        request, and no byte from the bad one on."""
        client, response = self.send_raw(data)
        self.assertEqual(response.status, status, response.body)
        self.assertClosedAfter(client, response)
        self.assertNoCompleteRequestReached()

    def assertNoCompleteRequestReached(self):
        """The sentinel is the only complete request the backend received, and
        every backend connection that carried part of a bad request was closed."""
        response = http_request(self.tandem.port, "GET", "/sentinel")
        self.assertEqual(response.status, 200)
        self.backend.wait_requests(1)
        self.backend.wait(lambda b: all(c.peer_closed.is_set() or c.requests
                                        for c in b.connections),
                          what="tandem closing the cut backend connection")
        received = self.backend.received()
        self.assertNotIn(b"smuggled", received)
        self.assertNotIn(b"BAD", received)
        self.assertEqual([r.target for r in self.backend.requests()], ["/sentinel"], received)

    # ---- framing ----

    def test_content_length_with_transfer_encoding_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_transfer_encoding_before_content_length_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_differing_duplicate_content_lengths_get_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                            b"Content-Length: 37\r\n\r\n" + SMUGGLED, 400)

    def test_a_content_length_list_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 37\r\n\r\n"
                            + SMUGGLED, 400)

    def test_a_signed_content_length_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +37\r\n\r\n"
                            + SMUGGLED, 400)

    def test_identical_duplicate_content_lengths_collapse_and_are_forwarded_once(self):
        client = self.client(self.tandem.port)
        client.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n"
                    b"\r\nhello" + build_request("GET", "/next"))
        self.assertEqual(client.response().status, 200)
        self.assertEqual(client.response().status, 200)
        first, second = self.backend.wait_requests(2)
        self.assertEqual(first.header_all("content-length"), ["5"])
        self.assertEqual(first.body, b"hello")
        self.assertEqual(second.target, "/next")

    def test_transfer_encoding_not_ending_in_chunked_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n"
                            b"\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_transfer_encoding_gzip_alone_in_a_request_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"
                            + SMUGGLED, 400)

    def test_chunked_applied_twice_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_unknown_transfer_coding_gets_501(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: mystery, chunked\r\n"
                            b"\r\n0\r\n\r\n" + SMUGGLED, 501)

    def test_transfer_encoding_from_an_http10_client_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                            + SMUGGLED, 400)

    def test_a_space_before_the_colon_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 37\r\n\r\n"
                            + SMUGGLED, 400)

    def test_a_transfer_encoding_hidden_by_a_control_character_gets_400(self):
        self.assertRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n"
                            b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED, 400)

    # ---- chunked bodies ----

    def test_a_non_hex_chunk_size_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"zz\r\nBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_a_negative_chunk_size_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"-1\r\nBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_a_0x_prefixed_chunk_size_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"0x3\r\nBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_an_overflowing_chunk_size_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"10000000000000003\r\nBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_a_chunk_longer_than_its_size_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"1\r\nxBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_a_chunk_size_ended_by_a_bare_cr_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"3\rBAD\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_an_obs_folded_trailer_gets_400(self):
        self.assertBodyRejected(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"0\r\nX-T: a\r\n BAD\r\n\r\n" + SMUGGLED, 400)

    # ---- field lines ----

    def test_obs_fold_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n" + SMUGGLED, 400)

    def test_a_first_field_line_starting_with_whitespace_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\n Host: a\r\nHost: b\r\n\r\n" + SMUGGLED, 400)

    def test_a_bare_cr_in_a_field_value_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\rContent-Length: 37\r\n\r\n"
                            + SMUGGLED, 400)

    def test_a_nul_in_a_field_value_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n" + SMUGGLED, 400)

    def test_a_control_character_in_a_field_value_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n" + SMUGGLED, 400)

    def test_a_del_in_a_field_value_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n" + SMUGGLED, 400)

    def test_a_field_name_with_a_space_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n" + SMUGGLED, 400)

    def test_a_field_name_with_a_separator_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nX@A: b\r\n\r\n" + SMUGGLED, 400)

    def test_a_field_line_with_an_empty_name_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n" + SMUGGLED, 400)

    # ---- Host ----

    def test_a_missing_host_in_http11_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nX-A: b\r\n\r\n" + SMUGGLED, 400)

    def test_a_repeated_host_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED, 400)

    def test_a_host_with_a_space_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n" + SMUGGLED, 400)

    def test_a_host_with_a_path_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n" + SMUGGLED, 400)

    def test_a_host_with_userinfo_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1\r\nHost: user@a\r\n\r\n" + SMUGGLED, 400)

    # ---- request line ----

    def test_an_invalid_method_gets_400(self):
        self.assertRejected(b"G@T /a HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_tabs_as_request_line_separators_get_400(self):
        self.assertRejected(b"GET\t/a\tHTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_a_lowercase_http_version_gets_400(self):
        self.assertRejected(b"GET /a http/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_a_space_after_the_version_gets_400(self):
        self.assertRejected(b"GET /a HTTP/1.1 \r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_a_target_not_starting_with_a_slash_gets_400(self):
        self.assertRejected(b"GET a HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_a_nul_in_the_target_gets_400(self):
        self.assertRejected(b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_a_bare_cr_in_the_target_gets_400(self):
        self.assertRejected(b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_an_absolute_form_target_with_an_empty_authority_gets_400(self):
        self.assertRejected(b"GET http:///a HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_an_absolute_form_target_with_userinfo_gets_400(self):
        self.assertRejected(b"GET http://user@a/a HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    def test_an_http2_preface_followed_by_http11_reaches_nothing(self):
        # The preface makes the connection HTTP/2 (h2c by prior knowledge,
        # docs/http2.md): what follows is not a frame, so tandem answers with
        # its SETTINGS and a GOAWAY(PROTOCOL_ERROR) and closes; no request
        # reaches the backend.
        client = self.client(self.tandem.port, timeout=scaled(5))
        client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED)
        rest = client.read_until_close()
        self.assertEqual(rest[3:4], b"\x04", rest)  # a SETTINGS frame first
        goaway = rest.find(b"\x07\x00\x00\x00\x00\x00")
        self.assertGreater(goaway, 0, rest)
        self.assertEqual(rest[goaway + 10:goaway + 14], b"\x00\x00\x00\x01", rest)
        self.assertOnlySentinelReached()

    def test_an_http2_preface_gets_400_where_only_http11_is_served(self):
        self.tandem.close()
        self.tandem = self.start_tandem(make_config(
            [self.backend.address], listener_opts={"protocols": ["http/1.1"]}))
        self.assertRejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED, 400)

    def test_connect_gets_501(self):
        self.assertRejected(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + SMUGGLED, 501)

    # ---- line ends ----

    def test_bare_lf_line_ends_are_rejected_or_forwarded_as_crlf(self):
        client = self.client(self.tandem.port)
        client.send(b"GET /lf HTTP/1.1\nHost: a\nX-Bare: lf\n\n")
        response = client.response()
        if response.status == 400:
            self.assertOnlySentinelReached()
            return
        self.assertEqual(response.status, 200)
        (request,) = self.backend.wait_requests(1)
        self.assertEqual(request.header("x-bare"), "lf")
        self.assertEqual(bare_line_ends(self.backend.received()), [])


class ForwardedBytesTest(TandemTestCase):
    """What tandem sends a backend."""

    def setUp(self):
        self.backend = self.start_backend()
        self.tandem = self.start_tandem(make_config([self.backend.address]))

    def test_what_reaches_the_backend_is_crlf_only(self):
        requests = [
            build_request("GET", "/plain", [("X-A", "b")]),
            build_request("POST", "/length", body=b"hello"),
            build_request("POST", "/chunked", [("Transfer-Encoding", "chunked")],
                          body=b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"),
            build_request("GET", "http://authority.test/absolute", host="other.test"),
            build_request("GET", "/old", version="HTTP/1.0", host=None),
        ]
        for data in requests:
            client = self.client(self.tandem.port)
            client.send(data)
            self.assertEqual(client.response().status, 200, data)
            client.close()
        self.backend.wait_requests(len(requests))
        received = self.backend.received()
        self.assertEqual(bare_line_ends(received), [], received)
        for request in self.backend.requests():
            self.assertEqual(request.version, "HTTP/1.1")

    def test_a_response_with_content_length_and_transfer_encoding_is_refused_or_reframed(self):
        backend = self.start_backend(serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n", "hold"))
        tandem = self.start_tandem(make_config([backend.address], cluster_opts={"retries": 0}))
        response = http_request(tandem.port)
        # RFC 9112 §6.3: an error (502), or forwarded framed by Transfer-Encoding alone.
        if response.status == 502:
            return
        self.assertFalse(response.has_header("content-length") and response.has_header("transfer-encoding"))
        self.assertEqual(response.body, b"hello")

    def test_a_response_with_differing_content_lengths_gets_502(self):
        backend = self.start_backend(serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello", "hold"))
        tandem = self.start_tandem(make_config([backend.address], cluster_opts={"retries": 0}))
        response = http_request(tandem.port)
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"hel", response.body)


class RetryUnderAStreamingBodyTest(TandemTestCase):
    """A PUT whose first try fails after its head and part of its body went
    out is retried on another backend while the client is still sending the
    body. What the client sends while the retry connects goes after the
    retry's head, once: a body's bytes never reach a backend as a request of
    their own. (Guarded by ClientConnection::OnClientRead, which reads no body
    until a backend takes it; without that guard the client's bytes, here a
    whole request, went to the connection being made ahead of the head.)"""

    def test_body_sent_while_a_retry_connects_follows_its_head(self):
        # The first backend reads the head and the start of the body, then
        # resets the connection: a failure after the request reached it, so
        # the (idempotent) PUT is retried.
        first = socket.socket()
        self.addCleanup(first.close)
        first.bind(("127.0.0.1", 0))
        first.listen(8)
        # The second one's accept queue is full: tandem's SYN is dropped and
        # sent again a second later, a connect that takes a second.
        second = socket.socket()
        self.addCleanup(second.close)
        second.bind(("127.0.0.1", 0))
        second.listen(0)
        filler = socket.create_connection(second.getsockname())
        self.addCleanup(filler.close)
        extra = []
        for _ in range(4):  # the queue takes backlog + 1, and SYNs in flight
            try:
                conn = socket.socket()
                conn.setblocking(False)
                conn.connect_ex(second.getsockname())
                extra.append(conn)
            except OSError:
                break
        self.addCleanup(lambda: [c.close() for c in extra])
        # Only the first backend may take the first try: the second is
        # listed after it, and round robin starts at the first.
        addresses = ["127.0.0.1:%d" % s.getsockname()[1] for s in (first, second)]
        tandem = self.start_tandem(make_config(
            addresses,
            cluster_opts={"connect_timeout": "10s", "request_timeout": "20s"},
            extra='[clusters.compute.health]\nkind = "none"\n'))
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        part1 = b"a" * 1000
        part2 = smuggled + b"b" * (1000 - len(smuggled))
        head = (b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                % (len(part1) + len(part2)))
        client = self.client(tandem.port, timeout=scaled(20))
        client.send(head + part1)
        first.settimeout(scaled(5))
        conn, _ = first.accept()
        got = b""
        conn.settimeout(scaled(5))
        while len(got) < len(head) + len(part1):
            chunk = conn.recv(65536)
            self.assertTrue(chunk, "the first backend got %r" % got)
            got += chunk
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        conn.close()  # reset: the try fails, reached, and is retried
        time.sleep(0.3)  # the retry's connect is under way (its SYN dropped)
        client.send(part2)
        time.sleep(0.3)  # tandem has read it
        # Free the queue: the SYN sent again is taken.
        first_accepted, _ = second.accept()
        first_accepted.close()  # the filler's
        for c in extra:
            c.close()
        received = b""
        second.settimeout(scaled(10))
        deadline = time.monotonic() + scaled(10)
        conn2 = None
        while conn2 is None:
            c, _ = second.accept()
            c.settimeout(scaled(5))
            try:
                data = c.recv(65536)
            except socket.timeout:
                data = b""
            if data:
                conn2, received = c, data
            else:
                c.close()  # one of the fillers
            self.assertLess(time.monotonic(), deadline, "no retry reached the second backend")
        while len(received) < len(head) + len(part1) + len(part2):
            try:
                chunk = conn2.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            received += chunk
        self.assertTrue(received.startswith(b"PUT /upload HTTP/1.1\r\n"),
                        "the retry's first bytes: %r" % received[:80])
        head_end = received.index(b"\r\n\r\n") + 4
        self.assertEqual(received[head_end:], part1 + part2,
                         "the retried body is not the client's, once")
        conn2.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        response = client.response("PUT")
        self.assertEqual(response.status, 200)
        conn2.close()


if __name__ == "__main__":
    unittest.main()
