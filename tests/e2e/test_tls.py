"""TLS, as issue 6 and DESIGN.md's "Upstream TLS" state it: listeners terminate
TLS 1.2 and 1.3 only, pick a certificate by SNI (else the first), select ALPN
http/1.1, resume sessions, verify client certificates with `client_ca`, and
tell backends the client used https; clusters speak TLS to backends with
verification (`ca_file`, `sni`, `verify_name`, `verify`), health checks
included; certificates reload without dropping open connections, and a bad
pair is a `--check` error and a rejected reload. Handshake failures are
counted by reason and never take the listener down.

Certificates are made at test time with the openssl command (tlsutil.Pki).
"""

import os
import re
import shutil
import ssl
import subprocess
import time
import unittest
import warnings
import xml.etree.ElementTree as ElementTree

from harness import (Client, IncompleteMessage, TandemTestCase, curl, make_config, require_tool,
                     run_tandem, scaled, toml_table, wait_until, write_file)
from ops import backend_status, health_table, wait_state
from tlsutil import (Pki, TlsBackend, TlsClient, client_context, served_cert, s_client)

PKI = None

REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: default.example.test\r\nConnection: close\r\n\r\n"


def setUpModule():
    """One PKI for the module: two CAs and the certificates every test uses."""
    global PKI
    PKI = Pki()
    PKI.ca("ca", "tandem test CA")
    PKI.ca("other", "unknown test CA")
    PKI.leaf("default", "ca", "default.example.test",
             dns=["default.example.test", "localhost"], ips=["127.0.0.1"])
    PKI.leaf("default2", "ca", "default-v2.example.test",
             dns=["default.example.test", "localhost"], ips=["127.0.0.1"])
    PKI.leaf("api", "ca", "api.example.test", dns=["api.example.test"])
    PKI.leaf("wild", "ca", "apps.example.test", dns=["*.apps.example.test"])
    PKI.leaf("legacy", "ca", "legacy.example.test")  # no subjectAltName: CN is the name
    PKI.leaf("scan", "ca", "scan.example.test", dns=["scan.example.test"], ips=["127.0.0.1"],
             rsa_bits=2048)
    PKI.leaf("backend", "ca", "backend.example.test", dns=["backend.example.test"],
             ips=["127.0.0.1"])
    PKI.leaf("rogue", "other", "backend.example.test", dns=["backend.example.test"],
             ips=["127.0.0.1"])
    PKI.leaf("client", "ca", "client.example.test", client=True)
    PKI.leaf("client-other", "other", "client.example.test", client=True)


def tearDownModule():
    if PKI is not None:
        PKI.close()


def cert_pair(name):
    return {"tls_cert": PKI.cert(name), "tls_key": PKI.key(name)}


def certificates_tables(listener, names):
    """[[listeners.LISTENER.certificates]] entries, in order."""
    return "".join(toml_table("[listeners.%s.certificates]" % listener,
                              {"cert": PKI.cert(n), "key": PKI.key(n)}) for n in names)


def tls_listener(name, cluster="compute", **options):
    values = {"listen": "127.0.0.1:0", "cluster": cluster}
    values.update(options)
    return toml_table("listeners." + name, values)


def handshake_counts(tandem, listener="web"):
    """{reason: count} of tandem_tls_handshake_failures_total, plus "ok" for
    tandem_tls_handshakes_total, for one listener."""
    counts = {}
    for key, value in tandem.metrics().items():
        match = re.match(r'tandem_tls_handshake_failures_total\{(.*)\}$', key)
        if match and 'listener="%s"' % listener in match.group(1):
            reason = re.search(r'reason="([^"]*)"', match.group(1)).group(1)
            counts[reason] = value
        elif key == 'tandem_tls_handshakes_total{listener="%s"}' % listener:
            counts["ok"] = value
    return counts


def wait_counted(tandem, before, reason, at_least=1, listener="web"):
    """Waits until the failure count for `reason` grew by `at_least`."""
    def grown():
        now = handshake_counts(tandem, listener)
        return now if now.get(reason, 0) - before.get(reason, 0) >= at_least else None
    try:
        return wait_until(grown, scaled(5), "tls handshake failure %s counted" % reason)
    except TimeoutError:
        raise AssertionError("reason %s not counted: before %s, now %s" % (
            reason, before, handshake_counts(tandem, listener))) from None


