"""A scripted authoritative DNS server for the end-to-end tests of DNS discovery.

DnsServer runs on a thread inside the test process and answers on 127.0.0.1, one
free port, over UDP and TCP (RFC 1035 section 4.2.2 framing: a 2-byte length
before each message, several queries per connection). The test sets the records
(A, AAAA, SRV) and how the server behaves (answer, never answer, SERVFAIL,
NXDOMAIN, REFUSED), and counts the queries it saw.

Like a server without EDNS, it never sends more than 512 bytes over UDP: a longer
answer goes as its header with TC set and no records, so the client asks again
over TCP, where the whole answer goes.

Uses the standard library and dnslib (Debian package python3-dnslib).

    with DnsServer() as dns:
        dns.set_a("workers.test.", ["127.0.0.2", "127.0.0.3"], ttl=1)
        ... a config with servers = [dns.address] ...
        dns.set_mode("timeout")
        dns.queries("workers.test.", "A", transport="udp")
"""

import selectors
import socket
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord

MODES = ("answer", "timeout", "servfail", "nxdomain", "refused")

# The largest UDP message a client without EDNS accepts (RFC 1035 section 2.3.4).
UDP_LIMIT = 512

# A TCP connection that sends more than this without a whole message is dropped.
_TCP_BUFFER_LIMIT = 2 + 65535


def normalize(name):
    """A name as the server keys it: lower case, without the trailing dot."""
    return str(name).lower().rstrip(".")


class _TcpConnection:
    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()


