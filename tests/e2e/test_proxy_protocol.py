"""The PROXY protocol on a listener (proxy_protocol = true): the header's
address is the client's everywhere (access log, X-Forwarded-For); the header
may arrive split and slowly; anything else, a header too long, none in time or
one from an untrusted peer closes the connection and is counted; TLS follows
the header. Cluster send_proxy: tandem's own header to backends names one
client per backend connection, comes before TLS, and checks send LOCAL."""

import json
import socket
import struct
import time
import unittest

from harness import (HttpReader, TandemTestCase, build_request, curl, make_config, read_response,
                     response_bytes, scaled, wait_until)
from tlsutil import Pki, client_context

NO_CHECKS = '[clusters.compute.health]\nkind = "none"\n'
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(command=0x21, family=0x11, block=None, tlvs=b""):
    if block is None:  # 192.0.2.1:51000 -> 198.51.100.7:443
        block = socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.7") + \
            struct.pack("!HH", 51000, 443)
    body = block + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def proxy_results(tandem):
    metrics = tandem.metrics()
    prefix = 'tandem_proxy_protocol_total{listener="web",result="'
    return {key[len(prefix):-2]: int(value) for key, value in metrics.items()
            if key.startswith(prefix) and value}


class ProxyProtocolTest(TandemTestCase):

    def start(self, **listener):
        self.backend = self.start_backend()
        options = {"proxy_protocol": True}
        options.update(listener)
        return self.start_tandem(make_config([self.backend.address], listener_opts=options,
                                             extra=NO_CHECKS))

    def forwarded_for(self):
        return self.backend.wait_requests(1)[-1].header_all("x-forwarded-for")

    def test_a_v1_header_gives_the_client_address_to_the_log_and_the_backend(self):
        tandem = self.start()
        client = self.client(tandem.port)
        client.send(b"PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n" +
                    build_request("GET", "/", {"Host": "a"}))
        self.assertEqual(read_response(client.reader, "GET").status, 200)
        self.assertEqual(self.forwarded_for(), ["192.0.2.1"])
        wait_until(lambda: tandem.access_lines(), scaled(5), "an access log line")
        self.assertEqual(tandem.access_lines()[0].split()[1], "192.0.2.1:51000")
        self.assertEqual(proxy_results(tandem), {"proxied": 1})

    def test_curl_haproxy_protocol(self):
        tandem = self.start()
        result = curl(["--haproxy-protocol", "-o", "/dev/null", "-w", "%{http_code}",
                       "http://127.0.0.1:%d/" % tandem.port])
        self.assertEqual(result.stdout, b"200", result.stderr)
        self.assertEqual(self.forwarded_for(), ["127.0.0.1"])

    def test_a_v2_header_sent_byte_by_byte_then_two_requests(self):
        tandem = self.start()
        client = self.client(tandem.port)
        header = v2_header(tlvs=b"\x05\x00\x03abc")
        for i in range(len(header)):
            client.send(header[i:i + 1])
            time.sleep(0.005)
        for _ in range(2):
            client.send(build_request("GET", "/", {"Host": "a"}))
            self.assertEqual(read_response(client.reader, "GET").status, 200)
            # Parked between the two: what the header said stays with it.
            wait_until(lambda: tandem.metrics().get("tandem_parked_connections") == 1,
                       scaled(5), "the connection parked")
        self.assertEqual(self.forwarded_for(), ["192.0.2.1"])
        self.assertEqual(proxy_results(tandem), {"proxied": 1})
        # The TLV is logged with both requests of the connection.
        wait_until(lambda: len(tandem.access_lines()) >= 2, scaled(5), "two access log lines")
        for line in tandem.access_lines()[:2]:
            self.assertTrue(line.endswith(' proxy_unique_id="abc"'), line)

    def test_v2_tlvs_are_in_the_json_access_log(self):
        self.backend = self.start_backend()
        tandem = self.start_tandem(make_config(
            [self.backend.address], global_opts={"access_log_format": "json"},
            listener_opts={"proxy_protocol": True}, extra=NO_CHECKS))
        client = self.client(tandem.port)
        tlvs = (b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x05\x00\x04a\"\nb" +
                b"\x20\x00\x05\x01\x00\x00\x00\x00")
        client.send(v2_header(tlvs=tlvs) + build_request("GET", "/", {"Host": "a"}))
        self.assertEqual(read_response(client.reader, "GET").status, 200)
        wait_until(lambda: tandem.access_lines(), scaled(5), "an access log line")
        entry = json.loads(tandem.access_lines()[0])
        self.assertEqual(entry["client"], "192.0.2.1:51000")
        self.assertEqual(entry["proxy"], {"ssl": True, "unique_id": "a\"\nb",
                                          "authority": "example.com", "alpn": "h2"})

    def test_a_v2_local_header_keeps_the_peer_address(self):
        tandem = self.start()
        client = self.client(tandem.port)
        client.send(v2_header(command=0x20, family=0x00, block=b"") +
                    build_request("GET", "/", {"Host": "a"}))
        self.assertEqual(read_response(client.reader, "GET").status, 200)
        self.assertEqual(self.forwarded_for(), ["127.0.0.1"])
        self.assertEqual(proxy_results(tandem), {"local": 1})

    def test_no_header_garbage_and_a_long_line_are_closed_and_counted(self):
        tandem = self.start()
        plain = self.client(tandem.port)
        plain.send(build_request("GET", "/", {"Host": "a"}))
        self.assertTrue(plain.closed_by_peer(scaled(5)))
        endless = self.client(tandem.port)
        endless.send(b"PROXY UNKNOWN " + b"x" * 200)
        self.assertTrue(endless.closed_by_peer(scaled(5)))
        bad_v2 = self.client(tandem.port)
        bad_v2.send(V2_SIGNATURE + b"\x21\x11\x10\x01")  # a 4,097-byte block
        self.assertTrue(bad_v2.closed_by_peer(scaled(5)))
        self.assertEqual(self.backend.requests(), [])
        wait_until(lambda: proxy_results(tandem).get("invalid") == 3, scaled(5),
                   "three invalid headers counted")

    def test_a_connection_that_sends_no_header_is_closed_at_the_timeout(self):
        tandem = self.start(proxy_protocol_timeout="1s")
        silent = [self.client(tandem.port) for _ in range(50)]
        start = time.monotonic()
        for client in silent:
            self.assertTrue(client.closed_by_peer(scaled(5)))
        self.assertGreaterEqual(time.monotonic() - start, 0.9)
        # A new connection is still served.
        client = self.client(tandem.port)
        client.send(b"PROXY UNKNOWN\r\n" + build_request("GET", "/", {"Host": "a"}))
        self.assertEqual(read_response(client.reader, "GET").status, 200)
        wait_until(lambda: proxy_results(tandem) == {"timeout": 50, "local": 1}, scaled(5),
                   "50 timeouts counted (have %s)" % proxy_results(tandem))

    def test_a_peer_outside_trusted_proxies_is_closed_at_once(self):
        tandem = self.start(trusted_proxies=["10.0.0.0/8"])
        client = self.client(tandem.port)
        client.send(b"PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n" +
                    build_request("GET", "/", {"Host": "a"}))
        self.assertTrue(client.closed_by_peer(scaled(2)))
        self.assertEqual(self.backend.requests(), [])
        self.assertEqual(proxy_results(tandem), {"untrusted": 1})

    def test_a_bad_trusted_proxies_entry_is_a_config_error(self):
        tandem_config = make_config(["127.0.0.1:1"], listener_opts={
            "proxy_protocol": True, "trusted_proxies": ["10.0.0.0/33"]}, extra=NO_CHECKS)
        with self.assertRaises(RuntimeError) as raised:
            self.start_tandem(tandem_config)
        self.assertIn("trusted_proxies[0]", str(raised.exception))
        self.assertIn("not an address block", str(raised.exception))


