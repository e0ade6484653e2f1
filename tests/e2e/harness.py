"""End-to-end harness for tandem: processes, a scriptable backend and raw clients.

Everything runs on 127.0.0.1 with ephemeral ports that are read back from the
processes themselves. Every wait is bounded; processes are stopped by PID; temporary
directories are removed. Only the Python standard library is used.

Run through CTest (`ctest -L e2e`), or from this folder:
  TANDEM=../../build/tandem TANDEM_WORKER=../../build/tandem-worker \
      python3 -m unittest -v test_http_basics

Environment:
  TANDEM, TANDEM_WORKER      paths of the binaries (default: build/ under the repo)
  TANDEM_E2E_TIMEOUT_SCALE   multiplies every timeout (sanitizer builds are slower)
  TANDEM_E2E_SANITIZED       "1" when the binaries carry AddressSanitizer
"""

import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

TANDEM = os.environ.get("TANDEM") or os.path.join(ROOT, "build", "tandem")
TANDEM_WORKER = os.environ.get("TANDEM_WORKER") or os.path.join(ROOT, "build", "tandem-worker")
TIMEOUT_SCALE = float(os.environ.get("TANDEM_E2E_TIMEOUT_SCALE", "1") or "1")
SANITIZED = os.environ.get("TANDEM_E2E_SANITIZED", "") == "1"

# The 64-byte period the worker's /bytes serves (DemoWorker::kBytesPattern).
BYTES_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"

MIB = 1024 * 1024
GIB = 1024 * MIB


def require_tool(package, *names):
    """The path of the first command in `names` that is installed. A missing
    one fails the test rather than skipping it: the README's test command
    (scripts/build --test) installs the Debian package `package`, so a skip
    would only hide a broken install step."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("%s is not installed (Debian package %s; scripts/build --test "
                         "installs it)" % (" or ".join(names), package))


def scaled(seconds):
    """Returns a timeout in seconds, stretched for slow (sanitizer) builds."""
    return seconds * TIMEOUT_SCALE


class Deadline:
    """A point in time a bounded wait must not pass."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def expired(self):
        return time.monotonic() >= self.end


