"""Helpers for the operations end-to-end tests: reloads and the ways a config
file changes, the admin API, /status, the Prometheus exposition, log lines and
a continuous load client.

Builds on harness.py (standard library only, 127.0.0.1 only, bounded waits,
processes addressed by PID).
"""

import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from harness import (TANDEM, ChildProcess, Client, IncompleteMessage, ProtocolError, Tandem,
                     free_port, http_request, parse_logfmt, require_tool, scaled, toml_table,
                     wait_until)

TOKEN = "secret"  # the admin token make_config() writes
AUTH = {"Authorization": "Bearer " + TOKEN}

STATES = ("unknown", "up", "down", "ejected", "draining", "disabled", "slow-start")

UTC_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UTC_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ---- config pieces --------------------------------------------------------------


def health_table(cluster="compute", interval="200ms", timeout="150ms", rise=1, fall=3,
                 **more):
    """A fast `[clusters.CLUSTER.health]` table: HTTP GET /healthz every
    `interval`, no jitter, so state changes land within a second."""
    values = {"interval": interval, "timeout": timeout, "fast_interval": interval,
              "down_interval": interval, "jitter": "0s", "rise": rise, "fall": fall}
    values.update(more)
    return toml_table("clusters.%s.health" % cluster, values)


# ---- how a config file changes ---------------------------------------------------


