"""deploy/systemd/tandem.service: `systemd-analyze verify` and `security`
accept it, its timing fits the shipped config, tandem's system calls stay
inside its SystemCallFilter, and tandem speaks the notify protocol the unit's
Type=notify and WatchdogSec rely on, to a NOTIFY_SOCKET the test binds itself.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from deploy_common import (DEPLOY, TANDEM, TANDEM_WORKER, Proc, TandemProc, global_timing,
                           http_get, load_toml, main, require_tool, scaled, wait_until)

UNIT = os.path.join(DEPLOY, "systemd", "tandem.service")
DEFAULT_CONFIG = os.path.join(DEPLOY, "tandem.toml")
INSTALLED_BINARY = "/usr/local/bin/tandem"


def unit_settings(path):
    """{section: {key: [values in order]}} of a unit file (continuations joined)."""
    sections = {}
    current = None
    pending = ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if pending:
                line = pending + line.lstrip()
                pending = ""
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.endswith("\\"):
                pending = stripped[:-1] + " "
                continue
            if stripped.startswith("[") and stripped.endswith("]"):
                current = sections.setdefault(stripped[1:-1], {})
                continue
            key, _, value = stripped.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value):
    """A systemd time span ("30s", "1min 30s", "500ms", "2") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(amount) * units[unit or "s"]
    return total


def unit_for_this_build(directory):
    """A copy of the unit whose commands run the binary under test, since
    `systemd-analyze verify` wants ExecStart's binary to exist."""
    with open(UNIT) as f:
        text = f.read()
    path = os.path.join(directory, "tandem.service")
    with open(path, "w") as f:
        f.write(text.replace(INSTALLED_BINARY, TANDEM))
    return path


def verify(path):
    """`systemd-analyze verify PATH`: (exit status, the lines about the unit)."""
    result = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                            text=True, timeout=scaled(60))
    name = os.path.basename(path)
    # Warnings do not change the exit status (a bad Type= is "ignoring"): any
    # line naming the unit counts.
    lines = [l for l in (result.stdout + result.stderr).splitlines() if name in l]
    return result.returncode, lines


def need_systemd_analyze():
    require_tool("systemd", "systemd-analyze")


class UnitFileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.settings = unit_settings(UNIT)
        cls.service = cls.settings["Service"]

    def one(self, key):
        values = self.service.get(key)
        self.assertTrue(values, "[Service] %s is missing" % key)
        return values[-1]

    def test_it_is_a_notify_service_that_reloads_with_sighup_and_restarts_on_failure(self):
        self.assertEqual(self.one("Type"), "notify")
        self.assertEqual(self.one("ExecStart"), INSTALLED_BINARY + " -c /etc/tandem/tandem.toml")
        self.assertEqual(self.one("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(self.one("Restart"), "on-failure")
        self.assertGreater(seconds(self.one("WatchdogSec")), 0)
        self.assertIn(self.one("NotifyAccess"), ("main", "exec"))
        self.assertEqual(self.one("KillSignal"), "SIGTERM")

    def test_its_stop_timeout_covers_drain_delay_and_grace_period_of_the_config(self):
        with open(DEFAULT_CONFIG) as f:
            drain_delay, grace_period = global_timing(load_toml(f.read()))
        self.assertGreaterEqual(seconds(self.one("TimeoutStopSec")),
                                drain_delay + grace_period + 5)

    def test_it_runs_sandboxed_with_only_cap_net_bind_service(self):
        for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("NoNewPrivileges", "yes"),
                           ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                           ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                           ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                           ("SystemCallArchitectures", "native")):
            self.assertEqual(self.one(key), value, key)
        self.assertGreaterEqual(int(self.one("LimitNOFILE").split(":")[-1]), 65536)
        self.assertIn("@system-service", self.service["SystemCallFilter"])


class SystemdAnalyzeTest(unittest.TestCase):
    def setUp(self):
        need_systemd_analyze()
        self.dir = tempfile.mkdtemp(prefix="tandem-deploy-systemd-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_systemd_analyze_verify_accepts_the_unit(self):
        code, lines = verify(unit_for_this_build(self.dir))
        self.assertEqual((code, lines), (0, []))

    def test_the_verify_check_notices_a_bad_setting(self):
        # The check above would pass on a silent verify: a unit with a setting
        # systemd 252 does not know must fail it.
        path = unit_for_this_build(self.dir)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("Type=notify\n", "Type=notify-reload\n"))
        code, lines = verify(path)
        self.assertTrue(code != 0 or lines, "Type=notify-reload went unnoticed")

    def test_systemd_analyze_security_rates_the_sandbox_ok(self):
        path = unit_for_this_build(self.dir)
        result = subprocess.run(["systemd-analyze", "security", "--offline=true",
                                 "--threshold=20", path],
                                capture_output=True, text=True, timeout=scaled(60))
        overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        self.assertIsNotNone(overall, result.stdout + result.stderr)
        print("\nsystemd-analyze security: exposure %s" % overall.group(1))
        self.assertEqual(result.returncode, 0, "exposure above 2.0:\n" + result.stdout)


# ---- the system call filter -----------------------------------------------------


def syscall_groups():
    """{"@group": {members}} from `systemd-analyze syscall-filter`."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         timeout=scaled(30), check=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.add(line.strip())
    return groups


def expand(name, groups):
    if not name.startswith("@"):
        return {name}
    result = set()
    for member in groups[name]:
        result |= expand(member, groups)
    return result


def allowed_syscalls(filters, groups):
    """What SystemCallFilter= lines (in order) allow, for a unit whose first
    line is an allow-list: later lines add to it, or take from it with "~".
    @default is always allowed (systemd.exec(5))."""
    if not filters or filters[0].startswith("~"):
        raise AssertionError("the unit's SystemCallFilter should start with an allow-list")
    allowed = expand("@default", groups)
    for line in filters:
        names = set()
        for word in line.lstrip("~").split():
            names |= expand(word, groups)
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


def traced_syscalls(trace_file):
    names = set()
    with open(trace_file) as f:
        for line in f:
            match = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
            if match and not line.split(None, 1)[1].startswith("+++") and \
                    not line.split(None, 1)[1].startswith("---"):
                names.add(match.group(1))
    return names


def admin_post(port, path, token):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, headers={"Authorization": "Bearer " + token})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def kill_if_running(pid, marker):
    """SIGKILL to `pid` if it still runs a command line holding `marker` (our
    own temporary directory), so that a reused PID is never hit."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if marker.encode() not in f.read():
                return
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


class SyscallFilterTest(unittest.TestCase):
    """tandem's system calls through a start, a proxied request, admin calls,
    a cold-backup activation (posix_spawn), reloads by SIGHUP, admin and file
    change, notify messages and a drained stop, all under strace: each one
    must be allowed by the unit's SystemCallFilter, or systemd would answer it
    with EPERM (SystemCallErrorNumber) in production."""

    def setUp(self):
        need_systemd_analyze()
        if os.environ.get("TANDEM_E2E_SANITIZED") == "1":
            self.skipTest("a sanitizer build makes system calls the release binary does not")
        require_tool("strace", "strace")
        self.dir = tempfile.mkdtemp(prefix="tandem-deploy-seccomp-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        probe = subprocess.run(["strace", "-qq", "-o", os.devnull, "true"], capture_output=True,
                               text=True, timeout=scaled(20))
        if probe.returncode != 0:
            self.skipTest("strace cannot trace here: " + probe.stderr.strip())

    def test_every_system_call_tandem_makes_is_allowed_by_the_unit(self):
        worker = Proc([TANDEM_WORKER, "--listen", "127.0.0.1:0", "--name", "w1"], name="worker")
        self.addCleanup(worker.stop)
        _, match = worker.wait_for(r"listening on 127\.0\.0\.1:(\d+)", scaled(15), stream="stdout")
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        self.addCleanup(refused.close)
        config = os.path.join(self.dir, "tandem.toml")
        text = CONFIG_WITH_COLD_BACKUP % {
            "primary": "127.0.0.1:%d" % refused.getsockname()[1],
            "backup": "127.0.0.1:" + match.group(1),
            "access_log": os.path.join(self.dir, "access.log"),
        }
        with open(config, "w") as f:
            f.write(text)
        notify = NotifySocket(self.dir)
        self.addCleanup(notify.close)
        # A datagram queue nobody reads fills up (10 messages) and then blocks
        # sd_notify(), and with it tandem's control loop: read as systemd does.
        self.addCleanup(notify.read_in_background())
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
        trace = os.path.join(self.dir, "trace")
        tandem = TandemProc(config, env=env, cwd=self.dir,
                            argv_prefix=["strace", "-f", "-qq", "-o", trace, "--"])
        self.addCleanup(tandem.kill)
        pid = wait_until(lambda: children_of(tandem.pid), scaled(10), "tandem under strace")[0]
        # Killing strace would leave its tracee running: tandem is stopped by its own PID.
        self.addCleanup(kill_if_running, pid, self.dir)

        tandem.wait_for(r'msg="activate command succeeded"', scaled(20))
        status = wait_until(lambda: http_get(tandem.ports["web"], "/")[0] == 200, scaled(20),
                            "a request served by the activated backup")
        self.assertTrue(status)
        for path in ("/healthz", "/readyz", "/status", "/metrics", "/"):
            self.assertEqual(http_get(tandem.admin_port, path)[0], 200, path)
        start = len(tandem.lines())
        os.kill(pid, signal.SIGHUP)
        start = tandem.wait_for(r'msg="config reloaded"', scaled(10), start)[0] + 1
        with open(config, "a") as f:
            f.write("\n# an edit\n")
        start = tandem.wait_for(r'msg="config reloaded"', scaled(10), start)[0] + 1
        self.assertEqual(admin_post(tandem.admin_port, "/admin/reload", "secret"), 200)
        tandem.wait_for(r'msg="config reloaded"', scaled(10), start)
        os.kill(pid, signal.SIGTERM)
        try:
            code = tandem.wait(scaled(30))
        except TimeoutError as e:
            self.fail("%s\n%s" % (e, tandem.output()))
        self.assertEqual(code, 0, tandem.output())

        groups = syscall_groups()
        allowed = allowed_syscalls(unit_settings(UNIT)["Service"]["SystemCallFilter"], groups)
        used = traced_syscalls(trace)
        self.assertIn("epoll_wait", used, "the trace holds tandem's calls")
        self.assertEqual(sorted(used - allowed), [],
                         "system calls the unit's SystemCallFilter refuses")


CONFIG_WITH_COLD_BACKUP = """
[global]
threads = 2
grace_period = "2s"
drain_delay = "200ms"
access_log = "%(access_log)s"

[admin]
listen = "127.0.0.1:0"
token = "secret"

[listeners.web]
listen = "127.0.0.1:0"
cluster = "compute"

[clusters.compute]
policy = "primary-backup"
min_active = 1

[clusters.compute.health]
interval = "200ms"
timeout = "150ms"
rise = 1
fall = 1

[[clusters.compute.backends]]
address = "%(primary)s"

[[clusters.compute.backends]]
address = "%(backup)s"
role = "backup"
standby = "cold"
activate = "true"
deactivate = "true"
"""


# ---- the notify protocol --------------------------------------------------------


class NotifySocket:
    """A Unix datagram socket standing in for systemd's NOTIFY_SOCKET; every
    message comes with the sender's PID (SO_PASSCRED), as systemd sees it."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout):
        """(monotonic arrival time, {key: value}, sender pid), or None after `timeout`."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        arrived = time.monotonic()
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return arrived, fields, pid

    def next(self, timeout, what):
        message = self.receive(timeout)
        if message is None:
            raise AssertionError("no notify message within %.1fs (expected %s)" % (timeout, what))
        return message

    def drain(self, seconds_):
        """Every message that arrives within `seconds_`."""
        end = time.monotonic() + seconds_
        messages = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return messages
            message = self.receive(left)
            if message is not None:
                messages.append(message)

    def read_in_background(self):
        """Reads and drops every message on a thread; returns the function
        that stops it."""
        stop = threading.Event()

        def run():
            while not stop.is_set():
                self.receive(0.1)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def stop_reading():
            stop.set()
            thread.join(5)

        return stop_reading

    def close(self):
        self.sock.close()


NOTIFY_CONFIG = """
[global]
threads = 1
grace_period = "2s"
drain_delay = "%(drain_delay)s"
access_log = "off"

[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"
cluster = "compute"

[clusters.compute]

[[clusters.compute.backends]]
address = "127.0.0.1:%(port)d"
"""


def monotonic_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class NotifyProtocolTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tandem-deploy-notify-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.notify = NotifySocket(self.dir)
        self.addCleanup(self.notify.close)
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))  # a backend port nobody listens on
        self.addCleanup(holder.close)
        self.backend_port = holder.getsockname()[1]
        self.config = os.path.join(self.dir, "tandem.toml")

    def start(self, drain_delay="0s", watchdog_usec=None, watchdog_pid=None):
        """tandem with NOTIFY_SOCKET (and the watchdog variables); with
        watchdog_pid "self" it is tandem's own PID, as systemd sets it."""
        self.write_config(drain_delay)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        prefix = []
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid == "self":
            # The shell's PID is tandem's after exec.
            prefix = ["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@"']
        elif watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        tandem = TandemProc(self.config, env=env, cwd=self.dir, argv_prefix=prefix)
        self.addCleanup(tandem.kill)
        return tandem

    def write_config(self, drain_delay="0s", extra=""):
        with open(self.config + ".tmp", "w") as f:
            f.write(NOTIFY_CONFIG % {"drain_delay": drain_delay, "port": self.backend_port} + extra)
        os.replace(self.config + ".tmp", self.config)

    def expect(self, tandem, key, timeout=None, what=None):
        _, fields, pid = self.notify.next(scaled(timeout or 10), what or key)
        self.assertIn(key, fields, "expected %s, got %r" % (key, fields))
        self.assertEqual(pid, tandem.pid, "sent by tandem's main process (NotifyAccess=main)")
        return fields

    def test_ready_comes_once_the_listeners_accept_connections(self):
        tandem = self.start()
        fields = self.expect(tandem, "READY")
        self.assertEqual(fields, {"READY": "1", "STATUS": "serving"})
        with socket.create_connection(("127.0.0.1", tandem.ports["web"]), timeout=5):
            pass
        self.assertEqual(http_get(tandem.admin_port, "/readyz")[0], 200)
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_a_sighup_reload_is_framed_by_reloading_and_ready(self):
        tandem = self.start()
        self.expect(tandem, "READY")
        before = monotonic_usec()
        tandem.signal(signal.SIGHUP)
        fields = self.expect(tandem, "RELOADING")
        after = monotonic_usec()
        self.assertEqual(fields["RELOADING"], "1")
        # Type=notify-reload (systemd 253+) wants the time the reload began.
        self.assertTrue(before <= int(fields["MONOTONIC_USEC"]) <= after,
                        (before, fields["MONOTONIC_USEC"], after))
        self.assertEqual(self.expect(tandem, "READY")["READY"], "1")
        tandem.wait_for(r'msg="config reloaded"', scaled(10))
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_a_rejected_reload_still_ends_with_ready(self):
        tandem = self.start()
        self.expect(tandem, "READY")
        self.write_config(extra="\n[clusters.compute.health]\nrise = 0\n")
        # The file watch may see the edit first; either way one reload starts.
        tandem.signal(signal.SIGHUP)
        self.expect(tandem, "RELOADING")
        self.assertEqual(self.expect(tandem, "READY")["READY"], "1",
                         "systemd would stay in 'reloading' without READY=1")
        tandem.wait_for(r'msg="reload rejected', scaled(10))
        with socket.create_connection(("127.0.0.1", tandem.ports["web"]), timeout=5):
            pass
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_a_config_file_change_reloads_with_the_same_messages(self):
        tandem = self.start()
        self.expect(tandem, "READY")
        self.write_config(drain_delay="100ms")
        self.expect(tandem, "RELOADING", what="RELOADING after a file change")
        self.expect(tandem, "READY")
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_watchdog_pings_come_at_half_the_watchdog_interval(self):
        watchdog = 0.6  # seconds
        tandem = self.start(watchdog_usec=int(watchdog * 1e6), watchdog_pid="self")
        self.expect(tandem, "READY")
        window = scaled(3.0)
        pings = [m for m in self.notify.drain(window) if m[1].get("WATCHDOG") == "1"]
        self.assertTrue(all(pid == tandem.pid for _, _, pid in pings))
        self.assertGreaterEqual(len(pings), int(window / watchdog * 2) - 2, "too few pings")
        gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:])]
        print("\nwatchdog pings: %d in %.1fs, gaps %.3f..%.3fs (WatchdogSec %.1fs)" %
              (len(pings), window, min(gaps), max(gaps), watchdog))
        # systemd kills the service when a gap reaches WatchdogSec.
        self.assertLess(max(gaps), watchdog)
        self.assertGreater(min(gaps), watchdog / 4, "pings far more often than asked")
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_no_watchdog_pings_when_watchdog_pid_names_another_process(self):
        # systemd sets WATCHDOG_PID to the main PID; a child that inherits the
        # variables must not ping for it.
        tandem = self.start(watchdog_usec=200000, watchdog_pid=os.getpid())
        self.expect(tandem, "READY")
        pings = [m for m in self.notify.drain(scaled(1.0)) if "WATCHDOG" in m[1]]
        self.assertEqual(pings, [])
        self.assertEqual(tandem.stop(), 0, tandem.output())

    def test_sigterm_sends_stopping_at_once_then_drains_and_exits_0(self):
        drain_delay = 1.0
        tandem = self.start(drain_delay="%dms" % (drain_delay * 1000))
        self.expect(tandem, "READY")
        sent = time.monotonic()
        tandem.signal(signal.SIGTERM)
        arrived, fields, pid = self.notify.next(scaled(5), "STOPPING")
        self.assertEqual(fields, {"STOPPING": "1"})
        self.assertEqual(pid, tandem.pid)
        self.assertLess(arrived - sent, scaled(0.5), "STOPPING=1 is sent before draining")
        # Still serving during drain_delay, but no longer ready.
        self.assertEqual(http_get(tandem.admin_port, "/readyz")[0], 503)
        with socket.create_connection(("127.0.0.1", tandem.ports["web"]), timeout=5):
            pass
        self.assertEqual(tandem.wait(scaled(15)), 0, tandem.output())
        self.assertGreaterEqual(time.monotonic() - sent, drain_delay * 0.9)
        self.assertEqual(self.notify.drain(0.2), [], "nothing after STOPPING=1")


if __name__ == "__main__":
    main()
