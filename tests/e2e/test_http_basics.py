"""The HTTP/1.1 data path as DESIGN.md's "HTTP behaviour" states it: tandem's own
answers, upstream failures, keep-alive and pipelining, bodies, header rewriting,
Expect and Upgrade."""

import base64
import os
import select
import time
import unittest

from harness import (IncompleteMessage, TandemTestCase, build_request, chunked_body, curl,
                     http_request, make_config, refused_address, response_bytes, scaled,
                     serve_each, serve_once, wait_until)


def websocket_handshake(client, target="/echo"):
    """Sends a WebSocket upgrade request; returns the response head."""
    key = base64.b64encode(os.urandom(16)).decode()
    client.request("GET", target, [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                   ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
    return client.response()


class TandemAnswersTest(TandemTestCase):
    """Statuses tandem answers by itself, with their short plain-text bodies."""

    @classmethod
    def setUpClass(cls):
        cls.backend = cls.start_class_backend()
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.backend.address],
            listener_opts={"max_header_size": "1KiB", "max_body_size": "100",
                           "client_header_timeout": "1s"}))

    def answer(self, data):
        """Sends `data` on a new connection; returns (response, closed) where
        closed says tandem closed the connection after the response."""
        client = self.client(self.tandem.port)
        client.send(data)
        response = client.response()
        return response, client.closed_by_peer(scaled(5))

    def assertAnswer(self, data, status, words):
        response, closed = self.answer(data)
        self.assertTandemBody(response, status, words)
        self.assertTrue(closed, "tandem kept the connection after %d" % status)
        return response

    def test_a_malformed_request_gets_400(self):
        self.assertAnswer(b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, ["Bad Request"])

    def test_a_target_longer_than_max_header_size_gets_414(self):
        self.assertAnswer(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
                          ["URI Too Long"])

    def test_a_target_within_max_header_size_is_served(self):
        response = http_request(self.tandem.port, "GET", "/" + "a" * 800)
        self.assertEqual(response.status, 200)

    def test_a_header_section_over_max_header_size_gets_431(self):
        self.assertAnswer(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
                          431, ["Request Header Fields Too Large"])

    def test_many_small_fields_over_max_header_size_get_431(self):
        fields = b"".join(b"X-F%d: value\r\n" % i for i in range(100))
        self.assertAnswer(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n", 431,
                          ["Request Header Fields Too Large"])

    def test_a_content_length_over_max_body_size_gets_413(self):
        self.assertAnswer(build_request("POST", "/", body=b"x" * 101), 413, ["Too Large"])

    def test_a_body_over_max_body_size_with_expect_100_continue_gets_413_without_100(self):
        response = self.assertAnswer(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                                     b"Content-Length: 101\r\n\r\n", 413, ["Too Large"])
        self.assertEqual(response.interim, [])

    def test_a_chunked_body_growing_over_max_body_size_gets_413(self):
        body = chunked_body([b"x" * 60, b"y" * 60])
        self.assertAnswer(build_request("POST", "/", [("Transfer-Encoding", "chunked")], body),
                          413, ["Too Large"])

    def test_a_body_at_max_body_size_is_served(self):
        response = http_request(self.tandem.port, "POST", "/", body=b"x" * 100)
        self.assertEqual(response.status, 200)

    def test_an_unknown_transfer_coding_gets_501(self):
        self.assertAnswer(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: mystery, chunked\r\n"
                          b"\r\n0\r\n\r\n", 501, ["Not Implemented", "transfer coding"])

    def test_an_unsupported_http_version_gets_505(self):
        self.assertAnswer(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, ["Version Not Supported"])

    def test_an_expectation_other_than_100_continue_gets_417(self):
        self.assertAnswer(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", 417,
                          ["Expectation Failed"])

    def test_a_head_not_complete_within_client_header_timeout_gets_408_and_close(self):
        client = self.client(self.tandem.port)
        start = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        client.send(b"still")  # trickling does not extend the deadline
        response = client.response()
        elapsed = time.monotonic() - start
        self.assertTandemBody(response, 408, ["Request Timeout"])
        self.assertEqual(response.header("connection"), "close")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 1 + scaled(2))
        self.assertTrue(client.closed_by_peer(scaled(5)))

    def test_a_header_trickled_byte_by_byte_is_cut_off_at_client_header_timeout(self):
        client = self.client(self.tandem.port)
        start = time.monotonic()
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Trickle: " + b"t" * 1000
        for byte in head:
            # One byte every 10 ms until tandem answers.
            if select.select([client.sock], [], [], 0.01)[0]:
                break
            client.send(bytes([byte]))
        response = client.response()
        self.assertTandemBody(response, 408, ["Request Timeout"])
        self.assertLess(time.monotonic() - start, 1 + scaled(2))
        self.assertTrue(client.closed_by_peer(scaled(5)))
        self.assertFalse([r for r in self.backend.requests() if r.has_header("x-trickle")])

    def test_a_connection_that_sends_nothing_is_closed_after_client_header_timeout(self):
        client = self.client(self.tandem.port)
        start = time.monotonic()
        self.assertTrue(client.closed_by_peer(1 + scaled(3)))
        self.assertGreaterEqual(time.monotonic() - start, 0.9)