def tls_get(port, server_name="default.example.test", **context_args):
    """One GET / over a new TLS connection, verified against the test CA."""
    context_args.setdefault("ca_file", PKI.cert("ca"))
    with TlsClient(port, client_context(**context_args), server_name) as client:
        return client.get("/", [("Connection", "close")], host=server_name or "localhost")


def request_fails(port, context, server_name="default.example.test"):
    """The error a TLS request ends in (handshake, alert after it, or EOF), or
    None when it got a response."""
    try:
        with TlsClient(port, context, server_name) as client:
            client.get("/", [("Connection", "close")])
    except (ssl.SSLError, OSError, EOFError, IncompleteMessage) as e:
        return e
    return None


class ListenerTlsTest(TandemTestCase):
    """One tandem with several TLS listeners in front of a recording backend:
      web     four certificates chosen by SNI (the first is the default)
      tls13   tls_min_version = "1.3"
      narrow  tls_ciphers = one TLS 1.2 suite
      mtls    client_ca
      scan    an RSA certificate, for sslscan
      h1only  protocols = ["http/1.1"]: ALPN never says h2
    """

    @classmethod
    def setUpClass(cls):
        cls.backend = cls.start_class_backend()
        extra = certificates_tables("web", ["default", "api", "wild", "legacy"])
        extra += tls_listener("tls13", tls_min_version="1.3", **cert_pair("default"))
        extra += tls_listener("narrow", tls_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384",
                              **cert_pair("default"))
        extra += tls_listener("mtls", client_ca=PKI.cert("ca"), **cert_pair("default"))
        extra += tls_listener("scan", **cert_pair("scan"))
        extra += tls_listener("h1only", protocols=["http/1.1"], **cert_pair("default"))
        cls.tandem = cls.start_class_tandem(make_config([cls.backend.address], extra=extra))
        cls.port = cls.tandem.port

    def setUp(self):
        self.assertTrue(self.tandem.running(), self.tandem.output()[-5000:])

    def curl_https(self, name, args=(), port=None):
        url = "https://%s:%d/" % (name, port or self.port)
        return curl(["--resolve", "%s:%d:127.0.0.1" % (name, port or self.port),
                     "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}"] +
                    list(args) + [url])

    def test_curl_with_the_ca_file_gets_the_backend_answer(self):
        result = self.curl_https("default.example.test", ["--cacert", PKI.cert("ca")])
        self.assertEqual(result.returncode, 0, result.stderr)
        body, _, summary = result.stdout.decode().rpartition("\n")
        self.assertEqual(summary, "200 2 0")  # curl takes h2 by ALPN
        self.assertEqual(body, "ok\n")
        # The test CA is not in the system store: without --cacert curl refuses.
        refused = self.curl_https("default.example.test")
        self.assertEqual(refused.returncode, 60, refused.stderr)

    def test_sni_picks_the_certificate_whose_names_match(self):
        ca = PKI.cert("ca")
        cases = [
            ("api.example.test", "api.example.test"),
            ("API.Example.TEST", "api.example.test"),        # names are case-insensitive
            ("x.apps.example.test", "apps.example.test"),    # wildcard, one label
            ("legacy.example.test", "legacy.example.test"),  # CN when there is no SAN
            ("default.example.test", "default.example.test"),
        ]
        for name, cn in cases:
            with self.subTest(server_name=name):
                self.assertEqual(served_cert(self.port, ca, name)[0], cn)
        # The chosen certificate also passes a client's own host name check.
        with TlsClient(self.port, client_context(ca, check_hostname=True),
                       "api.example.test") as client:
            self.assertEqual(client.peer_names(), ("api.example.test", ["api.example.test"]))
            self.assertEqual(client.get("/", host="api.example.test").status, 200)
        # openssl s_client agrees on what is served.
        result = s_client(self.port, ["-servername", "x.apps.example.test", "-CAfile", ca],
                          input=REQUEST_CLOSE)
        self.assertIn("subject=O = tandem tests, CN = apps.example.test", result.stdout)
        self.assertIn("Verify return code: 0 (ok)", result.stdout)

    def test_default_certificate_when_no_name_matches(self):
        ca = PKI.cert("ca")
        for name in ("unknown.example.test", "a.b.apps.example.test", "apps.example.test",
                     "example.test", None):
            with self.subTest(server_name=name):
                cn, sans, _ = served_cert(self.port, ca, name)
                self.assertEqual(cn, "default.example.test")
                self.assertIn("default.example.test", sans)
        self.assertEqual(tls_get(self.port, None).status, 200)

    def test_tls_1_0_and_1_1_are_refused_and_counted(self):
        before = handshake_counts(self.tandem)
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(version=flag):
                # SECLEVEL=0: OpenSSL 3 itself would not offer TLS < 1.2 otherwise.
                result = s_client(self.port, [flag, "-cipher", "DEFAULT@SECLEVEL=0",
                                              "-servername", "default.example.test"],
                                  input=REQUEST_CLOSE)
                self.assertNotEqual(result.returncode, 0, result.stdout)
                self.assertIn("alert protocol version", result.stderr)
                self.assertNotIn("HTTP/1.1", result.stdout)
        wait_counted(self.tandem, before, "protocol_version", 2)
        # Python's client capped at TLS 1.1 fails too.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1, TLSv1_1
            old = client_context(PKI.cert("ca"), min_version=ssl.TLSVersion.TLSv1,
                                 max_version=ssl.TLSVersion.TLSv1_1,
                                 ciphers="DEFAULT@SECLEVEL=0")
        self.assertIsNotNone(request_fails(self.port, old))
        # curl with --tls-max 1.1 is refused as well.
        result = self.curl_https("default.example.test",
                                 ["--cacert", PKI.cert("ca"), "--tlsv1.0", "--tls-max", "1.1",
                                  "--ciphers", "DEFAULT@SECLEVEL=0"])
        self.assertNotEqual(result.returncode, 0, result.stdout)
        wait_counted(self.tandem, before, "protocol_version", 4)
        self.assertEqual(tls_get(self.port).status, 200)

    def test_plain_http_on_the_tls_port_is_closed_and_counted(self):
        before = handshake_counts(self.tandem)
        with Client(self.port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: default.example.test\r\n\r\n")
            # Closed (a reset, as the request is left unread) with no HTTP answer.
            self.assertNotIn(b"HTTP/", client.read_until_close())
        # curl speaking http:// to the TLS port gets no HTTP answer.
        result = curl(["-w", "%{http_code}", "http://127.0.0.1:%d/" % self.port])
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertEqual(result.stdout.decode(), "000")
        wait_counted(self.tandem, before, "plain_http", 2)
        self.assertTrue(self.tandem.running(), self.tandem.output()[-5000:])
        self.assertEqual(tls_get(self.port).status, 200)

    def test_a_client_leaving_mid_handshake_is_counted_as_unexpected_eof(self):
        before = handshake_counts(self.tandem)
        with Client(self.port) as client:
            client.send(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        wait_counted(self.tandem, before, "unexpected_eof", 1)
        self.assertEqual(tls_get(self.port).status, 200)

    def test_tls_1_3_and_1_2_both_serve_requests(self):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                context = client_context(PKI.cert("ca"), min_version=version, max_version=version)
                with TlsClient(self.port, context, "default.example.test") as client:
                    self.assertEqual(client.sock.version(), version.name.replace("_", "."))
                    name, protocol, bits = client.sock.cipher()
                    if version == ssl.TLSVersion.TLSv1_2:
                        # The default list: forward secret AEAD suites only.
                        self.assertRegex(name, r"^ECDHE-(ECDSA|RSA)-(AES\d+-GCM|CHACHA20)")
                    self.assertGreaterEqual(bits, 128)
                    for _ in range(2):  # keep-alive over TLS
                        response = client.get("/", host="default.example.test")
                        self.assertEqual(response.status, 200)
                        self.assertEqual(response.body, b"ok\n")

    def test_tls_min_version_1_3_refuses_tls_1_2(self):
        port = self.tandem.ports["tls13"]
        before = handshake_counts(self.tandem, "tls13")
        tls12 = client_context(PKI.cert("ca"), max_version=ssl.TLSVersion.TLSv1_2)
        self.assertIsNotNone(request_fails(port, tls12))
        wait_counted(self.tandem, before, "protocol_version", 1, "tls13")
        self.assertEqual(tls_get(port).status, 200)
        self.assertEqual(served_cert(port, PKI.cert("ca"), "default.example.test")[2], "TLSv1.3")

    def test_tls_ciphers_limits_the_tls_1_2_suites(self):
        port = self.tandem.ports["narrow"]
        before = handshake_counts(self.tandem, "narrow")
        tls12 = dict(max_version=ssl.TLSVersion.TLSv1_2)
        other = client_context(PKI.cert("ca"), ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", **tls12)
        self.assertIsNotNone(request_fails(port, other))
        wait_counted(self.tandem, before, "no_shared_cipher", 1, "narrow")
        listed = client_context(PKI.cert("ca"), **tls12)
        with TlsClient(port, listed, "default.example.test") as client:
            self.assertEqual(client.sock.cipher()[0], "ECDHE-ECDSA-AES256-GCM-SHA384")
            self.assertEqual(client.get("/").status, 200)

    def test_alpn_prefers_h2_and_an_http11_client_still_connects(self):
        # h2 is chosen when offered (docs/http2.md), HTTP/1.1 otherwise.
        offers = {("h2", "http/1.1"): "h2", ("http/1.1",): "http/1.1", (): None}
        for offer, selected in offers.items():
            with self.subTest(offer=offer):
                context = client_context(PKI.cert("ca"), alpn=offer or None)
                with TlsClient(self.port, context, "default.example.test") as client:
                    self.assertEqual(client.sock.selected_alpn_protocol(), selected)
                    if selected != "h2":
                        self.assertEqual(client.get("/").status, 200)
        result = s_client(self.port, ["-alpn", "h2,http/1.1",
                                      "-servername", "default.example.test"],
                          input=REQUEST_CLOSE)
        self.assertIn("ALPN protocol: h2", result.stdout)
        result = s_client(self.port, ["-alpn", "http/1.1",
                                      "-servername", "default.example.test"],
                          input=REQUEST_CLOSE)
        self.assertIn("ALPN protocol: http/1.1", result.stdout)

    def test_alpn_offers_only_http11_when_the_listener_serves_only_it(self):
        port = self.tandem.ports["h1only"]
        # An h2-only client: the handshake completes without ALPN (as nginx
        # does); it then speaks HTTP/1.1 or leaves.
        result = s_client(port, ["-alpn", "h2", "-servername", "default.example.test"],
                          input=REQUEST_CLOSE)
        self.assertIn("No ALPN negotiated", result.stdout)
        result = s_client(port, ["-alpn", "h2,http/1.1",
                                             "-servername", "default.example.test"],
                          input=REQUEST_CLOSE)
        self.assertIn("ALPN protocol: http/1.1", result.stdout)

    def test_forwarded_proto_https_reaches_the_backend(self):
        start = len(self.backend.requests())
        response = tls_get(self.port, "default.example.test")
        self.assertEqual(response.status, 200)
        with TlsClient(self.port, client_context(PKI.cert("ca")), "api.example.test") as client:
            # A client's own value is replaced, not passed on.
            response = client.get("/", [("X-Forwarded-Proto", "http"),
                                        ("Forwarded", "for=192.0.2.1;proto=http")],
                                  host="api.example.test")
            self.assertEqual(response.status, 200)
        requests = self.backend.wait_requests(start + 2)[start:]
        for request in requests:
            self.assertEqual(request.header_all("x-forwarded-proto"), ["https"], request)
            forwarded = ", ".join(request.header_all("forwarded"))
            self.assertRegex(forwarded, r"for=\"?127\.0\.0\.1\"?;proto=https$", request)
        self.assertEqual(requests[1].header("host"), "api.example.test")

    def test_client_certificate_is_required_with_client_ca(self):
        port = self.tandem.ports["mtls"]
        before = handshake_counts(self.tandem, "mtls")
        cacert = ["--cacert", PKI.cert("ca")]
        # No certificate: the handshake fails (TLS 1.3: at the first read).
        result = self.curl_https("default.example.test", cacert, port)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertNotIn(b"\n200 ", result.stdout)
        # A certificate from a CA not in client_ca fails too.
        other = client_context(PKI.cert("ca"), cert=PKI.cert("client-other"),
                               key=PKI.key("client-other"))
        self.assertIsNotNone(request_fails(port, other))
        wait_counted(self.tandem, before, "bad_client_certificate", 2, "mtls")
        # A certificate signed by client_ca: 200, with curl and with Python, 1.2 and 1.3.
        result = self.curl_https("default.example.test", cacert + [
            "--cert", PKI.cert("client"), "--key", PKI.key("client")], port)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.decode().endswith("\n200 2 0"), result.stdout)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version.name):
                signed = client_context(PKI.cert("ca"), cert=PKI.cert("client"),
                                        key=PKI.key("client"), max_version=version)
                with TlsClient(port, signed, "default.example.test") as client:
                    self.assertEqual(client.get("/").status, 200)
        # The default listener asks for no certificate.
        self.assertEqual(tls_get(self.port).status, 200)

    def test_sessions_resume_with_tickets_and_the_session_cache(self):
        sessions = os.path.join(PKI.dir, "sessions")
        os.makedirs(sessions, exist_ok=True)
        cases = [("TLSv1.3", ["-tls1_3"], "default.example.test"),
                 ("TLSv1.3", ["-tls1_3"], "api.example.test"),
                 ("TLSv1.2", ["-tls1_2"], "default.example.test"),
                 ("TLSv1.2", ["-tls1_2", "-no_ticket"], "api.example.test")]
        for index, (version, flags, name) in enumerate(cases):
            with self.subTest(version=version, flags=flags, server_name=name):
                path = os.path.join(sessions, "s%d.pem" % index)
                common = flags + ["-servername", name, "-CAfile", PKI.cert("ca"), "-ign_eof"]
                request = REQUEST_CLOSE.replace(b"default.example.test", name.encode())
                first = s_client(self.port, common + ["-sess_out", path], input=request)
                self.assertIn("New, %s" % version, first.stdout, first.stderr)
                self.assertIn("HTTP/1.1 200", first.stdout)
                self.assertTrue(os.path.getsize(path) > 0)
                second = s_client(self.port, common + ["-sess_in", path], input=request)
                self.assertIn("Reused, %s" % version, second.stdout, second.stderr)
                self.assertIn("HTTP/1.1 200", second.stdout)
        # Python's client resumes too, and a resumed session still serves.
        context = client_context(PKI.cert("ca"), max_version=ssl.TLSVersion.TLSv1_2)
        with TlsClient(self.port, context, "default.example.test") as client:
            self.assertEqual(client.get("/").status, 200)
            session = client.sock.session
        with TlsClient(self.port, context, "default.example.test", session=session) as client:
            self.assertTrue(client.sock.session_reused)
            self.assertEqual(client.get("/").status, 200)

    def test_sslscan_finds_no_weak_protocol_or_cipher(self):
        require_tool("sslscan", "sslscan")
        port = self.tandem.ports["scan"]
        for listener, port, name, key_type in (("scan", port, "scan.example.test", "RSA"),
                                               ("web", self.port, "default.example.test", "EC")):
            with self.subTest(listener=listener, key=key_type):
                xml_path = os.path.join(PKI.dir, "sslscan-%s.xml" % listener)
                result = subprocess.run(
                    ["sslscan", "--no-colour", "--sni-name=" + name, "--xml=" + xml_path,
                     "127.0.0.1:%d" % port], capture_output=True, timeout=scaled(60))
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
                test = ElementTree.parse(xml_path).getroot().find("ssltest")
                self.assertIsNotNone(test, result.stdout)
                protocols = {(p.get("type"), p.get("version")): p.get("enabled")
                             for p in test.findall("protocol")}
                self.assertEqual(protocols, {("ssl", "2"): "0", ("ssl", "3"): "0",
                                             ("tls", "1.0"): "0", ("tls", "1.1"): "0",
                                             ("tls", "1.2"): "1", ("tls", "1.3"): "1"})
                ciphers = test.findall("cipher")
                self.assertTrue(any(c.get("sslversion") == "TLSv1.2" for c in ciphers))
                self.assertTrue(any(c.get("sslversion") == "TLSv1.3" for c in ciphers))
                for cipher in ciphers:
                    text = "%s %s" % (cipher.get("sslversion"), cipher.get("cipher"))
                    self.assertIn(cipher.get("strength"), ("strong", "acceptable"), text)
                    self.assertGreaterEqual(int(cipher.get("bits")), 128, text)
                    self.assertNotRegex(cipher.get("cipher"),
                                        r"NULL|EXP|RC4|DES|MD5|anon|ADH|AECDH|PSK|SRP|CBC|SHA$",
                                        text)
                    if cipher.get("sslversion") == "TLSv1.2":
                        # Forward secret and AEAD.
                        self.assertRegex(cipher.get("cipher"),
                                         r"^(ECDHE|DHE)-(ECDSA|RSA)-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$",
                                         text)
                renegotiation = test.find("renegotiation")
                if renegotiation is not None and renegotiation.get("supported") == "1":
                    self.assertEqual(renegotiation.get("secure"), "1")
                for heartbleed in test.findall("heartbleed"):
                    self.assertEqual(heartbleed.get("vulnerable"), "0")
                compression = test.find("compression")
                if compression is not None:
                    self.assertEqual(compression.get("supported"), "0")
                cert = test.find("certificates/certificate/subject")
                self.assertEqual(cert.text, name)
        # Scanning is a storm of failed handshakes; the listener keeps serving.
        self.assertTrue(self.tandem.running(), self.tandem.output()[-5000:])
        self.assertEqual(tls_get(self.port).status, 200)


class UpstreamTlsReloadTest(TandemTestCase):
    """A reload that makes backend verification stricter applies to pooled
    connections too: none made under the old settings is used again."""

    def test_a_pooled_connection_made_without_verification_is_not_reused_after_verify_is_on(self):
        rogue = TlsBackend("rogue", PKI.cert("rogue"), PKI.key("rogue"))
        self.addCleanup(rogue.close)

        def config(verify):
            options = {"tls": True, "retries": 0, "sni": "backend.example.test",
                       "verify": verify}
            if verify:
                options["ca_file"] = PKI.cert("ca")
            return make_config([rogue.address], cluster_opts=options,
                               extra='[clusters.compute.health]\nkind = "none"\n')

        tandem = self.start_tandem(config(False))
        with Client(tandem.port) as client:
            self.assertEqual(client.get("/", {"Host": "a"}).status, 200)
        self.assertTrue(tandem.reload(config(True)))
        with Client(tandem.port) as client:
            response = client.get("/", {"Host": "a"})
        self.assertTandemBody(response, 502, ["TLS handshake with backend failed"])


class UpstreamTlsTest(TandemTestCase):
    """Clusters with `tls = true` in front of Python HTTPS backends: "good"
    has a certificate of the test CA for backend.example.test and 127.0.0.1,
    "rogue" the same names from a CA tandem does not know. Each case is a
    plain listener in front of a cluster of its own."""

    CASES = {
        # name: (backend, cluster options)
        "good": ("good", {"ca_file": "ca", "sni": "backend.example.test"}),
        "by_ip": ("good", {"ca_file": "ca"}),
        "wrong_name": ("good", {"ca_file": "ca", "sni": "backend.example.test",
                                "verify_name": "wrong.example.test"}),
        "unknown_ca": ("rogue", {"ca_file": "ca", "sni": "backend.example.test"}),
        "system_store": ("good", {"sni": "backend.example.test"}),
        "no_verify": ("rogue", {"verify": False, "sni": "backend.example.test"}),
        "fresh": ("good", {"ca_file": "ca", "sni": "backend.example.test",
                           "max_idle_connections": 0}),
    }

    @classmethod
    def setUpClass(cls):
        cls.good = TlsBackend("good", PKI.cert("backend"), PKI.key("backend"))
        cls.addClassCleanup(cls.good.close)
        cls.rogue = TlsBackend("rogue", PKI.cert("rogue"), PKI.key("rogue"))
        cls.addClassCleanup(cls.rogue.close)
        extra = ""
        for name, (backend, options) in cls.CASES.items():
            values = {"tls": True, "retries": 0, "connect_timeout": "2s"}
            for key, value in options.items():
                values[key] = PKI.cert(value) if key == "ca_file" else value
            extra += tls_listener(name, cluster=name)
            extra += toml_table("clusters." + name, values)
            extra += toml_table("[clusters.%s.backends]" % name,
                                {"address": getattr(cls, backend).address})
        cls.tandem = cls.start_class_tandem(make_config([cls.good.address], extra=extra))

    def get(self, case, target="/"):
        with Client(self.tandem.ports[case]) as client:
            return client.get(target, [("Connection", "close")])

    def test_good_ca_and_name_answer_200_over_tls(self):
        # The backend serves every case here, and a handshake another case's
        # test aborted may be recorded late: find this request's connection by
        # its target.
        target = "/good-%d" % time.monotonic_ns()
        response = self.get("good", target)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, b"good sni=backend.example.test\n")
        connection = next(c for c in self.good.handshakes()
                          if any(r.target == target for r in c.requests))
        self.assertIn(connection.version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(connection.alpn, "http/1.1")
        self.assertEqual(connection.requests[0].header("x-forwarded-proto"), "http")

    def test_an_ip_backend_is_verified_by_ip_and_gets_no_sni(self):
        response = self.get("by_ip")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, b"good sni=-\n")

    def test_a_wrong_verify_name_answers_502_with_the_reason(self):
        response = self.get("wrong_name")
        self.assertTandemBody(response, 502, ["TLS handshake with backend failed",
                                              "certificate verify failed"])
        self.assertRegex(response.body.decode(), r"(?i)hostname mismatch")

    def test_an_unknown_ca_answers_502(self):
        for case in ("unknown_ca", "system_store"):
            with self.subTest(case=case):
                response = self.get(case)
                self.assertTandemBody(response, 502, ["TLS handshake with backend failed",
                                                      "certificate verify failed"])
                self.assertRegex(response.body.decode(), r"local issuer|self.signed")

    def test_verify_false_accepts_any_certificate(self):
        response = self.get("no_verify")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, b"rogue sni=backend.example.test\n")

    def test_sessions_to_a_backend_are_resumed(self):
        # Each connection to a backend offers the session the last one got.
        start = len(self.good.handshakes())
        for _ in range(3):
            self.assertEqual(self.get("fresh").status, 200)
        handshakes = self.good.handshakes()[start:]
        # max_idle_connections = 0: a connection per request, the later ones resumed.
        self.assertEqual(len(handshakes), 3, [(c.server_name, c.session_reused) for c in handshakes])
        self.assertEqual([c.session_reused for c in handshakes], [False, True, True])