def edit_in_place(path, text):
    """Rewrites `path` in place (same inode: truncate, write, close), as
    `echo > file` or an editor without backup copies does."""
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def edit_by_rename(path, text):
    """Writes `text` to a temporary file next to `path` and renames it over
    `path`, as vim, emacs and most configuration tools save."""
    directory, name = os.path.split(path)
    fd, temporary = tempfile.mkstemp(prefix="." + name + ".", suffix=".swp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(temporary, path)


class ConfigMapDir:
    """A directory laid out as the kubelet writes a ConfigMap volume.

    `NAME` is a symlink to `..data/NAME`, `..data` a symlink to a timestamped
    directory holding the real file. update() writes a new timestamped
    directory, points `..data_tmp` at it, renames `..data_tmp` over `..data`
    and removes the old directory (kubelet's AtomicWriter), so the file
    itself is never written.
    """

    def __init__(self, directory, name, text):
        self.directory = directory
        self.name = name
        self.generation = 0
        self.current = self._write_generation(text)
        os.symlink(self.current, os.path.join(directory, "..data"))
        os.symlink(os.path.join("..data", name), os.path.join(directory, name))

    @property
    def path(self):
        return os.path.join(self.directory, self.name)

    def _write_generation(self, text):
        self.generation += 1
        stamp = "..2026_11_26_10_00_%02d.%d" % (self.generation % 60, self.generation)
        os.mkdir(os.path.join(self.directory, stamp))
        with open(os.path.join(self.directory, stamp, self.name), "w") as f:
            f.write(text)
        return stamp

    def update(self, text):
        previous = self.current
        self.current = self._write_generation(text)
        temporary = os.path.join(self.directory, "..data_tmp")
        os.symlink(self.current, temporary)
        os.rename(temporary, os.path.join(self.directory, "..data"))
        shutil.rmtree(os.path.join(self.directory, previous))


class TandemAt(Tandem):
    """tandem run on a config file the test laid out itself (a ConfigMap
    volume, a symlink) in `directory`, which close() removes."""

    def __init__(self, config_path, directory, start_timeout=None):
        # Tandem.__init__ writes its own file; this one starts on the given path.
        self.dir = directory
        self.config_path = config_path
        ChildProcess.__init__(self, [TANDEM, "-c", config_path], cwd=directory, name="tandem")
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


# ---- reload outcomes in the log ----------------------------------------------------


RELOAD_LINE = r'msg="(config reloaded|reload rejected)'


def wait_reload(tandem, start, timeout=None):
    """Waits for the next reload outcome logged at line index >= `start`.

    Returns (index, ok, fields): `ok` is True for "config reloaded", False for
    "reload rejected"; `fields` the logfmt fields (trigger, errors...).
    """
    index, match = tandem.stderr.wait_for(RELOAD_LINE, timeout or scaled(10), start)
    fields = parse_logfmt(tandem.stderr.lines()[index])
    return index, match.group(1) == "config reloaded", fields


def wait_reload_by(tandem, start, trigger, timeout=None):
    """Waits for the reload outcome that `trigger` ("SIGHUP", "admin", "file
    change") logged at line index >= `start`; returns (index, ok, fields).

    A test that writes the file and then signals or calls the admin API may
    see the watch reload first (it reacts to the write itself when the test
    process is slow to send the signal); such "file change" outcomes before
    the one awaited are skipped -- reload_lines() still counts them.
    """
    while True:
        index, ok, fields = wait_reload(tandem, start, timeout)
        if fields.get("trigger") == trigger:
            return index, ok, fields
        if fields.get("trigger") != "file change":
            raise AssertionError("a reload by %r while waiting for one by %r: %s" %
                                 (fields.get("trigger"), trigger, fields))
        start = index + 1


def reload_lines(tandem, start=0):
    """Every reload outcome logged from line `start` on, as logfmt dicts."""
    return [parse_logfmt(line) for line in tandem.stderr.lines()[start:]
            if re.search(RELOAD_LINE, line)]


# ---- admin API and /status ---------------------------------------------------------


def admin_post(tandem, path, headers=None):
    """POST `path` on the admin listener with the right token (unless
    `headers` says otherwise)."""
    return tandem.admin(path, "POST", AUTH if headers is None else headers)


def backend_action(tandem, address, action, cluster="compute", headers=None):
    return admin_post(tandem, "/admin/clusters/%s/backends/%s/%s" % (cluster, address, action),
                      headers)


def cluster_status(status, name="compute"):
    for cluster in status["clusters"]:
        if cluster["name"] == name:
            return cluster
    raise KeyError("no cluster %r in /status" % name)


def backend_status(status, address, cluster="compute"):
    """The backend `address` of `cluster` in a /status document, or None."""
    for backend in cluster_status(status, cluster)["backends"]:
        if backend["address"] == address:
            return backend
    return None


def wait_state(tandem, address, states, timeout=None, cluster="compute"):
    """Waits until /status shows backend `address` in one of `states`;
    returns its /status entry."""
    states = (states,) if isinstance(states, str) else tuple(states)
    last = [None]

    def reached():
        backend = backend_status(tandem.status_json(), address, cluster)
        last[0] = backend
        return backend if backend is not None and backend["state"] in states else None
    try:
        return wait_until(reached, timeout or scaled(10),
                          "%s to be %s" % (address, "/".join(states)), interval=0.05)
    except TimeoutError as e:
        raise AssertionError("%s; last /status entry: %s" % (e, json.dumps(last[0]))) from None


def last_reason(backend):
    return backend["transitions"][-1]["reason"] if backend["transitions"] else None


# ---- requests ----------------------------------------------------------------------


def answered_by(port, count, target="/"):
    """Sends `count` GETs, each on a new connection; returns {worker: count}."""
    counts = collections.Counter()
    for _ in range(count):
        response = http_request(port, "GET", target)
        counts[response.header("x-worker") if response.status == 200 else response.status] += 1
    return dict(counts)


def wait_serving(port, worker_name, timeout=None):
    """Waits until a request through `port` is answered by `worker_name`:
    with one loop thread, tandem's loop then routes by the state /status
    shows (a health snapshot reaches the loops a moment after /status)."""
    def served():
        response = http_request(port)
        return response.status == 200 and response.header("x-worker") == worker_name
    wait_until(served, timeout or scaled(5), "%s to take traffic" % worker_name, interval=0.02)


def start_sleep(test, tandem, worker, ms, port=None):
    """Sends GET /sleep?ms=`ms` through tandem (listener `port`, default "web")
    and waits until `worker` is answering it; returns the client whose
    response is still to come."""
    client = test.client(port or tandem.port, timeout=scaled(30))
    client.request("GET", "/sleep?ms=%d" % ms)

    def arrived():
        # /stats counts itself as in flight.
        backend = backend_status(tandem.status_json(), worker.address)
        return backend is not None and backend["inflight"] >= 1 and \
            worker.stats()["in_flight"] >= 2
    wait_until(arrived, scaled(5), "the worker to receive /sleep", interval=0.02)
    return client


def start_sleep_anywhere(test, tandem, workers, ms):
    """Sends GET /sleep?ms=`ms` through tandem and waits until one of
    `workers` is answering it; returns (client, that worker)."""
    client = test.client(tandem.port, timeout=scaled(30))
    client.request("GET", "/sleep?ms=%d" % ms)

    def busy():
        status = tandem.status_json()
        for worker in workers:
            backend = backend_status(status, worker.address)
            if backend is not None and backend["inflight"] >= 1 and \
                    worker.stats()["in_flight"] >= 2:
                return worker
        return None
    worker = wait_until(busy, scaled(5), "the /sleep to reach a worker", interval=0.02)
    return client, worker


class LoadClient:
    """Sends GET `target` through tandem continuously until stop(): `keepalive`
    threads each on one keep-alive connection (reopened only when tandem
    answers with `Connection: close`), `fresh` threads a new connection per
    request. Every request must be answered 200; anything else -- another
    status, a reset, a connection closed without an answer, a refused
    connect, a timeout -- is a failure, kept with what happened.

    Bounded: at most `max_seconds` of load, each request within `timeout`;
    `pause` seconds between a thread's requests.
    """

    def __init__(self, port, keepalive=2, fresh=2, target="/", max_seconds=None, timeout=None,
                 pause=0.0):
        self.port = port
        self.pause = pause
        self.target = target
        self.max_seconds = max_seconds or scaled(60)
        self.timeout = timeout or scaled(10)
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = []
        self.workers = collections.Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive_loop, daemon=True)
                         for _ in range(keepalive)]
        self._threads += [threading.Thread(target=self._fresh_loop, daemon=True)
                          for _ in range(fresh)]
        self._started = None

    def start(self):
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _running(self):
        return not self._stop.is_set() and time.monotonic() - self._started < self.max_seconds

    def _record(self, kind, response=None, error=None, sent=None):
        """One request's end; `sent` is when it was sent (time.monotonic())."""
        with self.lock:
            self.requests += 1
            if response is not None and response.status == 200:
                self.workers[response.header("x-worker")] += 1
            else:
                what = error if error is not None else "status %s body %r" % (
                    response.status, response.body[:100])
                self.failures.append("%s %.3f: %s" % (kind, time.time(), what))

    def _keepalive_loop(self):
        client = None
        while self._running():
            sent = time.monotonic()
            try:
                if client is None:
                    client = Client(self.port, self.timeout)
                client.request("GET", self.target)
                response = client.response()
            except (OSError, EOFError, IncompleteMessage, ProtocolError) as e:
                self._record("keep-alive", error="%s: %s" % (type(e).__name__, e), sent=sent)
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(self.pause)
                continue
            self._record("keep-alive", response, sent=sent)
            if (response.header("connection") or "").lower() == "close":
                client.close()
                client = None
            self._stop.wait(self.pause)
        if client is not None:
            client.close()

    def _fresh_loop(self):
        while self._running():
            sent = time.monotonic()
            try:
                response = http_request(self.port, "GET", self.target, timeout=self.timeout)
            except (OSError, EOFError, IncompleteMessage, ProtocolError) as e:
                self._record("new-connection", error="%s: %s" % (type(e).__name__, e),
                             sent=sent)
                continue
            self._record("new-connection", response, sent=sent)
            self._stop.wait(self.pause)

    def wait_requests(self, count, timeout=None):
        """Waits until `count` more requests than now were answered or failed."""
        with self.lock:
            target = self.requests + count
        wait_until(lambda: self.requests >= target, timeout or scaled(10),
                   "%d more requests from the load client" % count)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + scaled(5))
        return self