def wait_until(predicate, timeout, what="condition", interval=0.01):
    """Polls `predicate` until it returns a true value, which is returned.

    For state that has no readiness signal of its own (a counter behind an HTTP
    endpoint, a process table entry). Raises TimeoutError naming `what`.
    """
    deadline = Deadline(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if deadline.expired():
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- lines from a child process ---------------------------------------------


class LineCollector:
    """Reads a pipe line by line on a thread; lets tests wait for a line."""

    def __init__(self, pipe, name):
        self._pipe = pipe
        self._lines = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for raw in iter(self._pipe.readline, b""):
                with self._cond:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def lines(self):
        """A copy of every line read so far."""
        with self._cond:
            return list(self._lines)

    def count(self):
        with self._cond:
            return len(self._lines)

    def text(self):
        return "\n".join(self.lines())

    def wait_for(self, pattern, timeout, start=0):
        """Waits for a line at index >= `start` matching the regex `pattern`.

        Returns (index, match). Raises TimeoutError when no line matches in time
        or the pipe closed first.
        """
        regex = re.compile(pattern)
        deadline = Deadline(timeout)
        with self._cond:
            index = start
            while True:
                while index < len(self._lines):
                    match = regex.search(self._lines[index])
                    if match:
                        return index, match
                    index += 1
                if self._closed:
                    raise TimeoutError("stream closed before a line matched %r" % pattern)
                left = deadline.end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no line matched %r within %.1fs" % (pattern, timeout))
                self._cond.wait(left)

    def join(self, timeout):
        self._thread.join(timeout)


def parse_logfmt(line):
    """Parses one logfmt line (key=value, key="quoted value") into a dict."""
    fields = {}
    for match in re.finditer(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        value = match.group(2)
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        fields[match.group(1)] = value
    return fields


# ---- processes -----------------------------------------------------------------


def sanitizer_env():
    """Environment for a child process: keeps sanitizer reports readable and its
    freed-memory quarantine small, so memory measurements stay meaningful."""
    env = dict(os.environ)
    asan = env.get("ASAN_OPTIONS", "")
    if "quarantine_size_mb" not in asan:
        env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "quarantine_size_mb=16"
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


_children = []


@atexit.register
def _kill_leftover_children():
    """Last resort: no child outlives the test run, whatever cleanup missed."""
    for child in _children:
        if child.poll() is None:
            child.kill()
            child.wait()


class ChildProcess:
    """A child process with its stdout and stderr collected line by line."""

    def __init__(self, argv, cwd=None, name="child"):
        self.argv = list(argv)
        self.name = name
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sanitizer_env(),
        )
        _children.append(self.proc)
        self.pid = self.proc.pid
        self.stdout = LineCollector(self.proc.stdout, name + "-stdout")
        self.stderr = LineCollector(self.proc.stderr, name + "-stderr")

    def running(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        if self.running():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Waits for the exit; returns the exit status or raises TimeoutError."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("%s (pid %d) still running after %.1fs" %
                               (self.name, self.pid, timeout)) from None
        self._close_pipes()
        return code

    def _close_pipes(self):
        self.stdout.join(scaled(5))
        self.stderr.join(scaled(5))
        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    def stop(self, timeout=None):
        """SIGTERM, then SIGKILL if it has not exited in time. Returns the exit status."""
        timeout = scaled(10) if timeout is None else timeout
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.kill()
            raise

    def kill(self):
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            return
        self._close_pipes()

    def output(self):
        """Both streams, for failure messages."""
        return "--- stdout ---\n%s\n--- stderr ---\n%s" % (self.stdout.text(), self.stderr.text())


class Worker(ChildProcess):
    """A tandem-worker process (demo/demo_worker.h) on an ephemeral port.

    `listen` ("127.0.0.3:0", "127.0.0.3:PORT") puts it on another loopback
    address, or on a fixed port; `host` and `port` are where it listens.
    """

    host = "127.0.0.1"

    def __init__(self, name="w1", threads=1, listen="127.0.0.1:0"):
        super().__init__([TANDEM_WORKER, "--listen", listen, "--name", name,
                          "--threads", str(threads)], name="worker-" + name)
        self.worker_name = name
        self.host = listen.rsplit(":", 1)[0]
        try:
            _, match = self.stdout.wait_for(r"listening on %s:(\d+)" % re.escape(self.host),
                                            scaled(15))
        except TimeoutError:
            self.kill()
            raise RuntimeError("tandem-worker did not start:\n" + self.output()) from None
        self.port = int(match.group(1))
        self.address = "%s:%d" % (self.host, self.port)

    def stats(self):
        """The worker's /stats counters, asked directly (not through tandem)."""
        with socket.create_connection((self.host, self.port), timeout=scaled(10)) as sock:
            sock.sendall(build_request("GET", "/stats", [("Connection", "close")]))
            response = read_response(HttpReader(sock))
        return json.loads(response.body)

    def stop(self, timeout=None):
        code = super().stop(timeout)
        if code != 0:
            raise AssertionError("tandem-worker exited %s\n%s" % (code, self.output()))
        return code

    def close(self):
        """Stops the worker if it still runs (SIGTERM, then SIGKILL)."""
        if self.running():
            try:
                super().stop(scaled(10))
            except TimeoutError:
                pass


def toml_value(value):
    """Formats a Python value as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError("no TOML form for %r" % (value,))


def toml_table(header, values):
    lines = ["[%s]" % header]
    lines.extend("%s = %s" % (key, toml_value(value)) for key, value in values.items())
    return "\n".join(lines) + "\n"


def make_config(backends, global_opts=None, listener_opts=None, cluster_opts=None,
                admin=True, extra=""):
    """TOML text for one listener "web" on an ephemeral port in front of cluster
    "compute" with `backends` ("host:port" strings or (address, {options}) pairs).

    Defaults: one thread, a 3 s grace period, the access log on stdout.
    """
    global_values = {"threads": 1, "grace_period": "3s", "access_log": "stdout"}
    global_values.update(global_opts or {})
    parts = [toml_table("global", global_values)]
    if admin:
        parts.append(toml_table("admin", {"listen": "127.0.0.1:0", "token": "secret"}))
    listener_values = {"listen": "127.0.0.1:0", "cluster": "compute"}
    listener_values.update(listener_opts or {})
    parts.append(toml_table("listeners.web", listener_values))
    parts.append(toml_table("clusters.compute", dict(cluster_opts or {})))
    for backend in backends:
        address, options = (backend, {}) if isinstance(backend, str) else backend
        values = {"address": address}
        values.update(options)
        parts.append(toml_table("[clusters.compute.backends]", values))
    if extra:
        parts.append(extra)
    return "\n".join(parts)


class Tandem(ChildProcess):
    """tandem running a config file written to its own temporary directory.

    The listener ports and the admin port are read from tandem's start-up log.
    Access log lines (stdout) are in `self.stdout`, the log in `self.stderr`.
    """

    def __init__(self, config_text, start_timeout=None):
        self.dir = tempfile.mkdtemp(prefix="tandem-e2e-")
        self.config_path = os.path.join(self.dir, "tandem.toml")
        write_file(self.config_path, config_text)
        super().__init__([TANDEM, "-c", self.config_path], cwd=self.dir, name="tandem")
        self.ports = {}
        self.admin_port = None
        try:
            self.stderr.wait_for(r'msg="tandem started"', start_timeout or scaled(20))
        except TimeoutError:
            self.kill()
            output = self.output()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError("tandem did not start:\n" + output) from None
        for line in self.stderr.lines():
            fields = parse_logfmt(line)
            if fields.get("msg") == "listener ready":
                self.ports[fields["listener"]] = int(fields["address"].rsplit(":", 1)[1])
            elif fields.get("msg") == "admin listener ready":
                self.admin_port = int(fields["address"].rsplit(":", 1)[1])

    @property
    def port(self):
        """The port of listener "web"."""
        return self.ports["web"]

    def reload(self, config_text, timeout=None):
        """Writes `config_text` (atomically, by rename) and sends SIGHUP.

        Returns True when tandem logged "config reloaded", False for "reload
        rejected".
        """
        start = self.stderr.count()
        write_file(self.config_path, config_text)
        self.send_signal(signal.SIGHUP)
        _, match = self.stderr.wait_for(r'msg="(config reloaded|reload rejected)',
                                        timeout or scaled(10), start)
        return match.group(1) == "config reloaded"

    def admin(self, path, method="GET", headers=None):
        """One request to the admin listener."""
        return http_request(self.admin_port, method, path, headers=headers)

    def status_json(self):
        return json.loads(self.admin("/status").body)

    def metrics(self):
        """/metrics as {"name{labels}": value}."""
        values = {}
        for line in self.admin("/metrics").body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def memory_kib(self, field):
        """A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...)."""
        return proc_status_kib(self.pid, field)

    def reset_peak_rss(self):
        """Resets VmHWM to the current RSS (/proc/PID/clear_refs, "5");
        returns False when the kernel does not allow it."""
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def access_lines(self):
        return self.stdout.lines()

    def wait_access_line(self, pattern, timeout=None, start=0):
        """Waits for an access log line matching `pattern` (tandem flushes them
        within 200 ms); returns the match."""
        return self.stdout.wait_for(pattern, timeout or scaled(5), start)[1]

    def close(self):
        """Stops tandem (SIGTERM) if it still runs and removes its directory.

        Raises AssertionError when tandem had to be killed, exited with an
        error, or a sanitizer reported something: each test then sees it.
        """
        problem = None
        try:
            if self.running():
                try:
                    code = self.stop(scaled(15))
                except TimeoutError:
                    code = None
                if code != 0:
                    problem = "tandem exited %s on SIGTERM" % code
            elif self.proc.returncode != 0:
                problem = "tandem died with exit status %s" % self.proc.returncode
            sanitizer = sanitizer_report(self.stderr.text())
            if sanitizer:
                problem = "sanitizer report from tandem"
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        if problem:
            raise AssertionError("%s\n%s" % (problem, self.output()[-20000:]))


def sanitizer_report(text):
    """True when `text` holds an AddressSanitizer, LeakSanitizer or UBSan report."""
    return any(marker in text for marker in
               ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"))


def run_tandem(args, timeout=None, cwd=None):
    """Runs tandem to completion (--version, --check...); returns CompletedProcess."""
    return subprocess.run([TANDEM] + list(args), cwd=cwd, capture_output=True,
                          timeout=timeout or scaled(20), env=sanitizer_env())


def proc_status_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def write_file(path, text):
    """Writes `text` to `path` atomically (a rename), as editors and ConfigMaps do."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def free_port():
    """A loopback port nothing listens on right now (bound, read back,
    released), for a process that needs a fixed one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_address():
    """An address that refuses connections: a port bound but never listened on.

    Returns (address, socket); keep the socket open so the port stays reserved.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    return "127.0.0.1:%d" % holder.getsockname()[1], holder