class UpstreamTlsHealthTest(TandemTestCase):

    def test_health_checks_over_tls_mark_a_backend_with_a_bad_certificate_down(self):
        good = TlsBackend("good", PKI.cert("backend"), PKI.key("backend"))
        self.addCleanup(good.close)
        rogue = TlsBackend("rogue", PKI.cert("rogue"), PKI.key("rogue"))
        self.addCleanup(rogue.close)
        tandem = self.start_tandem(make_config(
            [good.address, rogue.address],
            cluster_opts={"tls": True, "ca_file": PKI.cert("ca"), "sni": "backend.example.test",
                          "retries": 0},
            extra=health_table(rise=1, fall=1)))
        wait_state(tandem, good.address, "up")
        down = wait_state(tandem, rogue.address, "down")
        reasons = " ".join(t["reason"] for t in down["transitions"])
        self.assertRegex(reasons, r"(?i)tls|certificate", down)
        # The checks reached the good backend over TLS, with the cluster's SNI.
        good.wait(lambda b: any(r.target == "/healthz" for r in b.requests()),
                  what="a health check at the good backend")
        checks = [c for c in good.handshakes()
                  if any(r.target == "/healthz" for r in c.requests)]
        self.assertEqual({c.server_name for c in checks}, {"backend.example.test"})
        self.assertFalse(any(r.target == "/healthz" for r in rogue.requests()))
        # Traffic goes to the good backend only.
        for _ in range(6):
            with Client(tandem.port) as client:
                response = client.get("/", [("Connection", "close")])
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.header("x-backend"), "good")
        self.assertEqual(backend_status(tandem.status_json(), rogue.address)["state"], "down")


