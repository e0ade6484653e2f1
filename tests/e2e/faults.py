"""Fault injection for tandem's end-to-end tests: a bounded load client, workers
on chosen ports, process faults by PID, and readers for /status, the access log
and the metrics that measure what a fault cost.

Builds on harness.py (standard library only, 127.0.0.1 only). Every process a
helper starts or signals is one the test started itself, addressed by PID.
"""

import calendar
import collections
import re
import signal
import socket
import threading
import time

from harness import (ChildProcess, Client, Deadline, IncompleteMessage, ProtocolError,
                     TANDEM_WORKER, TandemTestCase, Worker, free_port, http_request, scaled,
                     toml_table, wait_until)

# ---- time --------------------------------------------------------------------


def parse_utc(text):
    """Unix seconds (float) from "2026-11-26T10:00:01.234Z" (milliseconds optional)."""
    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", text)
    if not match:
        raise ValueError("not a UTC timestamp: %r" % text)
    parts = [int(p) for p in match.groups()[:6]]
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    return calendar.timegm(tuple(parts) + (0, 0, 0)) + fraction


# ---- the load -------------------------------------------------------------------


class Outcome:
    """One client request: when it started (wall clock), its status (None when
    the exchange failed), the worker that answered, and the error if any."""

    __slots__ = ("at", "status", "worker", "error", "retry_after", "seconds")

    def __init__(self, at, status, worker, error=None, retry_after=None, seconds=None):
        self.at = at
        self.status = status
        self.worker = worker
        self.error = error
        self.retry_after = retry_after
        self.seconds = seconds if seconds is not None else time.time() - at

    @property
    def ok(self):
        return self.status is not None and 200 <= self.status < 300

    def __repr__(self):
        return "<%.3f %s %s %s>" % (self.at, self.status, self.worker, self.error or "")