class UpstreamFailuresTest(TandemTestCase):
    """502, 503 and 504 with a body saying which failure it was."""

    def tandem_for(self, handler, **cluster):
        backend = self.start_backend(handler)
        options = {"retries": 0, "request_timeout": "1s"}
        options.update(cluster)
        return backend, self.start_tandem(make_config([backend.address], cluster_opts=options))

    def test_a_connect_failure_gets_502(self):
        address, holder = refused_address()
        self.addCleanup(holder.close)
        tandem = self.start_tandem(make_config([address]))
        response = http_request(tandem.port)
        self.assertTandemBody(response, 502, ["Bad Gateway", "connect"])

    def test_a_refused_backend_is_retried_on_another(self):
        address, holder = refused_address()
        self.addCleanup(holder.close)
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([address, worker.address]))
        for _ in range(4):
            response = http_request(tandem.port)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.header("x-worker"), "w1")

    def test_a_backend_reset_before_answering_gets_502(self):
        _, tandem = self.tandem_for(serve_once(b"", "reset"))
        self.assertTandemBody(http_request(tandem.port), 502, ["Bad Gateway", "reset"])

    def test_a_backend_closing_before_answering_gets_502(self):
        _, tandem = self.tandem_for(serve_once(b"", "close"))
        self.assertTandemBody(http_request(tandem.port), 502, ["Bad Gateway", "closed"])

    def test_an_invalid_status_line_gets_502(self):
        _, tandem = self.tandem_for(serve_once(b"HTTP/1.1 2x0 OK\r\n\r\n", "hold"))
        self.assertTandemBody(http_request(tandem.port), 502, ["Bad Gateway", "invalid"])

    def test_a_response_that_is_not_http_gets_502(self):
        _, tandem = self.tandem_for(serve_once(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "hold"))
        self.assertTandemBody(http_request(tandem.port), 502, ["Bad Gateway", "invalid"])

    def test_an_unasked_101_gets_502(self):
        _, tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
            "hold"))
        self.assertTandemBody(http_request(tandem.port), 502, ["Bad Gateway"])

    def test_a_pooled_connection_the_backend_closed_is_not_a_502(self):
        # The backend answers (keep-alive) and then closes: the next request may
        # meet that connection in tandem's pool and must go out on a new one.
        def answer_then_close(connection):
            if connection.read_request() is not None:
                connection.send(response_bytes(200, b"once\n"))
        backend, tandem = self.tandem_for(answer_then_close, retries=2)
        client = self.client(tandem.port)
        for _ in range(20):
            response = client.get("/")
            self.assertEqual(response.status, 200, response.body)
            self.assertEqual(response.body, b"once\n")

    def test_a_backend_silent_past_request_timeout_gets_504(self):
        _, tandem = self.tandem_for(serve_once(b"", "hold"))
        start = time.monotonic()
        response = http_request(tandem.port)
        elapsed = time.monotonic() - start
        self.assertTandemBody(response, 504, ["Gateway Timeout", "request_timeout"])
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 1 + scaled(2))

    def test_no_eligible_backend_gets_503_without_reading_an_expected_body(self):
        # "No eligible backend" is decided by health checks: a cluster whose only
        # backend fails its checks has none.
        address, holder = refused_address()
        self.addCleanup(holder.close)
        extra = ('[clusters.compute.health]\nkind = "tcp"\ninterval = "100ms"\n'
                 'timeout = "100ms"\nrise = 1\nfall = 1\n')
        tandem = self.start_tandem(make_config([address], extra=extra))

        def backend_down():
            backends = tandem.status_json()["clusters"][0]["backends"]
            return backends[0]["state"] not in ("unknown", "up")
        wait_until(backend_down, scaled(3), "the backend to be marked down")
        self.assertTandemBody(http_request(tandem.port), 503, ["Service Unavailable"])
        client = self.client(tandem.port)
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n")
        response = client.response()
        self.assertEqual(response.interim, [])
        self.assertTandemBody(response, 503, ["Service Unavailable"])
        self.assertTrue(client.closed_by_peer(scaled(5)))