# ---- HTTP/1.1 messages ---------------------------------------------------------


class ProtocolError(Exception):
    """Bytes that are not a valid HTTP/1.1 message."""


class IncompleteMessage(Exception):
    """The connection ended before the message did; `partial` holds what came."""

    def __init__(self, message, partial=b""):
        super().__init__(message)
        self.partial = partial


class Message:
    """One parsed HTTP/1.x request or response."""

    def __init__(self):
        self.start_line = ""
        self.version = ""
        self.method = None  # requests
        self.target = None
        self.status = None  # responses
        self.reason = None
        self.headers = []  # [(name, value)] in order, names as sent
        self.trailers = []
        self.body = b""
        self.chunked = False
        self.raw_head = b""
        self.raw = b""  # every byte of the message as it came on the wire
        self.interim = []  # 1xx responses that came before this one

    def header(self, name):
        """The first value of header `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name):
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def has_header(self, name):
        return any(key.lower() == name.lower() for key, _ in self.headers)

    def trailer(self, name):
        for key, value in self.trailers:
            if key.lower() == name.lower():
                return value
        return None

    def __repr__(self):
        return "<Message %r headers=%r body=%r>" % (self.start_line, self.headers,
                                                    self.body[:200])


class HttpReader:
    """Buffered reading of HTTP/1.x framing from a socket.

    `record(data)` is called with every chunk received (the backend keeps them);
    capture() / captured() give the exact bytes one message used.
    """

    def __init__(self, sock, record=None):
        self.sock = sock
        self.record = record
        self.buf = bytearray()
        self.eof = False
        self._capture = None

    def _fill(self):
        if self.eof:
            raise EOFError("connection closed")
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        if self.record is not None:
            self.record(data)
        if not data:
            self.eof = True
            raise EOFError("connection closed")
        self.buf += data

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        if self._capture is not None:
            self._capture += data
        return data

    def capture(self):
        self._capture = bytearray()

    def captured(self):
        data = bytes(self._capture or b"")
        self._capture = None
        return data

    def read_line(self, limit=1 << 20):
        """One line with its terminator (LF, maybe after CR)."""
        while True:
            index = self.buf.find(b"\n")
            if index >= 0:
                return self._take(index + 1)
            if len(self.buf) > limit:
                raise ProtocolError("line longer than %d bytes" % limit)
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        return self._take(n)

    def read_until_close(self):
        while True:
            try:
                self._fill()
            except EOFError:
                break
        return self._take(len(self.buf))

    def has_buffered(self):
        return len(self.buf) > 0


def _parse_fields(reader):
    """Header or trailer fields up to the empty line."""
    fields = []
    while True:
        line = reader.read_line()
        if line in (b"\r\n", b"\n"):
            return fields
        text = line.rstrip(b"\r\n").decode("latin-1")
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise ProtocolError("bad field line %r" % line)
        fields.append((name, value.strip(" \t")))


def _read_chunked(reader, message):
    body = bytearray()
    while True:
        line = reader.read_line()
        size_text = line.rstrip(b"\r\n").split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError("bad chunk size line %r" % line) from None
        if size == 0:
            message.trailers = _parse_fields(reader)
            message.body = bytes(body)
            return
        body += reader.read_exact(size)
        if reader.read_exact(2) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")


def _framing_headers(message):
    """(chunked, content_length) from the message's head."""
    codings = ",".join(message.header_all("transfer-encoding")).lower()
    chunked = bool(codings) and codings.replace(" ", "").split(",")[-1] == "chunked"
    lengths = message.header_all("content-length")
    length = int(lengths[0]) if lengths else None
    return bool(codings), chunked, length