# ---- Prometheus text -------------------------------------------------------------


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_labels(text):
    labels = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if not match:
            raise ValueError("bad label set %r" % text)
        labels[match.group(1)] = match.group(2).replace('\\"', '"').replace("\\n", "\n") \
            .replace("\\\\", "\\")
        position = match.end()
    return labels


class Scrape:
    """One /metrics exposition: families' TYPE and HELP, and every sample as
    (name, labels, value)."""

    def __init__(self, text):
        self.text = text
        self.types = {}
        self.helps = {}
        self.samples = []
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line.startswith("# HELP "):
                parts = line.split(" ", 3)
                self.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif line.startswith("#"):
                continue
            else:
                match = _SAMPLE.match(line)
                if not match:
                    raise ValueError("not a sample line: %r" % line)
                self.samples.append((match.group(1), parse_labels(match.group(2) or ""),
                                     float(match.group(3))))

    def matching(self, name, **labels):
        return [(n, l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(v2) for k, v2 in labels.items())]

    def value(self, name, **labels):
        """The sum of the samples of `name` whose labels include `labels`;
        None when no sample matches."""
        found = self.matching(name, **labels)
        return sum(v for _, _, v in found) if found else None

    def names(self):
        return {n for n, _, _ in self.samples}


def scrape(tandem):
    response = tandem.admin("/metrics")
    assert response.status == 200, response
    return Scrape(response.body.decode())