class DnsServer:
    """An authoritative DNS server on 127.0.0.1:`port`, UDP and TCP, on a thread.

    `.address` is "127.0.0.1:PORT". A name that is not set answers NXDOMAIN; a
    set name asked for a type it has no records of answers NOERROR, empty.
    Names are matched case-insensitively; the trailing dot is optional.
    """

    def __init__(self, host="127.0.0.1"):
        self.host = host
        self._lock = threading.Lock()
        self._records = {}  # normalized name -> {"A": (ttl, [rdata...]), ...}
        self._mode = "answer"
        self._log = []  # (monotonic time, normalized name, qtype, transport)
        self._truncated = 0
        self._malformed = 0
        self._errors = []  # unexpected exceptions in the server thread
        # Put the targets' A/AAAA records of an SRV answer in its additional section.
        self.srv_additional = False
        self._udp, self._tcp = self._bind(host)
        self.port = self._udp.getsockname()[1]
        self.address = "%s:%d" % (host, self.port)
        self._connections = {}
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._udp, selectors.EVENT_READ, "udp")
        self._selector.register(self._tcp, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dns-%d" % self.port,
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(host):
        """A UDP and a TCP socket on the same free port of `host`."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP on %s" % host)

    # ---- context manager and shutdown ------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stops the thread and closes every socket; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass
        self._thread.join(10)
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._connections.clear()
        for sock in (self._udp, self._tcp, self._wake_reader, self._wake_writer):
            sock.close()
        self._selector.close()

    # ---- records and behaviour --------------------------------------------------

    def set_a(self, name, addresses, ttl=5):
        """The A records of `name` (replacing those it had)."""
        self._set(name, "A", ttl, [A(address) for address in addresses])

    def set_aaaa(self, name, addresses, ttl=5):
        """The AAAA records of `name` (replacing those it had)."""
        self._set(name, "AAAA", ttl, [AAAA(address) for address in addresses])

    def set_srv(self, name, records, ttl=5):
        """The SRV records of `name`: (priority, weight, port, target) tuples."""
        self._set(name, "SRV", ttl, [SRV(priority, weight, port, target)
                                     for priority, weight, port, target in records])

    def _set(self, name, qtype, ttl, rdata):
        with self._lock:
            self._records.setdefault(normalize(name), {})[qtype] = (int(ttl), list(rdata))

    def remove(self, name):
        """Forgets every record of `name`: it answers NXDOMAIN from now on."""
        with self._lock:
            self._records.pop(normalize(name), None)

    def set_mode(self, mode):
        """"answer" (normal), "timeout" (receive and never answer), "servfail",
        "nxdomain" or "refused" (that answer to every query)."""
        if mode not in MODES:
            raise ValueError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
        with self._lock:
            self._mode = mode

    @property
    def mode(self):
        with self._lock:
            return self._mode

    # ---- what the server saw ------------------------------------------------------

    def queries(self, name=None, qtype=None, transport=None, since=None):
        """How many queries matched: `name` (any case, trailing dot optional),
        `qtype` ("A", "AAAA", "SRV"...), `transport` ("udp" or "tcp"), received
        at or after `since` (a time.monotonic() value). None matches anything."""
        return len(self.query_log(name, qtype, transport, since))

    def query_log(self, name=None, qtype=None, transport=None, since=None):
        """The matching queries as (monotonic time, name, qtype, transport)."""
        key = None if name is None else normalize(name)
        with self._lock:
            return [entry for entry in self._log
                    if (key is None or entry[1] == key)
                    and (qtype is None or entry[2] == qtype)
                    and (transport is None or entry[3] == transport)
                    and (since is None or entry[0] >= since)]

    @property
    def truncated(self):
        """How many UDP answers went truncated (TC set, no records)."""
        with self._lock:
            return self._truncated

    @property
    def malformed(self):
        """How many messages could not be parsed (and were dropped)."""
        with self._lock:
            return self._malformed

    @property
    def errors(self):
        """Unexpected exceptions the server thread caught (should stay empty)."""
        with self._lock:
            return list(self._errors)

    # ---- the server thread ----------------------------------------------------------

    def _run(self):
        while not self._stopping:
            try:
                events = self._selector.select(timeout=0.5)
            except OSError:
                return
            for key, mask in events:
                try:
                    self._handle(key, mask)
                except Exception as e:  # keep serving whatever one message did
                    with self._lock:
                        self._errors.append(repr(e))

    def _handle(self, key, mask):
        kind = key.data
        if kind == "wake":
            return
        if kind == "udp":
            self._read_udp()
        elif kind == "listen":
            self._accept()
        elif mask & selectors.EVENT_WRITE:
            self._flush(kind)
            if mask & selectors.EVENT_READ and kind.sock.fileno() >= 0:
                self._read_tcp(kind)
        else:
            self._read_tcp(kind)

    def _read_udp(self):
        while True:
            try:
                data, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            answer = self._answer(data, "udp")
            if answer is None:
                continue
            try:
                self._udp.sendto(answer, peer)
            except OSError:
                pass

    def _accept(self):
        while True:
            try:
                sock, _ = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            connection = _TcpConnection(sock)
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _drop(self, connection):
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        self._connections.pop(connection.sock.fileno(), None)
        connection.sock.close()

    def _read_tcp(self, connection):
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        connection.inbox += data
        while len(connection.inbox) >= 2:
            length = int.from_bytes(connection.inbox[:2], "big")
            if len(connection.inbox) < 2 + length:
                break
            message = bytes(connection.inbox[2:2 + length])
            del connection.inbox[:2 + length]
            answer = self._answer(message, "tcp")
            if answer is not None:
                connection.outbox += len(answer).to_bytes(2, "big") + answer
        if len(connection.inbox) > _TCP_BUFFER_LIMIT:
            self._drop(connection)
            return
        self._flush(connection)

    def _flush(self, connection):
        while connection.outbox:
            try:
                sent = connection.sock.send(connection.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(connection)
                return
            del connection.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outbox else 0)
        self._selector.modify(connection.sock, events, connection)

    # ---- answers ----------------------------------------------------------------------

    def _answer(self, data, transport):
        """The answer to one message as bytes, or None to send nothing."""
        try:
            query = DNSRecord.parse(data)
        except Exception:
            with self._lock:
                self._malformed += 1
            return None
        if query.header.qr or not query.questions:
            with self._lock:
                self._malformed += 1
            return None
        question = query.questions[0]
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        key = normalize(question.qname)
        with self._lock:
            self._log.append((time.monotonic(), key, qtype, transport))
            mode = self._mode
            entry = self._records.get(key)
            found = None if entry is None else entry.get(qtype)
            additional = []
            if found is not None and qtype == "SRV" and self.srv_additional:
                for rdata in found[1]:
                    target = self._records.get(normalize(rdata.target), {})
                    for kind in ("A", "AAAA"):
                        if kind in target:
                            ttl, values = target[kind]
                            additional += [(str(rdata.target), kind, ttl, value)
                                           for value in values]
        if mode == "timeout":
            return None
        reply = query.reply(ra=0, aa=1)
        if mode != "answer":
            reply.header.rcode = {"servfail": RCODE.SERVFAIL, "nxdomain": RCODE.NXDOMAIN,
                                  "refused": RCODE.REFUSED}[mode]
            reply.header.aa = 0 if mode == "refused" else 1
            return reply.pack()
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif found is not None:
            ttl, values = found
            for rdata in values:
                reply.add_answer(RR(question.qname, question.qtype, rdata=rdata, ttl=ttl))
            for name, kind, ttl, rdata in additional:
                reply.add_ar(RR(name, getattr(QTYPE, kind), rdata=rdata, ttl=ttl))
        packed = reply.pack()
        if transport == "udp" and len(packed) > UDP_LIMIT:
            truncated = query.reply(ra=0, aa=1)
            truncated.header.tc = 1
            with self._lock:
                self._truncated += 1
            return truncated.pack()
        return packed