class ProxyProtocolTlsTest(TandemTestCase):
    """The header comes before the TLS ClientHello."""

    def test_tls_after_a_v2_header(self):
        pki = Pki()
        self.addCleanup(pki.close)
        pki.ca("ca", "tandem test CA")
        pki.leaf("server", "ca", "localhost", dns=["localhost"], ips=["127.0.0.1"])
        backend = self.start_backend()
        tandem = self.start_tandem(make_config(
            [backend.address], extra=NO_CHECKS,
            listener_opts={"proxy_protocol": True, "tls_cert": pki.cert("server"),
                           "tls_key": pki.key("server")}))
        raw = socket.create_connection(("127.0.0.1", tandem.port), timeout=scaled(10))
        self.addCleanup(raw.close)
        raw.sendall(v2_header())
        sock = client_context(pki.cert("ca")).wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        sock.sendall(build_request("GET", "/", {"Host": "a"}))

        response = read_response(HttpReader(sock), "GET")
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.wait_requests(1)[0].header_all("x-forwarded-for"),
                         ["192.0.2.1"])


# ---- send_proxy: the header tandem writes to backends -------------------------------


def read_proxy_header(reader):
    """Reads one PROXY header (v1 or v2) off a backend connection; returns
    (version, bytes, source "ip:port" or None for LOCAL/UNKNOWN)."""
    first = reader.read_exact(5)
    if first == b"PROXY":
        line = first + reader.read_line(200)
        fields = line.decode("ascii").split()
        if fields[1] == "UNKNOWN":
            return 1, line, None
        return 1, line, "%s:%s" % (fields[2], fields[4])
    head = first + reader.read_exact(7)
    assert head == V2_SIGNATURE, head
    command_family = reader.read_exact(4)
    length = struct.unpack("!H", command_family[2:])[0]
    block = reader.read_exact(length)
    data = head + command_family + block
    if command_family[0] == 0x20:
        return 2, data, None
    assert command_family[:2] == b"\x21\x11", command_family
    source = socket.inet_ntoa(block[0:4])
    port = struct.unpack("!H", block[8:10])[0]
    return 2, data, "%s:%d" % (source, port)