def wait_metric(tandem, predicate, name, timeout=None, what=None, **labels):
    """Waits until predicate(value of `name` with `labels`) is true; returns the value."""
    last = [None]

    def check():
        last[0] = scrape(tandem).value(name, **labels)
        return last[0] is not None and predicate(last[0])
    try:
        wait_until(check, timeout or scaled(10), what or "metric %s%s" % (name, labels),
                   interval=0.05)
    except TimeoutError as e:
        raise AssertionError("%s; last value %r" % (e, last[0])) from None
    return last[0]


def promtool():
    """The promtool binary."""
    return require_tool("prometheus", "promtool")


def promtool_check(text):
    """Runs `promtool check metrics` on `text`; returns CompletedProcess."""
    return subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=scaled(30))


# ---- log lines -----------------------------------------------------------------------


_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?:\s+|$)')


def parse_logfmt_strict(line):
    """Parses a whole logfmt line (key=value, key="quoted \\"value\\"") into a
    list of (key, value) pairs; raises ValueError when any part of the line
    is not a pair."""
    pairs = []
    position = 0
    while position < len(line):
        match = _LOGFMT_PAIR.match(line, position)
        if not match or match.end() == position:
            raise ValueError("not logfmt at column %d: %r" % (position + 1, line))
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r'\\(.)', lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(
                m.group(1), m.group(1)), value[1:-1])
        pairs.append((match.group(1), value))
        position = match.end()
    return pairs


# ---- headless Chromium ------------------------------------------------------------------


def chromium():
    """The Chromium binary."""
    return require_tool("chromium", "chromium", "chromium-browser", "google-chrome")


def run_chromium(url, args, timeout=None):
    """Runs headless Chromium on `url` with extra `args`, its own throw-away
    profile and no network of its own (no updates, sync or QUIC); returns
    CompletedProcess. The browser runs in its own process group, which is
    killed if it outlives `timeout`."""
    profile = tempfile.mkdtemp(prefix="tandem-e2e-chromium-")
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--disable-dev-shm-usage", "--user-data-dir=" + profile] + list(args) + [url]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout or scaled(60))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        stdout, stderr = process.communicate()
        raise TimeoutError("chromium did not finish:\n" + stderr.decode()[-3000:]) from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def artifacts_dir():
    """Where tests leave files for people to look at: $TANDEM_ARTIFACTS (CTest
    sets it to the build folder), else the current directory."""
    directory = os.environ.get("TANDEM_ARTIFACTS") or os.getcwd()
    os.makedirs(directory, exist_ok=True)
    return directory