def read_request(reader):
    """Reads one request (head and body); None when the connection closed
    cleanly before it began. Raises IncompleteMessage if it ends mid-message."""
    while not reader.has_buffered():
        try:
            reader._fill()
        except EOFError:
            return None
    reader.capture()
    message = Message()
    try:
        line = reader.read_line()
        message.start_line = line.rstrip(b"\r\n").decode("latin-1")
        parts = message.start_line.split(" ")
        if len(parts) != 3:
            raise ProtocolError("bad request line %r" % line)
        message.method, message.target, message.version = parts
        message.headers = _parse_fields(reader)
        message.raw_head = bytes(reader._capture)
        has_te, chunked, length = _framing_headers(message)
        if has_te:
            if not chunked:
                raise ProtocolError("request Transfer-Encoding not ending in chunked")
            message.chunked = True
            _read_chunked(reader, message)
        elif length:
            message.body = reader.read_exact(length)
    except EOFError:
        raise IncompleteMessage("connection closed mid-request", reader.captured()) from None
    message.raw = reader.captured()
    return message


def read_response(reader, method="GET"):
    """Reads one final response (1xx before it go to `.interim`); the body is
    framed as RFC 9112 §6.3 says for a response to `method`."""
    reader.capture()
    interim = []
    try:
        while True:
            message = Message()
            line = reader.read_line()
            message.start_line = line.rstrip(b"\r\n").decode("latin-1")
            version, _, rest = message.start_line.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ProtocolError("bad status line %r" % line)
            message.version, message.status, message.reason = version, int(code), reason
            message.headers = _parse_fields(reader)
            if 100 <= message.status < 200 and message.status != 101:
                interim.append(message)
                continue
            break
        message.interim = interim
        message.raw_head = bytes(reader._capture)
        if method == "HEAD" or message.status in (101, 204, 304):
            message.raw = reader.captured()
            return message
        has_te, chunked, length = _framing_headers(message)
        if chunked:
            message.chunked = True
            _read_chunked(reader, message)
        elif has_te:
            message.body = reader.read_until_close()
        elif length is not None:
            message.body = reader.read_exact(length)
        else:
            message.body = reader.read_until_close()
    except EOFError:
        raise IncompleteMessage("connection closed mid-response", reader.captured()) from None
    message.raw = reader.captured()
    return message


