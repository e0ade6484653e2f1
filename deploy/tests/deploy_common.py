"""Helpers shared by the deploy tests: paths, a child process whose log lines
can be awaited, tandem on ephemeral loopback ports, plain HTTP GETs, TOML
durations, and a runner that tells CTest when everything was skipped.

Python 3 standard library only. Every wait is bounded; processes are stopped
by PID; temporary directories are removed by the tests that make them.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
ROOT = os.path.dirname(DEPLOY)

# The end-to-end tests' harness (standard library only) provides the binaries'
# paths, timeouts and parsing helpers.
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import (TANDEM, TANDEM_WORKER,  # noqa: E402,F401
                     parse_logfmt as logfmt, require_tool, scaled, wait_until)

# CTest's SKIP_RETURN_CODE for the deploy tests.
SKIP_EXIT = 77


# ---- TOML ---------------------------------------------------------------------------

_DURATION_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text):
    """A tandem duration string ("250ms", "1m30s", "0s") in seconds."""
    terms = _DURATION_TERM.findall(text)
    if not terms or "".join(a + b for a, b in terms) != text:
        raise ValueError("not a duration: %r" % text)
    return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in terms)


def load_toml(text):
    return tomllib.loads(text)


def global_timing(config):
    """(drain_delay, grace_period) of a parsed config, in seconds, with
    tandem's defaults (0 s and 10 s) where the keys are absent."""
    g = config.get("global", {})
    return (duration_seconds(g.get("drain_delay", "0s")),
            duration_seconds(g.get("grace_period", "10s")))


def with_loopback_ports(text):
    """`text` with every `listen = "..."` set to an ephemeral loopback port,
    so that a shipped config can run hermetically."""
    return re.sub(r'(?m)^(\s*listen\s*=\s*)"[^"]*"', r'\g<1>"127.0.0.1:0"', text)


def check_config(path):
    """Runs `tandem -c PATH --check`; returns CompletedProcess (text)."""
    return subprocess.run([TANDEM, "-c", path, "--check"], capture_output=True, text=True,
                          timeout=scaled(20))


# ---- processes ----------------------------------------------------------------------


class Proc:
    """A child process; its stderr (and optionally stdout) collected line by line."""

    def __init__(self, argv, env=None, cwd=None, name="child", stdout=True, stdin_pipe=False):
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                     stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self._lines = {"stderr": [], "stdout": []}
        self._times = {"stderr": [], "stdout": []}  # monotonic arrival of each line
        self._cond = threading.Condition()
        self._threads = [self._reader(self.proc.stderr, "stderr")]
        if stdout:
            self._threads.append(self._reader(self.proc.stdout, "stdout"))

    def _reader(self, pipe, stream):
        def run():
            for raw in iter(pipe.readline, b""):
                with self._cond:
                    self._lines[stream].append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._times[stream].append(time.monotonic())
                    self._cond.notify_all()
            pipe.close()

        thread = threading.Thread(target=run, name="%s-%s" % (self.name, stream), daemon=True)
        thread.start()
        return thread

    def lines(self, stream="stderr"):
        with self._cond:
            return list(self._lines[stream])

    def timed_lines(self, stream="stderr"):
        """[(monotonic arrival time, line)] read so far."""
        with self._cond:
            return list(zip(self._times[stream], self._lines[stream]))

    def wait_for(self, pattern, timeout, start=0, stream="stderr"):
        """Waits for a line at index >= `start` matching regex `pattern`;
        returns (index, match). TimeoutError when none comes in time."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                lines = self._lines[stream]
                while index < len(lines):
                    match = regex.search(lines[index])
                    if match:
                        return index, match
                    index += 1
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive_readers()):
                    raise TimeoutError("%s: no line matched %r within %.1fs\n%s" %
                                       (self.name, pattern, timeout, self.output()))
                self._cond.wait(min(left, 0.1))

    def _alive_readers(self):
        return any(t.is_alive() for t in self._threads)

    def running(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """The exit status; TimeoutError when still running after `timeout`."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("%s (pid %d) still running after %.1fs" %
                               (self.name, self.pid, timeout)) from None
        for thread in self._threads:
            thread.join(scaled(5))
        return code

    def stop(self, timeout=None):
        """SIGTERM, then SIGKILL when it has not exited in time; the exit status."""
        timeout = scaled(15) if timeout is None else timeout
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.kill()
            return None

    def kill(self):
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            pass

    def output(self):
        return "--- %s stderr ---\n%s\n--- stdout ---\n%s" % (
            self.name, "\n".join(self.lines("stderr")[-200:]),
            "\n".join(self.lines("stdout")[-50:]))


def hermetic_env():
    """The environment without a service manager's variables, so that no
    tandem under test notifies the manager the test itself may run under."""
    return {k: v for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}


class TandemProc(Proc):
    """tandem on a config file; listener and admin ports read from its log."""

    def __init__(self, config_path, env=None, argv_prefix=(), cwd=None):
        super().__init__(list(argv_prefix) + [TANDEM, "-c", config_path],
                         env=hermetic_env() if env is None else env, cwd=cwd,
                         name="tandem")
        self.ports = {}
        self.admin_port = None
        try:
            self.wait_for(r'msg="tandem started"', scaled(20))
        except TimeoutError:
            self.kill()
            raise
        for line in self.lines():
            fields = logfmt(line)
            if fields.get("msg") == "listener ready":
                self.ports[fields["listener"]] = int(fields["address"].rsplit(":", 1)[1])
            elif fields.get("msg") == "admin listener ready":
                self.admin_port = int(fields["address"].rsplit(":", 1)[1])


def http_get(port, path, host="127.0.0.1", timeout=5.0):
    """GET http://HOST:PORT/PATH on a new connection; returns (status, body bytes)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ---- running a test module ----------------------------------------------------------


def main():
    """Runs the calling module's tests (or the test classes and methods named
    on the command line); exits 0 when they pass, 1 when one fails, SKIP_EXIT
    when every test was skipped (CTest then shows "Skipped")."""
    module = sys.modules["__main__"]
    if len(sys.argv) > 1:
        suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:], module)
    else:
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    if not result.wasSuccessful():
        sys.exit(1)
    # A class skipped in setUpClass counts as a skip without a test run.
    if result.skipped and len(result.skipped) >= result.testsRun:
        print("SKIPPED: " + "; ".join(sorted({reason for _, reason in result.skipped})))
        sys.exit(SKIP_EXIT)
    sys.exit(0)