class LoadClient:
    """GETs sent continuously through tandem on `connections` keep-alive
    connections, one thread each, until stop(), `max_requests` or `duration`.

    A request fails when it gets no complete response or a status outside
    2xx. Every outcome is kept, with the wall-clock time it was sent, so a
    test can split them around the moment of a fault. `pause` seconds between
    requests keep a thread from taking a whole CPU.
    """

    def __init__(self, port, connections=4, target="/", headers=None, max_requests=200000,
                 duration=None, pause=0.001, request_timeout=None):
        self.port = port
        self.connections = connections
        self.target = target
        self.headers = headers
        self.max_requests = max_requests
        self.deadline = Deadline(duration if duration is not None else scaled(120))
        self.pause = pause
        self.request_timeout = request_timeout or scaled(10)
        self._lock = threading.Lock()
        self._outcomes = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="load-%d" % i, daemon=True)
                         for i in range(connections)]

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def _record(self, outcome):
        with self._lock:
            self._outcomes.append(outcome)
            if len(self._outcomes) >= self.max_requests:
                self._stop.set()

    def _run(self):
        client = None
        while not self._stop.is_set() and not self.deadline.expired():
            at = time.time()
            try:
                if client is None:
                    client = Client(self.port, self.request_timeout)
                response = client.get(self.target, self.headers)
                self._record(Outcome(at, response.status, response.header("x-worker"),
                                     retry_after=response.header("retry-after")))
                if (response.header("connection") or "").lower() == "close":
                    client.close()
                    client = None
            except (OSError, EOFError, IncompleteMessage, ProtocolError, socket.timeout) as e:
                self._record(Outcome(at, None, None, "%s: %s" % (type(e).__name__, e)))
                if client is not None:
                    client.close()
                client = None
            if self.pause:
                self._stop.wait(self.pause)
        if client is not None:
            client.close()

    def stop(self):
        """Stops the threads (each finishes its request) and returns the outcomes."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.request_timeout + scaled(5))
        return self.outcomes()

    def outcomes(self):
        with self._lock:
            return list(self._outcomes)

    def count(self):
        with self._lock:
            return len(self._outcomes)

    def wait_requests(self, count, timeout=None, what=None):
        """Waits until `count` requests more than now have ended."""
        target = self.count() + count
        wait_until(lambda: self.count() >= target, timeout or scaled(20),
                   what or "%d more client requests" % count)

    def wait_done(self, timeout=None):
        """Waits until max_requests have ended (or the duration passed)."""
        wait_until(lambda: not self.running(), timeout or scaled(60),
                   "the load to finish %d requests" % self.max_requests)

    def running(self):
        return any(thread.is_alive() for thread in self._threads)


def failures(outcomes):
    return [o for o in outcomes if not o.ok]


def by_worker(outcomes):
    """Successful requests per X-Worker name."""
    return collections.Counter(o.worker for o in outcomes if o.ok)


def between(outcomes, start, end=None):
    """The outcomes sent in [start, end) (wall-clock seconds)."""
    return [o for o in outcomes if o.at >= start and (end is None or o.at < end)]


def parallel_gets(port, targets, headers=None, timeout=None):
    """Sends one GET per target at once, each on its own connection; returns
    the outcomes in the order of `targets`."""
    results = [None] * len(targets)
    barrier = threading.Barrier(len(targets))

    def one(index, target):
        at = time.time()
        try:
            with Client(port, timeout or scaled(20)) as client:
                barrier.wait(scaled(10))
                response = client.get(target, headers)
            results[index] = Outcome(at, response.status, response.header("x-worker"),
                                     retry_after=response.header("retry-after"))
        except (OSError, EOFError, IncompleteMessage, ProtocolError, socket.timeout,
                threading.BrokenBarrierError) as e:
            results[index] = Outcome(at, None, None, "%s: %s" % (type(e).__name__, e))

    threads = [threading.Thread(target=one, args=(i, t), daemon=True)
               for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join((timeout or scaled(20)) + scaled(15))
    return results


# ---- workers and processes -----------------------------------------------------------


class PortWorker(Worker):
    """A tandem-worker on a port chosen by the test (to restart a killed
    worker where tandem expects it)."""

    def __init__(self, name, port, threads=1):
        # The old process's port may take a moment to be released.
        deadline = Deadline(scaled(10))
        while True:
            ChildProcess.__init__(
                self, [TANDEM_WORKER, "--listen", "127.0.0.1:%d" % port, "--name", name,
                       "--threads", str(threads)], name="worker-" + name)
            self.worker_name = name
            try:
                _, match = self.stdout.wait_for(r"listening on 127\.0\.0\.1:(\d+)", scaled(15))
                break
            except TimeoutError:
                output = self.output()
                self.kill()
                if "Address already in use" not in output or deadline.expired():
                    raise RuntimeError("tandem-worker did not start on port %d:\n%s"
                                       % (port, output)) from None
                time.sleep(0.1)
        self.port = int(match.group(1))
        self.address = "127.0.0.1:%d" % self.port


def worker_control(worker, what, status):
    """POST /control/<what>?status=N straight to the worker."""
    response = http_request(worker.port, "POST", "/control/%s?status=%d" % (what, status),
                            body=b"")
    if response.status != 200:
        raise AssertionError("worker %s refused /control/%s: %r"
                             % (worker.worker_name, what, response))


def process_gone(pid):
    """True when `pid` has exited (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def process_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


# ---- what tandem says ----------------------------------------------------------------


def cluster_status(tandem, name="compute"):
    for cluster in tandem.status_json()["clusters"]:
        if cluster["name"] == name:
            return cluster
    raise KeyError(name)


def backend_status(tandem, address, cluster=None):
    for backend in (cluster or cluster_status(tandem))["backends"]:
        if backend["address"] == address:
            return backend
    raise KeyError(address)


def wait_backends(tandem, predicate, timeout=None, what="backend states"):
    """Waits until predicate({address: backend status}) holds; returns the cluster."""
    def check():
        cluster = cluster_status(tandem)
        backends = {b["address"]: b for b in cluster["backends"]}
        return cluster if predicate(backends) else None
    return wait_until(check, timeout or scaled(10), what, interval=0.02)


def wait_state(tandem, address, states, timeout=None):
    """Waits until the backend's state is one of `states`; returns its status."""
    states = (states,) if isinstance(states, str) else tuple(states)
    cluster = wait_backends(tandem, lambda b: b[address]["state"] in states, timeout,
                            "%s to be %s" % (address, "|".join(states)))
    return backend_status(tandem, address, cluster)


def wait_all_up(tandem, timeout=None):
    return wait_backends(tandem, lambda b: all(x["state"] == "up" for x in b.values()),
                         timeout, "every backend up")


def first_transition(backend, to_states, after):
    """The first transition of `backend` to one of `to_states` at or after
    `after` (unix seconds, a little slack for clock rounding), or None."""
    to_states = (to_states,) if isinstance(to_states, str) else tuple(to_states)
    for transition in backend["transitions"]:
        if transition["to"] in to_states and parse_utc(transition["at"]) >= after - 0.002:
            return transition
    return None


def detection_seconds(tandem, address, to_states, fault_at):
    """Seconds from the fault to tandem's first transition of `address` to
    one of `to_states`, or None when there is none yet."""
    transition = first_transition(backend_status(tandem, address), to_states, fault_at)
    return None if transition is None else parse_utc(transition["at"]) - fault_at


ACCESS_LINE = re.compile(
    r'^(?P<time>\S+) (?P<client>\S+) "(?P<method>\S+) (?P<target>\S+) HTTP/1\.\d" '
    r'(?P<status>\d+) (?P<bytes>\d+) (?P<duration>\S+) (?P<listener>\S+) (?P<cluster>\S+) '
    r'(?P<backend>\S+) tries=(?P<tries>\d+) flags=(?P<flags>\S+)'
    r'(?: not_retried="(?P<not_retried>[^"]*)")?'
    r'(?: failed_tries=(?P<failed_tries>\S+))?')


class AccessEntry:
    def __init__(self, match):
        self.line = match.group(0)
        self.at = parse_utc(match.group("time"))  # when it was logged: the end
        self.started = self.at - float(match.group("duration"))
        self.status = int(match.group("status"))
        self.target = match.group("target")
        self.backend = match.group("backend")
        self.tries = int(match.group("tries"))
        flags = match.group("flags")
        self.flags = set() if flags == "-" else set(flags.split(","))
        self.not_retried = match.group("not_retried")
        # "backend:CODE,...": every try that failed, in order.
        self.failed_tries = match.group("failed_tries")

    @property
    def retried(self):
        return bool(self.flags & {"RT", "R5"})


def access_entries(tandem, start=0):
    """Parsed access log lines (from line index `start` on)."""
    entries = []
    for line in tandem.access_lines()[start:]:
        match = ACCESS_LINE.match(line)
        if match:
            entries.append(AccessEntry(match))
    return entries


def wait_access_count(tandem, count, start=0, timeout=None):
    """Waits until the access log holds `count` lines from `start` on (tandem
    writes them within 200 ms)."""
    wait_until(lambda: len(tandem.access_lines()) - start >= count, timeout or scaled(5),
               "%d access log lines" % count)


# ---- configs ----------------------------------------------------------------------


def health_table(**values):
    """A [clusters.compute.health] table."""
    return toml_table("clusters.compute.health", values)


def outlier_table(**values):
    return toml_table("clusters.compute.outlier", values)


# ---- reports -------------------------------------------------------------------------


def report(scenario, **numbers):
    """One line per scenario for the log of the test run (and the CTest output)."""
    fields = " ".join("%s=%s" % (k, ("%.3f" % v) if isinstance(v, float) else v)
                      for k, v in numbers.items())
    print("\nSCENARIO %s: %s" % (scenario, fields), flush=True)


class FaultTestCase(TandemTestCase):
    """Test case helpers that start load and inject faults, every one undone
    in cleanup even when the test fails."""

    def start_load(self, port, **options):
        load = LoadClient(port, **options).start()
        self.addCleanup(load.stop)
        return load

    def start_port_worker(self, name, port):
        worker = PortWorker(name, port)
        self.addCleanup(worker.close)
        return worker

    def freeze(self, worker):
        """SIGSTOP; SIGCONT comes in cleanup (before the worker is stopped,
        cleanups running last-in first-out) unless thaw() came first."""
        worker.send_signal(signal.SIGSTOP)
        self.addCleanup(worker.send_signal, signal.SIGCONT)
        return time.time()

    def thaw(self, worker):
        worker.send_signal(signal.SIGCONT)
        return time.time()

    def crash(self, worker):
        """SIGKILL, as a crash; returns when (wall clock) it was sent."""
        at = time.time()
        worker.kill()
        return at