def build_request(method="GET", target="/", headers=None, body=None, version="HTTP/1.1",
                  host="example.test"):
    """Request bytes; `headers` is a list of pairs (a dict works too). A Host is
    added for HTTP/1.1 unless `host` is None or one is given; Content-Length is
    added for a body unless a framing header is given."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in pairs}
    if host is not None and "host" not in names:
        pairs.insert(0, ("Host", host))
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        pairs.append(("Content-Length", str(len(body))))
    head = "%s %s %s\r\n" % (method, target, version)
    head += "".join("%s: %s\r\n" % pair for pair in pairs)
    return head.encode("latin-1") + b"\r\n" + (body or b"")


def chunked_body(pieces, trailers=()):
    """Chunked transfer coding of `pieces` with optional trailer fields."""
    out = bytearray()
    for piece in pieces:
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    out += b"0\r\n"
    for name, value in trailers:
        out += ("%s: %s\r\n" % (name, value)).encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def bare_line_ends(data):
    """Offsets of every LF not preceded by CR and every CR not followed by LF."""
    return [m.start() for m in re.finditer(rb"(?<!\r)\n|\r(?!\n)", data)]


# ---- clients ---------------------------------------------------------------------


class Client:
    """A raw HTTP/1.x client connection to 127.0.0.1:`port`."""

    def __init__(self, port, timeout=None):
        self.timeout = timeout or scaled(10)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = HttpReader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=None, body=None, **kwargs):
        """Sends one request built by build_request()."""
        self.send(build_request(method, target, headers, body, **kwargs))

    def response(self, method="GET"):
        """Reads the next response (see read_response)."""
        return read_response(self.reader, method)

    def get(self, target="/", headers=None, **kwargs):
        self.request("GET", target, headers, **kwargs)
        return self.response("GET")

    def read_until_close(self):
        """Everything left until the peer closes (EOF or reset)."""
        return self.reader.read_until_close()

    def closed_by_peer(self, timeout=None):
        """True when the peer closes (EOF or reset) within `timeout`, reading and
        dropping whatever arrives; False when it is still open then."""
        deadline = Deadline(timeout or scaled(5))
        self.reader.buf.clear()
        while not deadline.expired():
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline.end - time.monotonic()))
            if not ready:
                return False
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
        return False

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def http_request(port, method="GET", target="/", headers=None, body=None, timeout=None):
    """One request on a new connection (Connection: close); returns the response."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    pairs.append(("Connection", "close"))
    with Client(port, timeout) as client:
        client.request(method, target, pairs, body)
        return client.response(method)


