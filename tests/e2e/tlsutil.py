"""TLS helpers for the end-to-end tests: certificates made at test time with the
`openssl` command, TLS clients built on Python's `ssl` module, `openssl s_client`
runs, and a small HTTPS backend that records the server name (SNI) and session
reuse it saw on every connection.

Everything listens on 127.0.0.1 with ephemeral ports; every wait is bounded.
"""

import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from harness import (Deadline, HttpReader, IncompleteMessage, ProtocolError, build_request,
                     read_request, read_response, response_bytes, scaled)

OPENSSL = shutil.which("openssl") or "openssl"


# ---- certificates ------------------------------------------------------------------


def openssl(args, cwd=None, timeout=None, input=None):
    """Runs the openssl command; raises with its output when it fails."""
    result = subprocess.run([OPENSSL] + list(args), cwd=cwd, capture_output=True, input=input,
                            timeout=timeout or scaled(30))
    if result.returncode != 0:
        raise RuntimeError("openssl %s failed (%d):\n%s%s" % (
            " ".join(args), result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace")))
    return result


class Pki:
    """A directory of CAs and certificates made with the openssl command.

    `ca(name)` makes a self-signed CA; `leaf(name, ca, ...)` a certificate it
    signs. Files are NAME.pem and NAME.key in `self.dir` (`cert(name)`,
    `key(name)`). Keys are ECDSA P-256, quicker to make and use than RSA,
    unless `rsa_bits` is given.
    """

    def __init__(self, directory=None):
        self.owned = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="tandem-tls-")
        self._serial = 1000

    def close(self):
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)

    def cert(self, name):
        return os.path.join(self.dir, name + ".pem")

    def key(self, name):
        return os.path.join(self.dir, name + ".key")

    def _new_key(self, name, rsa_bits):
        if rsa_bits:
            openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % rsa_bits,
                     "-out", self.key(name)])
        else:
            openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-out", self.key(name)])

    def ca(self, name, cn=None, rsa_bits=0):
        """A self-signed CA certificate NAME.pem with its key NAME.key."""
        self._new_key(name, rsa_bits)
        openssl(["req", "-x509", "-new", "-key", self.key(name), "-sha256", "-days", "3",
                 "-subj", "/O=tandem tests/CN=%s" % (cn or name),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-out", self.cert(name)])
        return self.cert(name), self.key(name)

    def leaf(self, name, ca, cn, dns=(), ips=(), client=False, rsa_bits=0):
        """A certificate NAME.pem signed by CA `ca` (a name given to ca()), for
        subject CN `cn` with subjectAltName DNS `dns` and IP `ips` (none when
        both are empty). `client` makes it a client certificate."""
        self._new_key(name, rsa_bits)
        csr = os.path.join(self.dir, name + ".csr")
        openssl(["req", "-new", "-key", self.key(name), "-subj", "/O=tandem tests/CN=%s" % cn,
                 "-out", csr])
        extensions = ["basicConstraints=critical,CA:FALSE",
                      "keyUsage=critical,digitalSignature,keyEncipherment",
                      "extendedKeyUsage=%s" % ("clientAuth" if client else "serverAuth")]
        names = ["DNS:" + d for d in dns] + ["IP:" + ip for ip in ips]
        if names:
            extensions.append("subjectAltName=" + ",".join(names))
        ext_file = os.path.join(self.dir, name + ".ext")
        with open(ext_file, "w") as f:
            f.write("\n".join(extensions) + "\n")
        self._serial += 1
        openssl(["x509", "-req", "-in", csr, "-CA", self.cert(ca), "-CAkey", self.key(ca),
                 "-set_serial", str(self._serial), "-sha256", "-days", "2",
                 "-extfile", ext_file, "-out", self.cert(name)])
        return self.cert(name), self.key(name)


# ---- clients ---------------------------------------------------------------------


def client_context(ca_file=None, verify=True, check_hostname=False, min_version=None,
                   max_version=None, alpn=None, ciphers=None, cert=None, key=None):
    """An ssl.SSLContext for a test client.

    With `verify` (default) the server's chain must lead to `ca_file`; the host
    name is checked only when `check_hostname`, so a test can see which
    certificate came for any name. Versions are ssl.TLSVersion values.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(check_hostname and verify)
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ca_file)
    else:
        context.verify_mode = ssl.CERT_NONE
    if min_version is not None:
        context.minimum_version = min_version
    if max_version is not None:
        context.maximum_version = max_version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if ciphers:
        context.set_ciphers(ciphers)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class TlsClient:
    """An HTTP/1.1 client connection over TLS to 127.0.0.1:`port`.

    `server_name` is sent as SNI (None sends none). The handshake completes in
    the constructor; `ssl.SSLError` or `OSError` from it reach the caller.
    """

    def __init__(self, port, context, server_name=None, session=None, timeout=None):
        self.timeout = timeout or scaled(10)
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_name, session=session)
        except BaseException:
            raw.close()
            raise
        self.reader = HttpReader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def peer_names(self):
        """(subject CN, [subjectAltName values]) of the verified server certificate."""
        return cert_names(self.sock.getpeercert())

    def get(self, target="/", headers=None, **kwargs):
        self.sock.sendall(build_request("GET", target, headers, **kwargs))
        return read_response(self.reader, "GET")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def cert_names(cert):
    """(CN, [SAN values]) from a certificate dict of ssl.getpeercert()."""
    cn = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    sans = [value for _, value in cert.get("subjectAltName", ())]
    return cn, sans


def served_cert(port, ca_file, server_name, **context_args):
    """(CN, SANs, TLS version) of the certificate the listener serves for
    `server_name` (None: no SNI)."""
    context = client_context(ca_file, **context_args)
    with TlsClient(port, context, server_name) as client:
        cn, sans = client.peer_names()
        return cn, sans, client.sock.version()


def s_client(port, args=(), input=b"", timeout=None):
    """Runs `openssl s_client -connect 127.0.0.1:PORT ARGS` with `input` on
    stdin; returns CompletedProcess (stdout and stderr as text)."""
    timeout = timeout or scaled(20)
    result = subprocess.run(
        [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port] + list(args),
        input=input, capture_output=True, timeout=timeout)
    result.stdout = result.stdout.decode(errors="replace")
    result.stderr = result.stderr.decode(errors="replace")
    return result


# ---- an HTTPS backend --------------------------------------------------------------


class TlsBackendConnection:
    """One TLS connection accepted by a TlsBackend: what the handshake said."""

    def __init__(self):
        self.server_name = None
        self.session_reused = None
        self.version = None
        self.alpn = None
        self.requests = []
        self.handshake_error = None


class TlsBackend:
    """An HTTPS/1.1 backend on 127.0.0.1 with certificate `cert`/`key`.

    Every request is answered 200 with the body "NAME sni=SERVER_NAME" (the
    name the client sent as SNI, or "-"), header X-Backend: NAME; connections
    are kept as HTTP/1.1 and 1.0 say. `connections` records each connection.
    """

    def __init__(self, name, cert, key):
        self.name = name
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])
        self.context.sni_callback = self._sni
        self._pending_names = {}
        self.cond = threading.Condition()
        self.connections = []
        self._threads = []
        self._stopping = False
        self._open = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="tls-backend-%d" % self.port)
        self._accept_thread.start()

    def _sni(self, ssl_sock, server_name, context):
        with self.cond:
            self._pending_names[id(ssl_sock)] = server_name
        return None

    def _accept_loop(self):
        while not self._stopping:
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            sock.settimeout(scaled(30))
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock):
        connection = TlsBackendConnection()
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            connection.handshake_error = e
            with self.cond:
                self.connections.append(connection)
                self.cond.notify_all()
            sock.close()
            return
        with self.cond:
            connection.server_name = self._pending_names.pop(id(tls), None)
            connection.session_reused = tls.session_reused
            connection.version = tls.version()
            connection.alpn = tls.selected_alpn_protocol()
            self.connections.append(connection)
            self._open.append(tls)
            self.cond.notify_all()
        reader = HttpReader(tls)
        try:
            while True:
                request = read_request(reader)
                if request is None:
                    return
                with self.cond:
                    connection.requests.append(request)
                    self.cond.notify_all()
                body = ("%s sni=%s\n" % (self.name, connection.server_name or "-")).encode()
                connection_header = (request.header("connection") or "").lower()
                close = connection_header == "close" or (
                    request.version == "HTTP/1.0" and connection_header != "keep-alive")
                headers = [("X-Backend", self.name)]
                if close:
                    headers.append(("Connection", "close"))
                tls.sendall(response_bytes(200, body, headers))
                if close:
                    return
        except (OSError, EOFError, IncompleteMessage, ProtocolError, ssl.SSLError):
            return
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handshakes(self):
        """The connections whose handshake completed."""
        with self.cond:
            return [c for c in self.connections if c.handshake_error is None]

    def requests(self):
        with self.cond:
            return [r for c in self.connections for r in c.requests]

    def wait(self, predicate, timeout=None, what="TLS backend state"):
        deadline = Deadline(timeout or scaled(10))
        with self.cond:
            while not predicate(self):
                left = deadline.end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out waiting for %s" % what)
                self.cond.wait(min(left, 0.1))

    def close(self):
        self._stopping = True
        self._accept_thread.join(scaled(5))
        self._listener.close()
        with self.cond:
            open_sockets = list(self._open)
        for tls in open_sockets:
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(scaled(5))
