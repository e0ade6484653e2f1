"""Hardening of the HTTP/1.1 framing (docs/http-parsing.md): every part of a message
that is not body has a bound (trailers, field counts, chunk-size lines, response heads),
malformed Transfer-Encoding lists and status lines are refused, and what tandem sends on
is well formed. Requests are checked on the bytes the raw backend received; responses on
what a raw client receives."""

import select
import socket
import unittest

from harness import (IncompleteMessage, TandemTestCase, build_request, http_request,
                     make_config, response_bytes, scaled, serve_once)

# Appended after a bad request: if any of it ever reaches the backend, the
# rejected request's framing leaked.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def fields(count, prefix="X-F"):
    return b"".join(b"%s%d: v\r\n" % (prefix.encode(), i) for i in range(count))


class RequestLimitsTest(TandemTestCase):
    """Requests against a listener with max_header_size = 4KiB, in front of a raw
    backend of their own (so its recorded bytes belong to one test)."""

    def setUp(self):
        self.backend = self.start_backend()
        self.tandem = self.start_tandem(make_config(
            [self.backend.address], listener_opts={"max_header_size": "4KiB"}))

    def send_until_answer(self, head, filler, limit=8 << 20):
        """Sends `head`, then `filler` over and over (at most `limit` bytes) until
        tandem answers or closes; returns (client, response)."""
        client = self.client(self.tandem.port, timeout=scaled(10))
        client.send(head)
        sent = 0
        while sent < limit:
            readable, _, _ = select.select([client.sock], [], [], 0)
            if readable:
                break
            try:
                client.sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(filler)
        return client, client.response()

    def assertAnsweredAndClosed(self, client, response, status):
        self.assertTandemBody(response, status)
        self.assertEqual((response.header("connection") or "").lower(), "close")
        self.assertTrue(client.closed_by_peer(scaled(5)),
                        "tandem kept the connection after %d" % status)

    def assertNothingReached(self):
        """A good request on a new connection reaches the backend, and it is all
        the backend ever received."""
        response = http_request(self.tandem.port, "GET", "/sentinel")
        self.assertEqual(response.status, 200)
        requests = self.backend.wait_requests(1)
        received = self.backend.received()
        self.assertNotIn(b"smuggled", received)
        self.assertEqual([r.target for r in requests], ["/sentinel"], received)

    def assertNoCompleteRequestReached(self):
        """Like assertNothingReached for a request whose head went on before its
        body broke the rules: the backend connection that carried it is closed
        before a complete request."""
        response = http_request(self.tandem.port, "GET", "/sentinel")
        self.assertEqual(response.status, 200)
        self.backend.wait_requests(1)
        self.backend.wait(lambda b: all(c.peer_closed.is_set() or c.requests
                                        for c in b.connections),
                          what="tandem closing the cut backend connection")
        self.assertEqual([r.target for r in self.backend.requests()], ["/sentinel"],
                         self.backend.received())

    # ---- trailers, fields, chunk-size lines ----

    def test_endless_request_trailers_get_431(self):
        # Trailer lines that never end used to grow tandem without bound.
        client, response = self.send_until_answer(
            CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n", b"X-Trailer: " + b"t" * 500 + b"\r\n")
        self.assertAnsweredAndClosed(client, response, 431)
        self.assertNoCompleteRequestReached()

    def test_an_endless_trailer_line_gets_431(self):
        client, response = self.send_until_answer(
            CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-Trailer: ", b"t" * 4096)
        self.assertAnsweredAndClosed(client, response, 431)
        self.assertNoCompleteRequestReached()

    def test_more_than_100_trailer_fields_get_431(self):
        client, response = self.send_until_answer(
            CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + fields(101, "T") + b"\r\n", b"", limit=0)
        self.assertAnsweredAndClosed(client, response, 431)
        self.assertNoCompleteRequestReached()

    def test_100_trailer_fields_are_forwarded(self):
        client = self.client(self.tandem.port)
        client.send(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + fields(100, "T") + b"\r\n")
        self.assertEqual(client.response().status, 200)
        request = self.backend.wait_requests(1)[0]
        self.assertEqual(request.body, b"abc")
        self.assertEqual(len(request.trailers), 100)

    def test_more_than_100_header_fields_get_431(self):
        client, response = self.send_until_answer(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + fields(100) + b"\r\n" + SMUGGLED, b"", limit=0)
        self.assertAnsweredAndClosed(client, response, 431)
        self.assertNothingReached()

    def test_a_chunk_extension_over_4_kib_gets_400(self):
        client, response = self.send_until_answer(
            CHUNKED_HEAD + b"3;ext=", b"e" * 4096, limit=64 << 10)
        self.assertAnsweredAndClosed(client, response, 400)
        self.assertNoCompleteRequestReached()

    def test_a_chunk_size_with_endless_leading_zeros_gets_400(self):
        client, response = self.send_until_answer(CHUNKED_HEAD, b"0" * 4096, limit=64 << 10)
        self.assertAnsweredAndClosed(client, response, 400)
        self.assertNoCompleteRequestReached()

    def test_a_second_request_over_max_header_size_gets_431(self):
        # The first read of the next request on a kept connection escaped the
        # head limit.
        client = self.client(self.tandem.port)
        self.assertEqual(client.get("/first").status, 200)
        client.send(build_request("GET", "/second", [("X-Big", "b" * 6000)]) + SMUGGLED)
        response = client.response()
        self.assertAnsweredAndClosed(client, response, 431)
        self.assertEqual([r.target for r in self.backend.wait_requests(1)], ["/first"])
        self.assertNotIn(b"/second", self.backend.received())

    # ---- Transfer-Encoding lists ----

    def assertRejectedEverywhere(self, data, status):
        client, response = self.send_until_answer(data, b"", limit=0)
        self.assertAnsweredAndClosed(client, response, status)
        self.assertNothingReached()

    def test_an_empty_transfer_encoding_gets_400_and_nothing_is_smuggled(self):
        # It was taken as "no body": what followed the head was the next request.
        self.assertRejectedEverywhere(
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n" + SMUGGLED, 400)

    def test_an_empty_transfer_encoding_before_a_chunked_body_gets_400(self):
        self.assertRejectedEverywhere(
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n" + SMUGGLED,
            400)

    def test_a_transfer_encoding_of_commas_only_gets_400(self):
        self.assertRejectedEverywhere(
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , ,\r\n\r\n" + SMUGGLED, 400)

    def test_a_transfer_encoding_ending_in_a_comma_gets_400(self):
        self.assertRejectedEverywhere(
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n"
            b"0\r\n\r\n" + SMUGGLED, 400)

    def test_empty_list_elements_before_chunked_are_allowed(self):
        client = self.client(self.tandem.port)
        client.send(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n"
                    b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(client.response().status, 200)
        request = self.backend.wait_requests(1)[0]
        self.assertEqual(request.body, b"abc")
        self.assertEqual(request.header_all("transfer-encoding"), ["chunked"])

    def test_an_rtsp_request_line_gets_400(self):
        # llhttp takes RTSP/1.0 where HTTP/1.x belongs; it was forwarded as HTTP/1.1.
        self.assertRejectedEverywhere(b"GET /a RTSP/1.0\r\nHost: a\r\n\r\n" + SMUGGLED, 400)

    # ---- what reaches the backend ----

    def test_an_absolute_form_target_with_a_query_and_no_path_is_sent_as_slash_query(self):
        client = self.client(self.tandem.port)
        client.send(b"GET http://example.com?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
                    b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(client.response().status, 200)
        self.assertEqual(client.response().status, 200)
        first, second = self.backend.wait_requests(2)
        self.assertEqual(first.start_line, "GET /?x=1 HTTP/1.1")
        self.assertEqual(first.header("host"), "example.com")
        self.assertEqual(second.start_line, "GET / HTTP/1.1")


class ResponseHardeningTest(TandemTestCase):
    """Responses a raw backend sends, as a client sees them through tandem."""

    def tandem_for(self, handler):
        backend = self.start_backend(handler)
        return self.start_tandem(make_config([backend.address], cluster_opts={"retries": 0}))

    def get(self, tandem):
        """GET / on a new connection; returns the response (raises
        IncompleteMessage when it is cut)."""
        client = self.client(tandem.port, timeout=scaled(10))
        client.request("GET", "/")
        return client.response()

    def assertBadGateway(self, response_data):
        tandem = self.tandem_for(serve_once(response_data, "hold"))
        response = self.get(tandem)
        self.assertTandemBody(response, 502, ["Bad Gateway"])

    def assertCutAfterHead(self, response_data):
        """The head was relayed already: the client connection ends before a
        complete response (a chunked one is never terminated)."""
        tandem = self.tandem_for(serve_once(response_data, "hold"))
        client = self.client(tandem.port, timeout=scaled(10))
        client.request("GET", "/")
        with self.assertRaises(IncompleteMessage) as cut:
            client.response()
        self.assertIn(b"HTTP/1.1 200 OK\r\n", cut.exception.partial)
        self.assertNotIn(b"\r\n0\r\n", cut.exception.partial)

    def test_a_two_digit_status_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 20 X\r\nContent-Length: 2\r\n\r\nok")

    def test_a_status_below_100_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok")

    def test_a_status_above_599_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok")

    def test_a_nul_in_the_reason_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok")

    def test_an_escape_in_the_reason_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 200 \x1b[31mOK\r\nContent-Length: 2\r\n\r\nok")

    def test_an_empty_transfer_encoding_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\nok")

    def test_more_than_100_header_fields_get_502(self):
        self.assertBadGateway(response_bytes(200, b"ok", [("X-F%d" % i, "v") for i in range(101)]))

    def test_an_endless_header_line_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 200 OK\r\nX-Endless: " + b"e" * (200 << 10))

    def test_an_endless_status_line_gets_502(self):
        self.assertBadGateway(b"HTTP/1.1 200 " + b"r" * (200 << 10))

    def test_endless_response_trailers_cut_the_response(self):
        # 300 MB of trailers grew tandem to 956 MB; 64 KiB is the bound.
        self.assertCutAfterHead(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"2\r\nok\r\n0\r\nX-Trailer: " + b"t" * (1 << 20))

    def test_more_than_100_response_trailer_fields_cut_the_response(self):
        self.assertCutAfterHead(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"2\r\nok\r\n0\r\n" + fields(101, "T") + b"\r\n")

    def test_a_long_chunk_extension_cuts_the_response(self):
        self.assertCutAfterHead(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"2;" + b"e" * (64 << 10) + b"\r\nok\r\n0\r\n\r\n")

    def test_response_trailers_within_the_limits_are_forwarded(self):
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
            + fields(100, "T") + b"\r\n", "hold"))
        response = self.get(tandem)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok")
        self.assertEqual(len(response.trailers), 100)

    def test_a_last_coding_other_than_chunked_is_relayed_as_it_came_until_close(self):
        # It was relabelled "gzip, chunked" and its bytes re-chunked.
        raw = b"3\r\nabc\r\n0\r\n\r\n\x1f\x8b not really gzip"
        tandem = self.tandem_for(serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + raw, "close"))
        response = self.get(tandem)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header_all("transfer-encoding"), ["chunked, gzip"])
        self.assertFalse(response.has_header("content-length"))
        self.assertEqual((response.header("connection") or "").lower(), "close")
        self.assertEqual(response.body, raw)


if __name__ == "__main__":
    unittest.main()