def curl(args, timeout=None, input=None):
    """Runs curl with `args` (silent, errors shown), `input` on its stdin;
    returns CompletedProcess."""
    timeout = timeout or scaled(30)
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout))] + list(args),
                          input=input, capture_output=True, timeout=timeout + 5)


# ---- a scriptable backend ---------------------------------------------------------


class BackendConnection:
    """One connection accepted by a RawBackend, as its handler sees it.

    `received` holds every byte that arrived on it; `requests` the requests
    parsed so far, each with `.raw`, the exact bytes it used.
    """

    def __init__(self, sock, backend):
        self.sock = sock
        self.backend = backend
        self.received = bytearray()
        self.requests = []
        self.peer_closed = threading.Event()
        self.reader = HttpReader(sock, record=self._record)

    def _record(self, data):
        with self.backend.cond:
            if data:
                self.received += data
            else:
                self.peer_closed.set()
            self.backend.cond.notify_all()

    def read_request(self):
        """The next request, or None when tandem closed the connection."""
        request = read_request(self.reader)
        if request is not None:
            with self.backend.cond:
                self.requests.append(request)
                self.backend.cond.notify_all()
        return request

    def send(self, data):
        self.sock.sendall(data)

    def drain_until_close(self, timeout=None):
        """Reads (and records) until tandem closes the connection."""
        self.sock.settimeout(timeout or scaled(30))
        try:
            self.reader.read_until_close()
        except (OSError, socket.timeout):
            pass

    def reset(self):
        """Closes with an RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class RawBackend:
    """A backend on 127.0.0.1 that runs `handler(connection)` per accepted
    connection (one thread each) and records everything it received.

    The default handler answers every request with `default_response(request)`.
    """

    def __init__(self, handler=None):
        self.handler = handler or serve_each(ok_response)
        self.cond = threading.Condition()
        self.connections = []
        self.errors = []
        self._threads = []
        self._stopping = False
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="raw-backend-%d" % self.port)
        self._accept_thread.start()

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
            connection = BackendConnection(sock, self)
            with self.cond:
                self.connections.append(connection)
                self.cond.notify_all()
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection):
        try:
            self.handler(connection)
        except (OSError, EOFError, IncompleteMessage, ProtocolError, socket.timeout) as e:
            with self.cond:
                self.errors.append(e)
        finally:
            connection.close()

    def requests(self):
        """Every request received so far, over all connections."""
        with self.cond:
            return [r for c in self.connections for r in c.requests]

    def received(self):
        """Every byte received so far, over all connections."""
        with self.cond:
            return b"".join(bytes(c.received) for c in self.connections)

    def wait(self, predicate, timeout=None, what="backend state"):
        """Waits until predicate(self) is true (checked whenever bytes arrive)."""
        deadline = Deadline(timeout or scaled(10))
        with self.cond:
            while not predicate(self):
                left = deadline.end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out waiting for %s" % what)
                self.cond.wait(min(left, 0.1))

    def wait_requests(self, count, timeout=None):
        self.wait(lambda b: sum(len(c.requests) for c in b.connections) >= count, timeout,
                  "%d requests at the backend" % count)
        return self.requests()

    def close(self):
        self._stopping = True
        self._accept_thread.join(scaled(5))
        self._listener.close()
        with self.cond:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        for thread in self._threads:
            thread.join(scaled(5))


def response_bytes(status=200, body=b"ok\n", headers=(), reason=None):
    """A Content-Length response."""
    reasons = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found",
               101: "Switching Protocols", 100: "Continue", 500: "Internal Server Error"}
    head = "HTTP/1.1 %d %s\r\n" % (status, reason if reason is not None else reasons.get(status, "X"))
    head += "".join("%s: %s\r\n" % pair for pair in headers)
    head += "Content-Length: %d\r\n\r\n" % len(body)
    return head.encode("latin-1") + body


def ok_response(request):
    """200 "ok" naming the raw backend."""
    return response_bytes(200, b"ok\n", [("X-Backend", "raw")])


def serve_each(answer, after=None):
    """A handler answering every request with `answer(request)` (bytes; None
    closes the connection without answering). `after(connection, request)`
    runs after each answer."""

    def handler(connection):
        while True:
            request = connection.read_request()
            if request is None:
                return
            data = answer(request)
            if data is None:
                return
            connection.send(data)
            if after is not None:
                after(connection, request)
    return handler


def serve_once(data, then="close"):
    """A handler that reads one request, sends `data` and then closes ("close"),
    resets ("reset"), or keeps the connection open until tandem closes it ("hold")."""

    def handler(connection):
        if connection.read_request() is None:
            return
        connection.send(data)
        if then == "reset":
            connection.reset()
        elif then == "hold":
            connection.drain_until_close()
    return handler


# ---- test case base ---------------------------------------------------------------


class TandemTestCase(unittest.TestCase):
    """Helpers that start processes and register their cleanup."""

    def start_worker(self, name="w1", threads=1, listen="127.0.0.1:0"):
        worker = Worker(name, threads, listen)
        self.addCleanup(worker.close)
        return worker

    def start_backend(self, handler=None):
        backend = RawBackend(handler)
        self.addCleanup(backend.close)
        return backend

    def start_tandem(self, config_text):
        tandem = Tandem(config_text)
        self.addCleanup(tandem.close)
        return tandem

    @classmethod
    def start_class_worker(cls, name="w1", threads=1, listen="127.0.0.1:0"):
        worker = Worker(name, threads, listen)
        cls.addClassCleanup(worker.close)
        return worker

    @classmethod
    def start_class_backend(cls, handler=None):
        backend = RawBackend(handler)
        cls.addClassCleanup(backend.close)
        return backend

    @classmethod
    def start_class_tandem(cls, config_text):
        tandem = Tandem(config_text)
        cls.addClassCleanup(tandem.close)
        return tandem

    def client(self, port, timeout=None):
        client = Client(port, timeout)
        self.addCleanup(client.close)
        return client

    def assertTandemBody(self, response, status, words=()):
        """tandem's own short answer: `status`, plain text, naming `words`."""
        self.assertEqual(response.status, status, response)
        self.assertTrue((response.header("content-type") or "").startswith("text/plain"), response)
        text = response.body.decode()
        self.assertTrue(text.startswith("%d " % status), text)
        self.assertLess(len(response.body), 200)
        for word in words:
            self.assertIn(word, text)


# ---- processes seen from /proc ---------------------------------------------


def cpu_seconds(pid):
    """User plus system CPU time of process `pid` so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        # The command name may hold spaces: the fields after it start past ")".
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid):
    """How many descriptors process `pid` has open."""
    return len(os.listdir("/proc/%d/fd" % pid))


def refuses_connections(port):
    """True when a connect to 127.0.0.1:port is refused; False when it is
    accepted, or reset by a listener closing just then."""
    try:
        client = Client(port, timeout=scaled(2))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    client.close()
    return False
