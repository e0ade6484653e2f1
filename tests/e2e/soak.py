"""Soak test: minutes of mixed, hostile traffic against one tandem, then a
check that nothing leaked and every request is accounted for.

Traffic, all at once: keep-alive clients, one-request connections, pipelined
batches, chunked uploads, slow readers, clients that abort mid-body, a worker
killed and restarted, and a reload every few seconds. Afterwards:
  - no sanitizer report from tandem;
  - its descriptor count and RSS are back within 10 % of what they were after
    the warm-up;
  - every request a client finished sending was answered or has its line in
    the access log (each request carries a unique id in its target).

Run through CTest (`ctest -C soak -L soak`, not part of the default run) or
bench/soak.sh, which builds tandem with AddressSanitizer first. SOAK_SECONDS
sets the length of the mixed phase (default 600).
"""

import os
import random
import signal
import socket
import threading
import time
import unittest

from harness import (ChildProcess, Deadline, HttpReader, IncompleteMessage, ProtocolError,
                     TANDEM_WORKER, TandemTestCase, build_request, make_config, read_response,
                     scaled, wait_until)

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RELOAD_EVERY = 3.0
KILL_EVERY = 20.0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Ledger:
    """Request ids: sent completely, answered, or abandoned by their client."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_id = 0
        self.sent = set()
        self.answered = set()
        self.errors = []

    def new_id(self):
        with self.lock:
            self.next_id += 1
            return self.next_id

    def mark_sent(self, rid):
        with self.lock:
            self.sent.add(rid)

    def mark_answered(self, rid):
        with self.lock:
            self.answered.add(rid)


class RestartableWorker:
    """A tandem-worker on a fixed port that can be killed and started again."""

    def __init__(self, name):
        self.name = name
        self.port = None
        self.child = None
        self.start()

    def start(self):
        listen = "127.0.0.1:%d" % self.port if self.port else "127.0.0.1:0"
        deadline = Deadline(scaled(10))
        while True:
            child = ChildProcess([TANDEM_WORKER, "--listen", listen, "--name", self.name],
                                 name="worker-" + self.name)
            try:
                _, match = child.stdout.wait_for(r"listening on 127\.0\.0\.1:(\d+)", scaled(5))
                break
            except TimeoutError:
                child.kill()
                if deadline.expired():
                    raise
                time.sleep(0.2)  # the old socket may linger a moment
        self.child = child
        self.port = int(match.group(1))

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def kill(self):
        self.child.send_signal(signal.SIGKILL)
        self.child.kill()

    def close(self):
        if self.child and self.child.running():
            try:
                self.child.stop(scaled(10))
            except TimeoutError:
                pass


class Traffic:
    """The client loops; each runs until `stop` is set."""

    def __init__(self, port, ledger, stop):
        self.port = port
        self.ledger = ledger
        self.stop = stop

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=scaled(30))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def exchange(self, sock, reader, method, target, body=None, headers=None):
        rid = self.ledger.new_id()
        all_headers = {"Host": "soak"}
        all_headers.update(headers or {})
        sock.sendall(build_request(method, "%s%sid=%d" % (target, "&" if "?" in target else "?",
                                                           rid), all_headers, body))
        self.ledger.mark_sent(rid)
        response = read_response(reader, method)
        self.ledger.mark_answered(rid)
        return response

    def guard(self, loop):
        def run():
            while not self.stop.is_set():
                try:
                    loop()
                except (OSError, IncompleteMessage, ProtocolError, socket.timeout, EOFError):
                    time.sleep(0.01)  # a worker killed mid-exchange, a reload: go on
                except Exception as e:  # noqa: BLE001 - recorded, then the test fails
                    self.ledger.errors.append(repr(e))
                    time.sleep(0.1)
        return run

    def keep_alive(self):
        sock = self.connect()
        reader = HttpReader(sock)
        try:
            for _ in range(200):
                if self.stop.is_set():
                    return
                response = self.exchange(sock, reader, "GET", "/bytes?n=1000")
                if response.header("connection") == "close":
                    return
        finally:
            sock.close()

    def one_shot(self):
        sock = self.connect()
        try:
            self.exchange(sock, HttpReader(sock), "GET", "/", headers={"Connection": "close"})
        finally:
            sock.close()

    def pipelined(self):
        sock = self.connect()
        reader = HttpReader(sock)
        try:
            ids = [self.ledger.new_id() for _ in range(10)]
            sock.sendall(b"".join(build_request("GET", "/?id=%d" % rid, {"Host": "soak"})
                                  for rid in ids))
            for rid in ids:
                self.ledger.mark_sent(rid)
            for rid in ids:
                read_response(reader, "GET")
                self.ledger.mark_answered(rid)
        finally:
            sock.close()

    def chunked_upload(self):
        sock = self.connect()
        try:
            rid = self.ledger.new_id()
            head = ("POST /sink?id=%d HTTP/1.1\r\nHost: soak\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n" % rid).encode()
            sock.sendall(head)
            for _ in range(25):
                sock.sendall(b"1000\r\n" + b"u" * 4096 + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            self.ledger.mark_sent(rid)
            read_response(HttpReader(sock), "POST")
            self.ledger.mark_answered(rid)
        finally:
            sock.close()

    def slow_reader(self):
        sock = self.connect()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            rid = self.ledger.new_id()
            sock.sendall(build_request("GET", "/bytes?n=4000000&id=%d" % rid, {"Host": "soak"}))
            self.ledger.mark_sent(rid)
            # Read a little, slowly, then give up: the rest stays unread.
            for _ in range(20):
                if self.stop.is_set():
                    break
                sock.recv(1024)
                time.sleep(0.05)
        finally:
            sock.close()

    def abort_mid_body(self):
        sock = self.connect()
        try:
            rid = self.ledger.new_id()
            sock.sendall(("POST /sink?id=%d HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000"
                          "\r\n\r\n" % rid).encode() + b"a" * 30000)
            self.ledger.mark_sent(rid)  # the head is out: tandem must log it
            time.sleep(0.05)
            if random.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")
        finally:
            sock.close()


class SoakTest(TandemTestCase):

    def test_mixed_traffic_leaks_nothing_and_loses_nothing(self):
        workers = [RestartableWorker("s1"), RestartableWorker("s2")]
        for worker in workers:
            self.addCleanup(worker.close)

        def config(retries):
            return make_config(
                [w.address for w in workers],
                global_opts={"threads": 2, "grace_period": "5s"},
                listener_opts={"idle_timeout": "3s", "client_header_timeout": "3s"},
                cluster_opts={"retries": retries, "idle_timeout": "5s",
                              "request_timeout": "10s"},
                extra='[clusters.compute.health]\ninterval = "500ms"\ntimeout = "400ms"\n'
                      'rise = 1\nfall = 1\n')

        tandem = self.start_tandem(config(2))
        ledger = Ledger()
        stop = threading.Event()
        traffic = Traffic(tandem.port, ledger, stop)
        loops = [traffic.keep_alive] * 3 + [traffic.one_shot] * 2 + [
            traffic.pipelined, traffic.chunked_upload, traffic.slow_reader,
            traffic.abort_mid_body]
        threads = [threading.Thread(target=traffic.guard(loop), daemon=True) for loop in loops]

        # Warm-up: buffers, pools and allocator arenas reach their working size.
        for thread in threads:
            thread.start()
        time.sleep(min(20.0, SOAK_SECONDS / 4))
        stop.set()
        for thread in threads:
            thread.join(scaled(30))
        idle_wait = scaled(8)  # idle_timeout 3 s, lingering close 2 s
        time.sleep(idle_wait)
        fds_start, rss_start = fd_count(tandem.pid), rss_kib(tandem.pid)

        stop.clear()
        threads = [threading.Thread(target=traffic.guard(loop), daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        end = time.monotonic() + SOAK_SECONDS
        next_reload = time.monotonic() + RELOAD_EVERY
        next_kill = time.monotonic() + KILL_EVERY
        retries = 2
        reloads = kills = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_reload:
                retries = 5 - retries  # 2 <-> 3
                self.assertTrue(tandem.reload(config(retries)), "a reload was rejected")
                reloads += 1
                next_reload = now + RELOAD_EVERY
            if now >= next_kill:
                victim = workers[kills % len(workers)]
                victim.kill()
                time.sleep(1.0)
                victim.start()
                kills += 1
                next_kill = now + KILL_EVERY
            time.sleep(0.2)
            self.assertTrue(tandem.running(), "tandem died:\n" + tandem.output()[-5000:])
        stop.set()
        for thread in threads:
            thread.join(scaled(30))

        time.sleep(idle_wait)
        fds_end, rss_end = fd_count(tandem.pid), rss_kib(tandem.pid)
        # Every request a client sent completely was answered or logged.
        time.sleep(0.5)  # the access log is flushed within 200 ms
        logged = set()
        for line in tandem.access_lines():
            marker = line.find("id=")
            if marker >= 0:
                digits = ""
                for ch in line[marker + 3:]:
                    if not ch.isdigit():
                        break
                    digits += ch
                if digits:
                    logged.add(int(digits))
        missing = sorted(rid for rid in ledger.sent if rid not in ledger.answered and
                         rid not in logged)
        summary = ("%d requests sent, %d answered, %d logged, %d reloads, %d worker kills; "
                   "fds %d -> %d, RSS %d -> %d KiB" %
                   (len(ledger.sent), len(ledger.answered), len(logged), reloads, kills,
                    fds_start, fds_end, rss_start, rss_end))
        print("\nsoak: " + summary, flush=True)
        self.assertEqual(ledger.errors, [], summary)
        self.assertEqual(missing, [], "requests neither answered nor logged: " + summary)
        self.assertLessEqual(fds_end, fds_start * 1.1 + 2, summary)
        self.assertLessEqual(rss_end, rss_start * 1.1, summary)
        unlogged_answers = sorted(rid for rid in ledger.answered if rid not in logged)
        self.assertEqual(unlogged_answers, [], "answered but not logged: " + summary)


if __name__ == "__main__":
    unittest.main()