def proxy_then_serve(headers):
    """A RawBackend handler: reads the PROXY header every connection must
    start with (kept in `headers`, one per connection), then answers each
    request 200, naming the header's source in X-Proxy-Source."""

    def handler(connection):
        version, data, source = read_proxy_header(connection.reader)
        with connection.backend.cond:
            headers.append((connection, version, data, source))
        while True:
            request = connection.read_request()
            if request is None:
                return
            connection.send(response_bytes(200, b"ok\n", [("X-Proxy-Source", source or "-")]))
    return handler


def client_from(ip, port):
    """A keep-alive connection to tandem from the loopback address `ip`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10),
                                    source_address=(ip, 0))
    return sock, HttpReader(sock)


class SendProxyTest(TandemTestCase):
    """Cluster send_proxy: each backend connection starts with a PROXY header
    naming the one client it serves; health checks send the local form."""

    def start(self, version, checks=False):
        self.headers = []
        self.backend = self.start_backend(proxy_then_serve(self.headers))
        extra = NO_CHECKS if not checks else (
            '[clusters.compute.health]\nkind = "http"\ninterval = "200ms"\n'
            'timeout = "150ms"\nrise = 1\n')
        return self.start_tandem(make_config([self.backend.address], extra=extra,
                                             cluster_opts={"send_proxy": version}))

    def exchange(self, sock, reader):
        sock.sendall(build_request("GET", "/", {"Host": "a"}))
        response = read_response(reader, "GET")
        self.assertEqual(response.status, 200)
        return response

    def test_v1_and_v2_headers_name_each_client_and_its_connection(self):
        for version in ("v1", "v2"):
            with self.subTest(version=version):
                tandem = self.start(version)
                clients = [client_from(ip, tandem.port) for ip in ("127.0.0.2", "127.0.0.3")]
                for sock, _ in clients:
                    self.addCleanup(sock.close)
                for _ in range(3):
                    for sock, reader in clients:
                        response = self.exchange(sock, reader)
                        self.assertEqual(response.header("x-proxy-source"),
                                         "%s:%d" % sock.getsockname())
                # One backend connection per client, each kept for its requests.
                self.assertEqual(len(self.headers), 2, self.headers)
                sock, _ = clients[0]
                _, _, data, _ = self.headers[0]
                if version == "v1":
                    self.assertEqual(data, ("PROXY TCP4 127.0.0.2 127.0.0.1 %d %d\r\n" % (
                        sock.getsockname()[1], tandem.port)).encode())
                else:
                    self.assertEqual(data[:16], V2_SIGNATURE + b"\x21\x11\x00\x0c")
                    self.assertEqual(len(data), 28)
                for connection, _, _, source in self.headers:
                    self.assertEqual(len(connection.requests), 3)
                    for request in connection.requests:
                        self.assertEqual(request.header_all("x-forwarded-for"),
                                         [source.rsplit(":", 1)[0]])
                tandem.stop()

    def test_pooled_connections_never_carry_another_clients_requests(self):
        tandem = self.start("v2")
        sources = ["127.0.4.%d" % i for i in range(1, 41)]
        answered = 0
        misattributed = []
        # Rounds of short keep-alive connections from 40 addresses: backend
        # connections released to the pool must only be taken again by their
        # own client connection.
        for round_ in range(5):
            clients = [client_from(ip, tandem.port) for ip in sources]
            for _ in range(2):
                for sock, reader in clients:
                    response = self.exchange(sock, reader)
                    answered += 1
                    expected = "%s:%d" % sock.getsockname()
                    if response.header("x-proxy-source") != expected:
                        misattributed.append((expected, response.header("x-proxy-source")))
            for sock, _ in clients:
                sock.close()
        self.assertEqual(answered, 400)
        self.assertEqual(misattributed, [])
        self.assertEqual(len(self.headers), 200)  # one per client connection

    def test_health_checks_send_the_local_form(self):
        for version, expected in (("v2", V2_SIGNATURE + b"\x20\x00\x00\x00"),
                                  ("v1", b"PROXY UNKNOWN\r\n")):
            with self.subTest(version=version):
                tandem = self.start(version, checks=True)
                self.backend.wait(lambda b: len(self.headers) >= 2, scaled(10),
                                  "two health checks")
                self.assertEqual(self.headers[0][2], expected)
                self.assertEqual(self.headers[0][3], None)
                self.assertEqual(self.headers[0][0].requests[0].target, "/healthz")
                tandem.stop()


class SendProxyTlsTest(TandemTestCase):
    """With tls = true the header goes before the ClientHello: tandem in front
    of a second tandem that requires the header on a TLS listener."""

    def test_a_tls_backend_reads_the_header_before_its_handshake(self):
        pki = Pki()
        self.addCleanup(pki.close)
        pki.ca("ca", "tandem test CA")
        pki.leaf("server", "ca", "localhost", dns=["localhost"], ips=["127.0.0.1"])
        backend = self.start_backend()
        inner = self.start_tandem(make_config(
            [backend.address], extra=NO_CHECKS,
            listener_opts={"proxy_protocol": True, "tls_cert": pki.cert("server"),
                           "tls_key": pki.key("server")}))
        outer = self.start_tandem(make_config(
            ["127.0.0.1:%d" % inner.port],
            extra='[clusters.compute.health]\nkind = "http"\ninterval = "200ms"\n'
                  'timeout = "150ms"\nrise = 1\n',
            cluster_opts={"send_proxy": "v2", "tls": True, "ca_file": pki.cert("ca"),
                          "sni": "localhost"}))
        # The outer tandem's checks (LOCAL) pass through the inner one.
        wait_until(lambda: any(b["state"] == "up" for c in outer.status_json()["clusters"]
                               for b in c["backends"]), scaled(10), "the inner tandem up")
        sock, reader = client_from("127.0.0.5", outer.port)
        self.addCleanup(sock.close)
        for _ in range(2):
            sock.sendall(build_request("GET", "/", {"Host": "a"}))
            self.assertEqual(read_response(reader, "GET").status, 200)
        requests = [r for r in backend.wait_requests(2) if r.target == "/"]
        # The inner tandem saw the client through the header, not the outer
        # tandem's own address.
        for request in requests:
            self.assertEqual(request.header_all("x-forwarded-for"), ["127.0.0.5, 127.0.0.5"])
        self.assertEqual(proxy_results(inner).get("proxied"), 1)


if __name__ == "__main__":
    unittest.main()