class KeepAliveTest(TandemTestCase):
    """Keep-alive with clients and backends, pipelining."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")
        cls.tandem = cls.start_class_tandem(make_config([cls.worker.address]))

    def test_an_http11_connection_is_kept_alive_by_default(self):
        client = self.client(self.tandem.port)
        for _ in range(3):
            response = client.get("/")
            self.assertEqual(response.status, 200)
            self.assertIsNone(response.header("connection"))
        self.assertFalse(client.closed_by_peer(0.2))

    def test_connection_close_from_the_client_closes_after_the_response(self):
        client = self.client(self.tandem.port)
        response = client.get("/", [("Connection", "close")])
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("connection"), "close")
        self.assertTrue(client.closed_by_peer(scaled(5)))

    def test_an_http10_connection_without_keep_alive_is_closed(self):
        client = self.client(self.tandem.port)
        client.request("GET", "/", version="HTTP/1.0", host=None)
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"hello from w1\n")
        self.assertTrue(client.closed_by_peer(scaled(5)))

    def test_an_http10_connection_asking_for_keep_alive_is_kept(self):
        client = self.client(self.tandem.port)
        for _ in range(3):
            client.request("GET", "/", [("Connection", "keep-alive")], version="HTTP/1.0",
                           host=None)
            response = client.response()
            self.assertEqual(response.status, 200)
            self.assertEqual((response.header("connection") or "").lower(), "keep-alive")
            self.assertEqual(response.header("content-length"), "14")
        self.assertFalse(client.closed_by_peer(0.2))

    def test_a_client_that_half_closes_still_gets_its_response(self):
        client = self.client(self.tandem.port)
        client.request("GET", "/sleep?ms=100")
        client.shutdown_write()
        response = client.response()
        self.assertEqual(response.body, b"slept 100 ms\n")
        self.assertTrue(client.closed_by_peer(scaled(5)))

    def test_pipelined_requests_are_answered_in_order(self):
        client = self.client(self.tandem.port)
        targets = ["/sleep?ms=200", "/", "/status/404", "/bytes?n=10", "/sleep?ms=20",
                   "/status/201"]
        client.send(b"".join(build_request("GET", t) for t in targets))
        answers = [client.response() for _ in targets]
        self.assertEqual([r.status for r in answers], [200, 200, 404, 200, 200, 201])
        self.assertEqual(answers[0].body, b"slept 200 ms\n")
        self.assertEqual(answers[1].body, b"hello from w1\n")
        self.assertEqual(answers[3].body, b"0123456789")
        self.assertEqual(answers[4].body, b"slept 20 ms\n")

    def test_pipelined_requests_with_bodies_are_answered_in_order(self):
        client = self.client(self.tandem.port)
        client.send(build_request("POST", "/sink", body=b"a" * 1000) +
                    build_request("POST", "/sink", [("Transfer-Encoding", "chunked")],
                                  chunked_body([b"b" * 300, b"c" * 200])) +
                    build_request("GET", "/"))
        first, second, third = client.response(), client.response(), client.response()
        self.assertIn(b'"bytes":1000', first.body)
        self.assertIn(b'"bytes":500', second.body)
        self.assertEqual(third.body, b"hello from w1\n")

    def test_curl_fetches_several_urls_over_one_connection(self):
        url = "http://127.0.0.1:%d/" % self.tandem.port
        result = curl(["-w", "%{http_code} %{num_connects}\n",
                       "-o", "/dev/null", url, "-o", "/dev/null", url + "status/204",
                       "-o", "/dev/null", url + "bytes?n=100"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode().split("\n")[:3], ["200 1", "204 0", "200 0"])

    def test_upstream_connections_are_reused_across_requests(self):
        before = self.worker.stats()["connections_accepted"]
        for _ in range(20):
            self.assertEqual(http_request(self.tandem.port).status, 200)
        client = self.client(self.tandem.port)
        for _ in range(30):
            self.assertEqual(client.get("/").status, 200)
        # /stats is asked directly: one connection of its own.
        opened = self.worker.stats()["connections_accepted"] - before - 1
        self.assertLessEqual(opened, 2, "50 requests opened %d backend connections" % opened)


class IdleTimeoutTest(TandemTestCase):
    """idle_timeout: a quiet keep-alive connection or tunnel is closed."""

    def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address],
                                               listener_opts={"idle_timeout": "1s"}))
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        start = time.monotonic()
        self.assertTrue(client.closed_by_peer(1 + scaled(3)))
        self.assertGreaterEqual(time.monotonic() - start, 0.9)

    def test_a_quiet_tunnel_is_closed_after_idle_timeout(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address],
                                               cluster_opts={"idle_timeout": "1s"}))
        client = self.client(tandem.port)
        self.assertEqual(websocket_handshake(client).status, 101)
        client.send(b"ping")
        self.assertEqual(client.reader.read_exact(4), b"ping")
        start = time.monotonic()
        self.assertTrue(client.closed_by_peer(1 + scaled(3)))
        self.assertGreaterEqual(time.monotonic() - start, 0.9)


class ForwardingTest(TandemTestCase):
    """What tandem changes in requests and responses it forwards."""

    @classmethod
    def setUpClass(cls):
        cls.backend = cls.start_class_backend()
        cls.tandem = cls.start_class_tandem(make_config([cls.backend.address]))

    def forward(self, data, method="GET"):
        """Sends one request; returns (response, the request as the backend got it)."""
        count = len(self.backend.requests())
        client = self.client(self.tandem.port)
        client.send(data)
        response = client.response(method)
        return response, self.backend.wait_requests(count + 1)[count]

    def test_requests_pipelined_after_connection_close_are_not_forwarded(self):
        count = len(self.backend.requests())
        client = self.client(self.tandem.port)
        client.send(build_request("GET", "/last", [("Connection", "close")]) +
                    build_request("GET", "/after-close"))
        self.assertEqual(client.response().status, 200)
        self.assertEqual(client.read_until_close(), b"")
        # The next request on another connection is the next the backend sees.
        self.assertEqual(http_request(self.tandem.port, "GET", "/next").status, 200)
        targets = [r.target for r in self.backend.wait_requests(count + 2)[count:]]
        self.assertEqual(targets, ["/last", "/next"])

    def test_requests_reach_backends_as_http11(self):
        _, request = self.forward(build_request("GET", "/", version="HTTP/1.0", host=None))
        self.assertEqual(request.start_line, "GET / HTTP/1.1")

    def test_an_http10_request_without_host_reaches_the_backend_with_a_host_field(self):
        # RFC 9112 §3.2: every HTTP/1.1 request carries Host (empty when unknown).
        _, request = self.forward(build_request("GET", "/", version="HTTP/1.0", host=None))
        self.assertEqual(len(request.header_all("host")), 1, request.raw_head)

    def test_host_is_preserved(self):
        _, request = self.forward(build_request("GET", "/p", host="Service.Example:8080"))
        self.assertEqual(request.header_all("host"), ["Service.Example:8080"])

    def test_an_absolute_form_target_is_sent_in_origin_form_with_host_from_its_authority(self):
        _, request = self.forward(build_request("GET", "http://auth.example:81/p?q=1",
                                                host="other.example"))
        self.assertEqual(request.start_line, "GET /p?q=1 HTTP/1.1")
        self.assertEqual(request.header_all("host"), ["auth.example:81"])

    def test_an_absolute_form_target_without_a_path_is_sent_as_slash(self):
        _, request = self.forward(build_request("GET", "http://auth.example",
                                                host="other.example"))
        self.assertEqual(request.start_line, "GET / HTTP/1.1")
        self.assertEqual(request.header_all("host"), ["auth.example"])

    def test_hop_by_hop_request_headers_are_removed(self):
        _, request = self.forward(build_request("GET", "/", [
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=300"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Keep-Me", "2"),
        ]))
        for name in ("connection", "x-drop-me", "keep-alive", "proxy-connection"):
            self.assertFalse(request.has_header(name), "%s reached the backend" % name)
        self.assertEqual(request.header("x-keep-me"), "2")

    def test_te_trailers_is_kept_and_other_te_values_are_removed(self):
        _, request = self.forward(build_request("GET", "/", [("TE", "trailers, deflate")]))
        self.assertEqual(request.header_all("te"), ["trailers"])
        _, request = self.forward(build_request("GET", "/", [("TE", "deflate")]))
        self.assertFalse(request.has_header("te"))

    def test_hop_by_hop_response_headers_are_removed(self):
        backend = self.start_backend(serve_once(
            b"HTTP/1.1 200 OK\r\nConnection: X-Private, keep-alive\r\nX-Private: secret\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: foo\r\n"
            b"X-Public: yes\r\nContent-Length: 2\r\n\r\nok", "hold"))
        tandem = self.start_tandem(make_config([backend.address]))
        client = self.client(tandem.port)
        response = client.get("/")
        for name in ("x-private", "keep-alive", "proxy-connection", "upgrade", "connection"):
            self.assertFalse(response.has_header(name), "%s reached the client" % name)
        self.assertEqual(response.header("x-public"), "yes")
        self.assertEqual(response.body, b"ok")

    def test_x_forwarded_for_gets_the_client_address_appended(self):
        _, request = self.forward(build_request("GET", "/", [("X-Forwarded-For", "10.0.0.1"),
                                                             ("X-Forwarded-For", "10.0.0.2")]))
        self.assertEqual(request.header_all("x-forwarded-for"), ["10.0.0.1, 10.0.0.2, 127.0.0.1"])
        _, request = self.forward(build_request("GET", "/"))
        self.assertEqual(request.header_all("x-forwarded-for"), ["127.0.0.1"])

    def test_x_forwarded_proto_is_replaced_by_the_scheme_the_client_used(self):
        _, request = self.forward(build_request("GET", "/", [("X-Forwarded-Proto", "https")]))
        self.assertEqual(request.header_all("x-forwarded-proto"), ["http"])

    def test_forwarded_gets_for_and_proto_appended(self):
        _, request = self.forward(build_request("GET", "/", [("Forwarded", "for=10.0.0.1;proto=https")]))
        values = ", ".join(request.header_all("forwarded"))
        self.assertEqual(values, "for=10.0.0.1;proto=https, for=127.0.0.1;proto=http")
        _, request = self.forward(build_request("GET", "/"))
        self.assertEqual(request.header_all("forwarded"), ["for=127.0.0.1;proto=http"])

    def test_a_chunked_request_body_and_its_trailers_are_forwarded(self):
        body = chunked_body([b"abc", b"defg", b"h" * 5000], [("X-Checksum", "42")])
        response, request = self.forward(build_request(
            "POST", "/up", [("Transfer-Encoding", "chunked"), ("TE", "trailers")], body))
        self.assertEqual(response.status, 200)
        self.assertTrue(request.chunked)
        self.assertEqual(request.body, b"abcdefg" + b"h" * 5000)
        self.assertEqual(request.trailer("x-checksum"), "42")

    def test_a_content_length_request_body_is_forwarded(self):
        response, request = self.forward(build_request("PUT", "/up", body=b"z" * 70000))
        self.assertEqual(response.status, 200)
        self.assertEqual(request.header("content-length"), "70000")
        self.assertEqual(request.body, b"z" * 70000)


class ResponseBodiesTest(TandemTestCase):
    """Response framing: bodiless responses, chunked with trailers, cut bodies."""

    def tandem_for(self, handler):
        backend = self.start_backend(handler)
        return self.start_tandem(make_config([backend.address], cluster_opts={"retries": 0}))

    def test_a_head_response_has_no_body_even_when_the_backend_sends_one(self):
        def answer(request):
            if request.method == "HEAD":
                return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nBOGUS"
            return response_bytes(200, b"real body\n")
        tandem = self.tandem_for(serve_each(answer))
        client = self.client(tandem.port)
        client.request("HEAD", "/")
        head = client.response("HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header("content-length"), "5")
        client.request("GET", "/")
        response = client.response()
        self.assertEqual(response.body, b"real body\n")
        self.assertNotIn(b"BOGUS", head.raw + response.raw)

    def test_204_and_304_responses_have_no_body_even_when_the_backend_sends_one(self):
        def answer(request):
            if request.target == "/204":
                return b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nBOGUS"
            if request.target == "/304":
                return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nBOGUS"
            return response_bytes(200, b"real body\n")
        tandem = self.tandem_for(serve_each(answer))
        client = self.client(tandem.port)
        seen = b""
        for target, status in (("/204", 204), ("/", 200), ("/304", 304), ("/", 200)):
            response = client.get(target)
            self.assertEqual(response.status, status)
            self.assertEqual(response.body, b"" if status != 200 else b"real body\n")
            seen += response.raw
        self.assertNotIn(b"BOGUS", seen)
        self.assertFalse(client.closed_by_peer(0.2))

    def test_a_204_response_carries_no_framing_header(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "hold"))
        response = http_request(tandem.port)
        self.assertEqual(response.status, 204)
        self.assertFalse(response.has_header("transfer-encoding"))
        self.assertFalse(response.has_header("content-length"))

    def test_interim_responses_are_relayed_before_the_final_one(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "hold"))
        client = self.client(tandem.port)
        response = client.get("/")
        self.assertEqual([m.status for m in response.interim], [103])
        self.assertEqual(response.interim[0].header("link"), "</style.css>; rel=preload")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok")

    def test_a_chunked_response_and_its_trailers_are_forwarded(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Digest\r\n\r\n"
            + chunked_body([b"abc", b"d" * 9000], [("X-Digest", "sha-256=abc")]), "hold"))
        client = self.client(tandem.port)
        client.request("GET", "/", [("TE", "trailers")])
        response = client.response()
        self.assertTrue(response.chunked)
        self.assertEqual(response.body, b"abc" + b"d" * 9000)
        self.assertEqual(response.trailer("x-digest"), "sha-256=abc")

    def test_a_close_delimited_response_reaches_an_http11_client_framed(self):
        tandem = self.tandem_for(serve_once(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", "close"))
        client = self.client(tandem.port)
        response = client.get("/")
        self.assertTrue(response.chunked or response.has_header("content-length"))
        self.assertEqual(response.body, b"until the end")

    def test_a_chunked_response_reaches_an_http10_client_delimited_by_close(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked_body([b"abc", b"defg"]), "hold"))
        client = self.client(tandem.port)
        client.request("GET", "/", version="HTTP/1.0", host=None)
        response = client.response()
        self.assertFalse(response.has_header("transfer-encoding"))
        self.assertEqual(response.body, b"abcdefg")

    def test_a_response_cut_mid_body_closes_the_client_connection(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "close"))
        client = self.client(tandem.port)
        client.request("GET", "/")
        with self.assertRaises(IncompleteMessage):
            client.response()

    def test_a_response_reset_mid_body_closes_the_client_connection(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "reset"))
        client = self.client(tandem.port)
        client.request("GET", "/")
        with self.assertRaises(IncompleteMessage):
            client.response()

    def test_a_chunked_response_cut_mid_body_is_not_terminated(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", "close"))
        client = self.client(tandem.port)
        client.request("GET", "/")
        received = client.read_until_close()
        self.assertNotIn(b"0\r\n\r\n", received)


class ExpectAndUpgradeTest(TandemTestCase):
    """Expect: 100-continue, Upgrade and WebSocket tunnels."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")
        cls.tandem = cls.start_class_tandem(make_config([cls.worker.address]))

    def test_tandem_answers_100_continue_itself_and_does_not_forward_expect(self):
        # The raw backend never sends 100 Continue: any the client sees is tandem's.
        backend = self.start_backend()
        tandem = self.start_tandem(make_config([backend.address]))
        client = self.client(tandem.port)
        client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n")
        self.assertEqual(client.reader.read_line(), b"HTTP/1.1 100 Continue\r\n")
        self.assertEqual(client.reader.read_line(), b"\r\n")
        client.send(b"hello")
        response = client.response()
        self.assertEqual(response.status, 200)
        (request,) = backend.wait_requests(1)
        self.assertFalse(request.has_header("expect"))
        self.assertEqual(request.body, b"hello")

    def test_expect_100_continue_uploads_through_to_the_worker(self):
        client = self.client(self.tandem.port)
        client.send(b"POST /sink HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 100000\r\n\r\n")
        self.assertEqual(client.reader.read_line(), b"HTTP/1.1 100 Continue\r\n")
        self.assertEqual(client.reader.read_line(), b"\r\n")
        client.send(b"x" * 100000)
        response = client.response()
        self.assertEqual(response.interim, [], "a second 100 Continue was relayed")
        self.assertIn(b'"bytes":100000', response.body)

    def test_curl_uploads_with_expect_100_continue(self):
        url = "http://127.0.0.1:%d/sink" % self.tandem.port
        result = curl(["-v", "-H", "Expect: 100-continue", "--data-binary", "@-", url],
                      input=b"u" * 300000)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"HTTP/1.1 100 Continue", result.stderr)
        self.assertIn(b'"bytes":300000', result.stdout)

    def test_a_connect_failure_with_expect_100_continue_gets_502_without_100(self):
        address, holder = refused_address()
        self.addCleanup(holder.close)
        tandem = self.start_tandem(make_config([address]))
        client = self.client(tandem.port)
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n")
        response = client.response()
        self.assertEqual(response.interim, [])
        self.assertTandemBody(response, 502, ["Bad Gateway"])
        self.assertTrue(client.closed_by_peer(scaled(5)))

    def test_a_websocket_upgrade_becomes_a_tunnel_that_echoes(self):
        client = self.client(self.tandem.port)
        response = websocket_handshake(client)
        self.assertEqual(response.status, 101)
        self.assertEqual(response.header("upgrade"), "websocket")
        self.assertEqual((response.header("connection") or "").lower(), "upgrade")
        self.assertTrue(response.header("sec-websocket-accept"))
        for message in (b"hello tunnel", b"\x00\xff binary \r\n", os.urandom(300000)):
            client.send(message)
            self.assertEqual(client.reader.read_exact(len(message)), message)

    def test_a_refused_upgrade_is_relayed_as_a_normal_response(self):
        client = self.client(self.tandem.port)
        response = websocket_handshake(client, "/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"hello from w1\n")
        # The connection still speaks HTTP.
        self.assertEqual(client.get("/status/202").status, 202)

    def test_an_upgrade_to_h2c_is_never_forwarded(self):
        backend = self.start_backend()
        tandem = self.start_tandem(make_config([backend.address]))
        client = self.client(tandem.port)
        client.request("GET", "/", [("Connection", "Upgrade, HTTP2-Settings"),
                                    ("Upgrade", "h2c"),
                                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
        response = client.response()
        self.assertEqual(response.status, 200)
        (request,) = backend.wait_requests(1)
        self.assertFalse(request.has_header("upgrade"))
        self.assertFalse(request.has_header("http2-settings"))
        self.assertNotIn(b"h2c", backend.received())
        self.assertEqual(client.get("/").status, 200)


if __name__ == "__main__":
    unittest.main()
