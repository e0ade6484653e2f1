"""Idle client connections: once its last response is out (or, for a new
connection, after a second of silence) a plain connection is parked: it keeps
only its socket and one event (docs/idle.md). A parked connection serves its
next request as any other, keeps its timeouts, its client address and its
place in shutdown and reload."""

import signal
import time
import unittest

from harness import (TandemTestCase, build_request, make_config, read_response,
                     scaled, wait_until)

NO_CHECKS = '[clusters.compute.health]\nkind = "none"\n'


def parked(tandem):
    return tandem.metrics().get("tandem_parked_connections", -1)


def open_connections(tandem):
    return tandem.metrics().get('tandem_downstream_connections_open{listener="web"}', -1)


def wait_parked(tandem, count):
    wait_until(lambda: parked(tandem) == count, scaled(5),
               "%d parked connections (have %s)" % (count, parked(tandem)))


class ParkedConnectionTest(TandemTestCase):

    def start(self, **listener):
        self.worker = self.start_worker("w1")
        return self.start_tandem(make_config([self.worker.address], listener_opts=listener,
                                             extra=NO_CHECKS))

    def test_parked_connections_serve_their_next_request_with_their_own_address(self):
        tandem = self.start()
        clients = [self.client(tandem.port) for _ in range(20)]
        for client in clients:
            self.assertEqual(client.get("/").status, 200)
        wait_parked(tandem, 20)
        for client in clients:
            response = client.get("/")
            self.assertEqual(response.status, 200, response)
        # Each was taken back by its request, logged under its own client,
        # and parked again once answered.
        wait_parked(tandem, 20)
        wait_until(lambda: len(tandem.access_lines()) >= 40, scaled(5), "40 access lines")
        ports = [c.sock.getsockname()[1] for c in clients]
        logged = [line.split()[1] for line in tandem.access_lines()[20:40]]
        self.assertEqual(sorted(logged), sorted("127.0.0.1:%d" % p for p in ports))

    def test_many_connections_parked_at_once_all_serve_their_next_requests(self):
        tandem = self.start()
        clients = [self.client(tandem.port) for _ in range(300)]
        for round_ in range(3):
            for client in clients:
                client.send(build_request("GET", "/", {"Host": "a"}))
            statuses = [read_response(c.reader, "GET").status for c in clients]
            self.assertEqual(statuses, [200] * 300, "round %d" % round_)
            wait_parked(tandem, 300)

    def test_pipelined_requests_into_a_parked_connection_are_answered_in_order(self):
        tandem = self.start()
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        wait_parked(tandem, 1)
        client.send(build_request("GET", "/bytes?n=3", {"Host": "a"}) +
                    build_request("GET", "/bytes?n=7", {"Host": "a"}))
        first = read_response(client.reader, "GET")
        second = read_response(client.reader, "GET")
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual((len(first.body), len(second.body)), (3, 7))

    def test_a_request_split_across_the_park_is_read_whole(self):
        # The first bytes of a head wake the connection; the rest follows later.
        tandem = self.start()
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        wait_parked(tandem, 1)
        request = build_request("GET", "/bytes?n=11", {"Host": "a"})
        client.send(request[:5])
        time.sleep(0.3)
        client.send(request[5:])
        response = read_response(client.reader, "GET")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(len(response.body), 11)

    def test_idle_timeout_counts_from_the_last_response_not_from_the_park(self):
        tandem = self.start(idle_timeout="3s")
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        start = time.monotonic()
        wait_parked(tandem, 1)
        self.assertTrue(client.closed_by_peer(scaled(6)), "a parked connection outlived idle_timeout")
        waited = time.monotonic() - start
        self.assertGreaterEqual(waited, 2.9)
        self.assertLess(waited, 3 + scaled(1), "closed %.2f s after the response" % waited)
        wait_parked(tandem, 0)
        self.assertEqual(open_connections(tandem), 0)

    def test_a_silent_new_connection_is_parked_and_keeps_client_header_timeout(self):
        tandem = self.start(client_header_timeout="3s")
        client = self.client(tandem.port)
        start = time.monotonic()
        wait_parked(tandem, 1)
        self.assertTrue(client.closed_by_peer(scaled(6)))
        waited = time.monotonic() - start
        self.assertGreaterEqual(waited, 2.9)
        self.assertLess(waited, 3 + scaled(1), "closed %.2f s after the connect" % waited)

    def test_a_client_that_closes_while_parked_is_forgotten(self):
        tandem = self.start()
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        wait_parked(tandem, 1)
        client.close()
        wait_until(lambda: open_connections(tandem) == 0, scaled(5),
                   "the connection to be closed")
        self.assertEqual(parked(tandem), 0)

    def test_shutdown_closes_parked_connections_at_once(self):
        tandem = self.start()
        clients = [self.client(tandem.port) for _ in range(5)]
        for client in clients:
            self.assertEqual(client.get("/").status, 200)
        wait_parked(tandem, 5)
        start = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        for client in clients:
            self.assertTrue(client.closed_by_peer(scaled(2)))
        self.assertEqual(tandem.wait(scaled(5)), 0)
        # The grace period (3 s) was not waited for.
        self.assertLess(time.monotonic() - start, 2.5)

    def test_after_a_reload_a_parked_connection_follows_the_new_config(self):
        tandem = self.start()
        client = self.client(tandem.port)
        self.assertEqual(client.get("/").header("x-worker"), "w1")
        wait_parked(tandem, 1)
        other = self.start_worker("w2")
        self.assertTrue(tandem.reload(make_config([other.address], extra=NO_CHECKS)))
        response = client.get("/")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.header("x-worker"), "w2")


if __name__ == "__main__":
    unittest.main()