class TlsReloadTest(TandemTestCase):

    def config(self, cert="default", key=None, backend=None):
        return make_config([backend], listener_opts={"tls_cert": PKI.cert(cert),
                                                     "tls_key": PKI.key(key or cert)})

    def test_reload_swaps_the_certificate_and_keeps_open_connections(self):
        backend = self.start_backend()
        tandem = self.start_tandem(self.config("default", backend=backend.address))
        context = client_context(PKI.cert("ca"))
        old = TlsClient(tandem.port, context, "default.example.test")
        self.addCleanup(old.close)
        self.assertEqual(old.peer_names()[0], "default.example.test")
        self.assertEqual(old.get("/").status, 200)
        before = handshake_counts(tandem)

        self.assertTrue(tandem.reload(self.config("default2", backend=backend.address)))
        # The open keep-alive connection goes on, on the certificate it began with.
        for _ in range(3):
            response = old.get("/")
            self.assertEqual(response.status, 200, response)
        self.assertEqual(old.peer_names()[0], "default.example.test")
        # New connections see the new certificate, on the same port.
        cn, sans, _ = served_cert(tandem.port, PKI.cert("ca"), "default.example.test")
        self.assertEqual(cn, "default-v2.example.test")
        self.assertEqual(tls_get(tandem.port).status, 200)
        self.assertEqual(old.get("/").status, 200)
        after = handshake_counts(tandem)
        self.assertEqual({k: v for k, v in after.items() if k != "ok"},
                         {k: v for k, v in before.items() if k != "ok"})

    def test_renewed_files_at_the_same_path_are_served_after_sighup(self):
        live = os.path.join(PKI.dir, "live")
        os.makedirs(live, exist_ok=True)
        cert, key = os.path.join(live, "tls.pem"), os.path.join(live, "tls.key")
        shutil.copyfile(PKI.cert("default"), cert)
        shutil.copyfile(PKI.key("default"), key)
        backend = self.start_backend()
        text = make_config([backend.address], listener_opts={"tls_cert": cert, "tls_key": key})
        tandem = self.start_tandem(text)
        self.assertEqual(served_cert(tandem.port, PKI.cert("ca"), None)[0], "default.example.test")
        # As a renewal does: the new pair replaces the files (each by a rename).
        with open(PKI.cert("default2")) as f:
            write_file(cert, f.read())
        with open(PKI.key("default2")) as f:
            write_file(key, f.read())
        self.assertTrue(tandem.reload(text))
        self.assertEqual(served_cert(tandem.port, PKI.cert("ca"), None)[0],
                         "default-v2.example.test")
        self.assertEqual(tls_get(tandem.port).status, 200)

    def test_a_mismatched_pair_is_a_check_error_and_a_rejected_reload(self):
        backend = self.start_backend()
        tandem = self.start_tandem(self.config("default", backend=backend.address))
        context = client_context(PKI.cert("ca"))
        old = TlsClient(tandem.port, context, "default.example.test")
        self.addCleanup(old.close)
        self.assertEqual(old.get("/").status, 200)

        # api.pem with default.key: --check names the file, line and column.
        bad = self.config("api", key="default", backend=backend.address)
        bad_path = os.path.join(PKI.dir, "mismatched.toml")
        write_file(bad_path, bad)
        result = run_tandem(["-c", bad_path, "--check"])
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        lines = bad.splitlines()
        cert_line = next(i for i, l in enumerate(lines, 1) if l.startswith("tls_cert"))
        key_line = next(i for i, l in enumerate(lines, 1) if l.startswith("tls_key"))
        match = re.search(re.escape(bad_path) + r":(\d+):(\d+): .*does not match", output)
        self.assertIsNotNone(match, output)
        self.assertIn(int(match.group(1)), (cert_line, key_line), output)
        # A file that is no certificate at all is an error too.
        garbage = os.path.join(PKI.dir, "garbage.pem")
        write_file(garbage, "not a certificate\n")
        junk = make_config([backend.address], listener_opts={"tls_cert": garbage,
                                                             "tls_key": PKI.key("default")})
        junk_path = os.path.join(PKI.dir, "garbage.toml")
        write_file(junk_path, junk)
        result = run_tandem(["-c", junk_path, "--check"])
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertRegex(output, re.escape(junk_path) + r":\d+:\d+: .*certificate")
        # The second of several certificates mismatched: the same.
        several = make_config([backend.address]) + certificates_tables("web", ["default"]) + \
            toml_table("[listeners.web.certificates]",
                       {"cert": PKI.cert("api"), "key": PKI.key("wild")})
        several_path = os.path.join(PKI.dir, "several.toml")
        write_file(several_path, several)
        result = run_tandem(["-c", several_path, "--check"])
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertRegex(output, re.escape(several_path) + r":\d+:\d+: .*does not match")

        # The same file as a reload is rejected; the old certificate keeps serving.
        self.assertFalse(tandem.reload(bad))
        self.assertEqual(old.get("/").status, 200)
        cn, _, _ = served_cert(tandem.port, PKI.cert("ca"), "api.example.test")
        self.assertEqual(cn, "default.example.test")
        self.assertEqual(tls_get(tandem.port).status, 200)
        self.assertEqual(tandem.metrics().get("tandem_config_last_reload_success"), 0.0)


if __name__ == "__main__":
    unittest.main()
