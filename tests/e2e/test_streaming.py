"""Bodies are streamed both ways with back-pressure, never buffered whole: 1 GiB
through tandem raises its peak resident memory (VmHWM) by no more than a few
buffers, and a slow reader or a slow backend holds the other side back."""

import hashlib
import socket
import subprocess
import threading
import time
import unittest

from harness import (BYTES_PATTERN, GIB, MIB, SANITIZED, Deadline, HttpReader,
                     TandemTestCase, build_request, make_config, read_response, scaled)

# How much tandem's peak RSS may grow while a transfer runs. Its buffers are a
# few hundred KiB; sanitizer builds keep freed memory in quarantine for a while.
MEMORY_BOUND_MIB = 96 if SANITIZED else 32

PIECE = BYTES_PATTERN * (MIB // len(BYTES_PATTERN))  # 1 MiB of the pattern


class PatternChecker:
    """Checks that a stream is BYTES_PATTERN repeated, fed in pieces of any size."""

    def __init__(self):
        self.count = 0
        self.mismatch_at = None
        self._reference = BYTES_PATTERN * (4 * MIB // len(BYTES_PATTERN) + 2)
        self._span = len(self._reference) - len(BYTES_PATTERN)

    def feed(self, data):
        view = memoryview(data)
        done = 0
        while done < len(view):
            size = min(len(view) - done, self._span)
            offset = (self.count + done) % len(BYTES_PATTERN)
            if self.mismatch_at is None and \
                    bytes(view[done:done + size]) != self._reference[offset:offset + size]:
                self.mismatch_at = self.count + done
            done += size
        self.count += len(view)


def read_head(sock):
    """Reads a response head byte-exactly from `sock`; returns (status, head, rest)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the response head ended")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), rest


def download(port, size, slow_reader=None):
    """GET /bytes?n=size from 127.0.0.1:port on a raw socket; returns the
    PatternChecker. `slow_reader(sock)` runs after the head, before the
    rest is read at full speed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(60))
    try:
        sock.sendall(build_request("GET", "/bytes?n=%d" % size))
        status, head, rest = read_head(sock)
        assert status == 200, head
        assert "Content-Length: %d" % size in head, head
        checker = PatternChecker()
        checker.feed(rest)
        if slow_reader is not None:
            checker.feed(slow_reader(sock))
        buffer = bytearray(4 * MIB)
        while checker.count < size:
            n = sock.recv_into(buffer)
            if n == 0:
                break
            checker.feed(memoryview(buffer)[:n])
        return checker
    finally:
        sock.close()


def upload(port, size, chunked=False):
    """POST /compute?rounds=1 with `size` bytes of the pattern; the worker
    answers the body's SHA-256. Returns (response, expected digest)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(60))
    try:
        framing = [("Transfer-Encoding", "chunked")] if chunked else \
                  [("Content-Length", str(size))]
        sock.sendall(build_request("POST", "/compute?rounds=1", framing))
        digest = hashlib.sha256()
        sent = 0
        while sent < size:
            piece = PIECE[:min(len(PIECE), size - sent)]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            digest.update(piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return read_response(HttpReader(sock)), digest.hexdigest()
    finally:
        sock.close()


class StreamingTest(TandemTestCase):

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")
        cls.tandem = cls.start_class_tandem(make_config(
            [cls.worker.address], cluster_opts={"request_timeout": "120s"}))
        # Let tandem's buffers and pools reach their working size first.
        download(cls.tandem.port, 16 * MIB)
        upload(cls.tandem.port, 16 * MIB)

    def peak_growth_kib(self, transfer):
        """Runs `transfer()`; returns (its result, tandem's VmHWM growth in KiB
        over the resident size before it)."""
        if self.tandem.reset_peak_rss():
            baseline = self.tandem.memory_kib("VmRSS")
        else:
            baseline = self.tandem.memory_kib("VmHWM")
        result = transfer()
        return result, self.tandem.memory_kib("VmHWM") - baseline

    def assertMemoryBounded(self, growth_kib, what):
        print("\n%s: tandem VmHWM grew by %.1f MiB (bound %d MiB)"
              % (what, growth_kib / 1024, MEMORY_BOUND_MIB), flush=True)
        self.assertLess(growth_kib, MEMORY_BOUND_MIB * 1024)

    # ---- tests ----

    def test_a_1_gib_download_streams_intact_with_bounded_memory(self):
        checker, growth = self.peak_growth_kib(lambda: download(self.tandem.port, GIB))
        self.assertEqual(checker.count, GIB)
        self.assertIsNone(checker.mismatch_at, "pattern broken at byte %s" % checker.mismatch_at)
        self.assertMemoryBounded(growth, "1 GiB download")

    def test_a_1_gib_upload_streams_intact_with_bounded_memory(self):
        (response, digest), growth = self.peak_growth_kib(lambda: upload(self.tandem.port, GIB))
        self.assertEqual(response.status, 200, response.body)
        self.assertIn(b'"bytes":%d' % GIB, response.body)
        self.assertIn(digest.encode(), response.body)
        self.assertMemoryBounded(growth, "1 GiB upload")

    def test_a_chunked_download_through_curl_arrives_intact(self):
        size = 256 * MIB
        url = "http://127.0.0.1:%d/bytes?n=%d&chunked=1" % (self.tandem.port, size)
        process = subprocess.Popen(["curl", "-sS", "--max-time", str(int(scaled(60))),
                                    "-D", "/dev/stderr", "-o", "-", url],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(process.kill)
        checker = PatternChecker()
        while True:
            data = process.stdout.read(4 * MIB)
            if not data:
                break
            checker.feed(data)
        headers = process.stderr.read().decode("latin-1")
        process.stdout.close()
        process.stderr.close()
        self.assertEqual(process.wait(scaled(30)), 0, headers)
        self.assertIn("transfer-encoding: chunked", headers.lower())
        self.assertEqual(checker.count, size)
        self.assertIsNone(checker.mismatch_at)

    def test_a_chunked_upload_through_curl_arrives_intact(self):
        size = 256 * MIB
        url = "http://127.0.0.1:%d/compute?rounds=1" % self.tandem.port
        # curl sends a body read from stdin with chunked framing.
        process = subprocess.Popen(["curl", "-sS", "--max-time", str(int(scaled(60))),
                                    "-X", "POST", "-T", "-", url],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        self.addCleanup(process.kill)
        digest = hashlib.sha256()
        for _ in range(size // len(PIECE)):
            process.stdin.write(PIECE)
            digest.update(PIECE)
        process.stdin.close()
        process.stdin = None  # communicate() must not flush it again
        out, err = process.communicate(timeout=scaled(60))
        self.assertEqual(process.returncode, 0, err)
        self.assertIn(b'"bytes":%d' % size, out)
        self.assertIn(digest.hexdigest().encode(), out)

    def test_a_chunked_upload_on_a_raw_socket_arrives_intact(self):
        response, digest = upload(self.tandem.port, 64 * MIB, chunked=True)
        self.assertEqual(response.status, 200)
        self.assertIn(b'"bytes":%d' % (64 * MIB), response.body)
        self.assertIn(digest.encode(), response.body)

    def test_a_slow_reader_holds_the_backend_back_without_growing_memory(self):
        size = 256 * MIB
        read_slowly = 2 * MIB

        def slow_reader(sock):
            # 64 KiB every 25 ms: the worker could send the whole body in a
            # fraction of this time if tandem did not push back.
            data = bytearray()
            while len(data) < read_slowly:
                chunk = sock.recv(64 * 1024)
                if not chunk:
                    break
                data += chunk
                time.sleep(0.025)
            return bytes(data)

        checker, growth = self.peak_growth_kib(lambda: download(self.tandem.port, size, slow_reader))
        self.assertEqual(checker.count, size)
        self.assertIsNone(checker.mismatch_at)
        self.assertMemoryBounded(growth, "slow reader")

    def test_a_slow_backend_holds_the_client_back_without_growing_memory(self):
        size = 256 * MIB
        release = threading.Event()
        received = []

        def slow_sink(connection):
            while connection.reader.read_line() not in (b"\r\n", b"\n"):
                pass
            count = len(connection.reader.buf)
            if not release.wait(scaled(30)):
                return
            while count < size:
                data = connection.sock.recv(1024 * 1024)
                if not data:
                    break
                count += len(data)
            received.append(count)
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                            % (len(str(count)), count))

        backend = self.start_backend(slow_sink)
        tandem = self.start_tandem(make_config([backend.address],
                                               cluster_opts={"request_timeout": "120s"}))
        if tandem.reset_peak_rss():
            baseline = tandem.memory_kib("VmRSS")
        else:
            baseline = tandem.memory_kib("VmHWM")
        sent = [0]
        outcome = {}

        def client():
            sock = socket.create_connection(("127.0.0.1", tandem.port), timeout=scaled(60))
            try:
                sock.sendall(build_request("POST", "/slow", [("Content-Length", str(size))]))
                while sent[0] < size:
                    sock.sendall(PIECE)
                    sent[0] += len(PIECE)
                outcome["response"] = read_response(HttpReader(sock))
            except Exception as e:  # reported by the main thread
                outcome["error"] = e
            finally:
                sock.close()

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        # Wait until the client is blocked: its progress stops for 300 ms.
        deadline = Deadline(scaled(20))
        last = -1
        while sent[0] != last and not deadline.expired():
            last = sent[0]
            time.sleep(0.3)
        blocked_at = sent[0]
        growth = tandem.memory_kib("VmHWM") - baseline
        release.set()
        thread.join(scaled(60))
        self.assertFalse(thread.is_alive(), "the upload did not finish")
        self.assertNotIn("error", outcome)
        self.assertEqual(outcome["response"].status, 200)
        self.assertEqual(received, [size])
        self.assertLess(blocked_at, size, "the client was never held back")
        self.assertMemoryBounded(growth, "slow backend (client blocked after %d MiB)"
                                 % (blocked_at // MIB))


if __name__ == "__main__":
    unittest.main()
