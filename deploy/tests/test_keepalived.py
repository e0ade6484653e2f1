"""The keepalived pair of deploy/keepalived/, end to end in network namespaces
this test creates: a client, two balancers (lb1, lb2) each running tandem and
keepalived with the shipped configs, two workers, all on one bridge in a
switch namespace. Under continuous client load on the virtual IP:

1. tandem on the master is killed: the address moves and requests succeed
   again within a few seconds (the failover time and the failed requests are
   printed);
2. tandem comes back there: that node returns as BACKUP and the address stays
   where it is (nopreempt), without a single failed request;
3. the balancers lose sight of each other (bridge port isolation: each still
   reaches the client and the workers): split brain, recorded — which side
   holds the address, which one the client reaches, what fails; then the link
   heals and one holder remains.

Skips (exit 77) where namespaces, veth pairs, a bridge or keepalived cannot be
used. About 30 s, never more than 90 s. Every namespace it makes has a unique
name and is deleted, with the veths and the bridge inside it; processes are
stopped by PID.

    sudo python3 test_keepalived.py KeepalivedFailoverTest
"""

import collections
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

from deploy_common import (DEPLOY, HERE, TANDEM, TANDEM_WORKER, Proc, hermetic_env, load_toml,
                           main, require_tool, scaled)

KEEPALIVED_DIR = os.path.join(DEPLOY, "keepalived")
BALANCERS = ("lb1", "lb2")
NETNS_PREFIX = "tdmka"  # tdmka<pid>-<random>-<role>: see remove_stale_namespaces()
BUDGET = 85.0           # seconds the whole scenario may take


def run(argv, timeout=10, check=True):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), result.returncode,
                                                   result.stderr.strip()))
    return result


class KeepalivedConf:
    """What the test needs from a shipped keepalived config."""

    def __init__(self, path):
        with open(path) as f:
            self.text = f.read()
        text = re.sub(r"#.*", "", self.text)

        def one(pattern):
            match = re.search(pattern, text)
            if not match:
                raise AssertionError("%s: no match for %s" % (path, pattern))
            return match.group(1)

        self.path = path
        self.interface = one(r"\binterface\s+(\S+)")
        self.priority = int(one(r"\bpriority\s+(\d+)"))
        self.address = one(r"\bunicast_src_ip\s+(\S+)")
        self.peer = one(r"\bunicast_peer\s*\{\s*(\S+)")
        self.vip = ipaddress.ip_interface(one(r"\bvirtual_ipaddress\s*\{\s*(\S+)"))
        self.advert_int = float(one(r"\badvert_int\s+(\S+)"))
        self.script = one(r'\bscript\s+"([^"]+)"')
        self.check_interval = float(one(r"\bvrrp_script\s+\S+\s*\{[^}]*\binterval\s+(\S+)"))
        self.fall = int(one(r"\bvrrp_script\s+\S+\s*\{[^}]*\bfall\s+(\d+)"))
        self.rise = int(one(r"\bvrrp_script\s+\S+\s*\{[^}]*\brise\s+(\d+)"))
        self.nopreempt = re.search(r"\bnopreempt\b", text) is not None
        self.state = one(r"\bstate\s+(\S+)")
        self.weight = re.search(r"\bvrrp_script\s+\S+\s*\{[^}]*\bweight\s+(-?\d+)", text)


def load_pair():
    confs = {lb: KeepalivedConf(os.path.join(KEEPALIVED_DIR, "keepalived-%s.conf" % lb))
             for lb in BALANCERS}
    with open(os.path.join(KEEPALIVED_DIR, "tandem.toml")) as f:
        tandem = load_toml(f.read())
    return confs, tandem


def keepalived_config_test(path):
    """`keepalived -t -f PATH`: (passed, output). keepalived 2.2.7 ends a clean
    config test by SIGTERM to itself; errors exit non-zero with messages."""
    result = run(["keepalived", "-t", "-f", path], timeout=30, check=False)
    output = (result.stdout + result.stderr).strip()
    return result.returncode in (0, -signal.SIGTERM) and not output, output


class KeepalivedConfigTest(unittest.TestCase):
    """The shipped configs, without namespaces."""

    @classmethod
    def setUpClass(cls):
        cls.confs, cls.tandem = load_pair()

    def test_both_nodes_are_backup_with_nopreempt_and_distinct_priorities(self):
        lb1, lb2 = self.confs["lb1"], self.confs["lb2"]
        for conf in (lb1, lb2):
            self.assertEqual(conf.state, "BACKUP", "nopreempt works only from state BACKUP")
            self.assertTrue(conf.nopreempt)
            self.assertIsNone(conf.weight, "a weight would lower the priority, which "
                                           "nopreempt ignores; no weight means FAULT")
        self.assertNotEqual(lb1.priority, lb2.priority)
        self.assertEqual((lb1.address, lb1.peer), (lb2.peer, lb2.address), "unicast peers")
        self.assertEqual(lb1.vip, lb2.vip)

        def shape(conf, lb):
            text = re.sub(r"#.*", "", conf.text)
            return (text.replace(conf.address, "SELF").replace(conf.peer, "PEER")
                    .replace(lb, "lbN").replace("priority %d" % conf.priority, "priority P"))

        self.assertEqual(shape(lb1, "lb1"), shape(lb2, "lb2"),
                         "the two configs differ only in names, addresses and priority")

    def test_the_check_asks_tandems_admin_healthz(self):
        admin = self.tandem["admin"]["listen"]
        for conf in self.confs.values():
            self.assertIn("http://%s/healthz" % admin, conf.script)
            self.assertIn("--fail", conf.script)
            self.assertIn("--max-time", conf.script)
            # A dead tandem moves the address within fall checks and adverts.
            self.assertLessEqual(conf.check_interval * conf.fall + 2 * conf.advert_int, 5)

    def test_tandem_accepts_on_every_address_so_the_vip_needs_no_nonlocal_bind(self):
        for listener in self.tandem["listeners"].values():
            self.assertTrue(listener["listen"].startswith("0.0.0.0:"))
        self.assertTrue(self.tandem["admin"]["listen"].startswith("127.0.0.1:"))

    def test_keepalived_accepts_both_configs(self):
        require_tool("keepalived", "keepalived")
        for lb, conf in self.confs.items():
            passed, output = keepalived_config_test(conf.path)
            # This machine may have no interface of the config's name.
            lines = [l for l in output.splitlines() if "doesn't exist" not in l]
            self.assertTrue(passed or not lines, "%s:\n%s" % (lb, output))


# ---- network namespaces ----------------------------------------------------------


def capabilities():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def list_namespaces():
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_namespace(name):
    """Kills what still runs in namespace `name` (by PID) and deletes it,
    which also destroys the veths and the bridge inside it."""
    for _ in range(3):
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.2)
    run(["ip", "netns", "delete", name], check=False)


def remove_stale_namespaces():
    """Namespaces an earlier run of this test left behind when it was killed
    (CTest's timeout sends SIGKILL): named tdmka<pid>-..., with that pid gone."""
    for name in list_namespaces():
        match = re.match(r"^%s(\d+)-[0-9a-f]{6}-" % NETNS_PREFIX, name)
        if match and not pid_alive(int(match.group(1))):
            delete_namespace(name)


class Network:
    """Namespaces joined by veth pairs to one bridge in a switch namespace."""

    def __init__(self):
        self.tag = "%s%d-%s" % (NETNS_PREFIX, os.getpid(), uuid.uuid4().hex[:6])
        self.created = []
        self.switch = self.add_namespace("sw")
        run(["ip", "-n", self.switch, "link", "add", "name", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        self.ports = {}

    def add_namespace(self, role):
        name = "%s-%s" % (self.tag, role)
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def add_host(self, role, address, prefix, interface="eth0"):
        """A namespace with `interface` on the bridge, holding `address`/prefix."""
        name = self.add_namespace(role)
        port = "p-" + role
        run(["ip", "-n", self.switch, "link", "add", "name", port, "type", "veth",
             "peer", "name", interface, "netns", name])
        run(["ip", "-n", self.switch, "link", "set", "dev", port, "master", "br0", "up"])
        run(["ip", "-n", name, "addr", "add", "%s/%d" % (address, prefix), "dev", interface])
        run(["ip", "-n", name, "link", "set", interface, "up"])
        self.ports[role] = port
        return name

    def isolate(self, roles, on):
        """Bridge port isolation: isolated ports reach every other port but not
        each other."""
        for role in roles:
            run(["bridge", "-n", self.switch, "link", "set", "dev", self.ports[role],
                 "isolated", "on" if on else "off"])

    def mac(self, namespace, interface="eth0"):
        out = run(["ip", "-n", namespace, "-o", "link", "show", interface]).stdout
        return re.search(r"link/ether (\S+)", out).group(1)

    def holds(self, namespace, address, interface="eth0"):
        out = run(["ip", "-n", namespace, "-4", "-o", "addr", "show", "dev", interface],
                  check=False).stdout
        return (" %s/" % address) in out

    def neighbour(self, namespace, address):
        out = run(["ip", "-n", namespace, "neigh", "show", address], check=False).stdout
        match = re.search(r"lladdr (\S+)(.*)", out)
        return (match.group(1), match.group(2).strip()) if match else (None, out.strip())

    def destroy(self):
        for name in reversed(self.created):
            delete_namespace(name)
        self.created = []


def netns_exec(namespace, argv):
    # `ip netns exec` execs the command itself: the PID is the command's.
    return ["ip", "netns", "exec", namespace] + list(argv)


def skip_reason():
    """Why the namespaces scenario cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    # Missing tools are an install error, not this machine's limit.
    for tool, package in (("ip", "iproute2"), ("bridge", "iproute2"),
                          ("keepalived", "keepalived"), ("curl", "curl")):
        require_tool(package, tool)
    caps = capabilities()
    if not (caps >> CAP_NET_ADMIN) & 1 or not (caps >> CAP_SYS_ADMIN) & 1:
        return "needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run as root) to create namespaces"
    probe = "%s%d-%s-probe" % (NETNS_PREFIX, os.getpid(), uuid.uuid4().hex[:6])
    made = run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return "cannot create a network namespace (/var/run/netns): " + made.stderr.strip()
    try:
        for argv in (["link", "add", "name", "br0", "type", "bridge"],
                     ["link", "add", "name", "va", "type", "veth", "peer", "name", "vb"],
                     ["link", "set", "dev", "va", "master", "br0"]):
            result = run(["ip", "-n", probe] + argv, check=False)
            if result.returncode != 0:
                return "cannot create veth pairs or a bridge in a namespace: " + \
                    result.stderr.strip()
        result = run(["bridge", "-n", probe, "link", "set", "dev", "va", "isolated", "on"],
                     check=False)
        if result.returncode != 0:
            return "bridge port isolation is not supported: " + result.stderr.strip()
    finally:
        delete_namespace(probe)
    return None


# ---- the scenario -------------------------------------------------------------------


Request = collections.namedtuple("Request", "start end ok detail")


class Timeline:
    """Who holds the virtual IP, polled every 100 ms on a thread."""

    def __init__(self, network, namespaces, vip):
        self.network = network
        self.namespaces = namespaces  # {"lb1": netns name, ...}
        self.vip = vip
        self.changes = []  # (monotonic time, frozenset of holders)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            holders = frozenset(lb for lb, ns in self.namespaces.items()
                                if self.network.holds(ns, self.vip))
            now = time.monotonic()
            with self._lock:
                if not self.changes or self.changes[-1][1] != holders:
                    self.changes.append((now, holders))
            self._stop.wait(0.1)

    def holders(self):
        with self._lock:
            return self.changes[-1][1] if self.changes else frozenset()

    def since(self, t):
        with self._lock:
            return [(when, holders) for when, holders in self.changes if when >= t]

    def stop(self):
        self._stop.set()
        self._thread.join(5)


class KeepalivedFailoverTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        reason = skip_reason()
        if reason:
            raise unittest.SkipTest(reason)

    def setUp(self):
        self.began = time.monotonic()
        self.confs, self.tandem_conf = load_pair()
        self.vip = str(self.confs["lb1"].vip.ip)
        self.dir = tempfile.mkdtemp(prefix="tandem-deploy-keepalived-")
        self.procs = []
        self.report = []
        self.network = None
        self.timeline = None
        self.client = None
        # A SIGTERM (ctest interrupted) still runs the cleanups.
        self.previous_sigterm = signal.signal(signal.SIGTERM, self._interrupted)
        remove_stale_namespaces()

    @staticmethod
    def _interrupted(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    def tearDown(self):
        try:
            if self.client is not None and self.client.running():
                try:
                    self.client.proc.stdin.close()
                except OSError:
                    pass
                self.client.wait(5) if self.client.running() else None
            if self.timeline is not None:
                self.timeline.stop()
            # keepalived first (it releases the address), then tandem, then workers.
            for proc in reversed(self.procs):
                if proc.running():
                    proc.stop(scaled(10))
        finally:
            if self.network is not None:
                self.network.destroy()
            shutil.rmtree(self.dir, ignore_errors=True)
            signal.signal(signal.SIGTERM, self.previous_sigterm)
            if self.report:
                print("\n" + "\n".join(self.report))

    # -- helpers --

    def left(self):
        return BUDGET - (time.monotonic() - self.began)

    def wait(self, predicate, timeout, what):
        end = time.monotonic() + min(timeout, max(self.left(), 0.1))
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s\n%s" % (what, self.logs()))

    def logs(self):
        parts = []
        for proc in self.procs:
            parts.append("--- %s ---\n%s" % (proc.name, "\n".join(
                proc.lines()[-25:] + proc.lines("stdout")[-5:])))
        return "\n".join(parts)

    def start(self, namespace, argv, name, **kwargs):
        proc = Proc(netns_exec(namespace, argv), name=name, **kwargs)
        self.procs.append(proc)
        return proc

    def start_tandem(self, lb):
        proc = self.start(self.ns[lb], [TANDEM, "-c", self.tandem_path], "tandem-" + lb,
                          cwd=self.dir, env=hermetic_env())
        proc.wait_for(r'msg="tandem started"', scaled(20))
        return proc

    def start_keepalived(self, lb):
        pids = [os.path.join(self.dir, "%s-%s.pid" % (lb, kind)) for kind in ("main", "vrrp",
                                                                              "check")]
        return self.start(self.ns[lb], ["keepalived", "--dont-fork", "--log-console",
                                        "--log-detail", "--no-syslog", "--vrrp",
                                        "--use-file", self.confs[lb].path,
                                        "--pid", pids[0], "--vrrp_pid", pids[1],
                                        "--checkers_pid", pids[2]], "keepalived-" + lb)

    def requests(self, since=0.0, until=float("inf")):
        found = []
        for line in self.client.lines("stdout"):
            start, end, outcome, detail = line.split(" ", 3)
            request = Request(float(start), float(end), outcome == "ok", detail)
            if since <= request.start < until:
                found.append(request)
        return found

    def served(self, lb, since, until):
        """Access log lines tandem on `lb` wrote in [since, until)."""
        return sum(1 for t, _ in self.tandem[lb].timed_lines("stdout") if since <= t < until)

    def served_span(self, lb, since, until, last):
        """When `lb` served its last (or first) request in [since, until), as
        "+N.Ns" after `since`, or "never"."""
        times = [t for t, _ in self.tandem[lb].timed_lines("stdout") if since <= t < until]
        if not times:
            return "never"
        return "+%.1fs" % ((max(times) if last else min(times)) - since)

    def vrrp_states(self, lb, since=0.0):
        states = []
        for t, line in self.keepalived[lb].timed_lines():
            match = re.search(r"Entering (\w+) STATE", line)
            if match and t >= since:
                states.append((t, match.group(1)))
        return states

    def wait_state(self, lb, state, since, timeout):
        return self.wait(lambda: next((t for t, s in self.vrrp_states(lb, since) if s == state),
                                      None), timeout, "%s entering %s" % (lb, state))

    def who_is(self, mac):
        return next((lb for lb, m in self.macs.items() if m == mac), mac or "none")

    def failures(self, requests):
        counts = collections.Counter(r.detail for r in requests if not r.ok)
        return ", ".join("%d %s" % (n, d) for d, n in counts.most_common()) or "none"

    # -- the test --

    def test_the_virtual_ip_fails_over_when_tandem_dies_and_stays_when_it_returns(self):
        lb1, lb2 = self.confs["lb1"], self.confs["lb2"]
        network_prefix = lb1.vip.network.prefixlen
        hosts = list(lb1.vip.network.hosts())
        backends = [b["address"] for b in self.tandem_conf["clusters"]["compute"]["backends"]]
        listen_port = int(self.tandem_conf["listeners"]["web"]["listen"].rsplit(":", 1)[1])
        used = {lb1.address, lb2.address, self.vip} | {b.rsplit(":", 1)[0] for b in backends}
        client_address = str(next(h for h in reversed(hosts) if str(h) not in used))

        # The network: one bridge, the client, the two balancers, the workers.
        self.network = Network()
        self.ns = {}
        self.ns["client"] = self.network.add_host("cl", client_address, network_prefix)
        for lb in BALANCERS:
            self.ns[lb] = self.network.add_host(lb, self.confs[lb].address, network_prefix,
                                                self.confs[lb].interface)
        for i, backend in enumerate(backends, 1):
            host, port = backend.rsplit(":", 1)
            namespace = self.network.add_host("wk%d" % i, host, network_prefix)
            worker = self.start(namespace, [TANDEM_WORKER, "--listen", backend, "--name",
                                            "w%d" % i], "worker-%d" % i)
            worker.wait_for(r"listening on", scaled(15), stream="stdout")
        self.macs = {lb: self.network.mac(self.ns[lb]) for lb in BALANCERS}

        self.tandem_path = os.path.join(self.dir, "tandem.toml")
        shutil.copy(os.path.join(KEEPALIVED_DIR, "tandem.toml"), self.tandem_path)
        self.tandem = {lb: self.start_tandem(lb) for lb in BALANCERS}
        # keepalived accepts the configs where their interface exists.
        for lb in BALANCERS:
            result = run(netns_exec(self.ns[lb], ["keepalived", "-t", "-f",
                                                  self.confs[lb].path]), timeout=30, check=False)
            output = (result.stdout + result.stderr).strip()
            self.assertTrue(result.returncode in (0, -signal.SIGTERM) and not output,
                            "keepalived -t %s: %s" % (lb, output))

        # lb1 first, so that it becomes the master; then lb2 joins as backup.
        self.keepalived = {}
        self.keepalived["lb1"] = self.start_keepalived("lb1")
        self.timeline = Timeline(self.network, {lb: self.ns[lb] for lb in BALANCERS}, self.vip)
        self.wait(lambda: self.timeline.holders() == {"lb1"}, 20, "lb1 holding the address")
        self.keepalived["lb2"] = self.start_keepalived("lb2")
        self.wait_state("lb2", "BACKUP", 0, 15)
        master, backup = "lb1", "lb2"
        t_ready = time.monotonic()
        self.report.append("keepalived pair ready %.1fs after the start; %s holds %s" %
                           (t_ready - self.began, master, self.vip))

        # Continuous load on the virtual IP from the client namespace.
        self.client = self.start(self.ns["client"], [
            sys.executable, os.path.join(HERE, "vip_client.py"), "--host", self.vip,
            "--port", str(listen_port), "--timeout", "0.5", "--pause", "0.02",
            "--max-seconds", str(max(self.left(), 1))], "client", stdin_pipe=True)
        self.wait(lambda: sum(r.ok for r in self.requests()) >= 30, 10, "client load")
        time.sleep(1.0)
        baseline = self.requests()
        rate = len(baseline) / max(baseline[-1].end - baseline[0].start, 0.001)
        self.assertEqual([r for r in baseline if not r.ok], [], "failures before any fault")
        self.report.append("client: %.0f requests/s, each on a new connection, 0.5 s timeout; "
                           "%d before the fault, none failed" % (rate, len(baseline)))

        # 1. tandem on the master dies.
        t_kill = time.monotonic()
        self.tandem[master].kill()
        self.wait(lambda: self.timeline.holders() == {backup}, 15,
                  "the address moving to %s" % backup)
        t_moved = self.timeline.since(t_kill)[-1][0]
        fault = self.wait_state(master, "FAULT", t_kill, 5)
        taken = self.wait_state(backup, "MASTER", t_kill, 5)
        self.wait(lambda: sum(r.ok for r in self.requests(t_moved)) >= 25, 10,
                  "requests succeeding through %s" % backup)
        time.sleep(1.0)
        t_end = time.monotonic()
        phase = self.requests(t_kill - 0.6, t_end)
        failed = [r for r in phase if not r.ok]
        last_failure = max((r.start for r in failed), default=t_kill)
        recovered = min(r.start for r in phase if r.ok and r.start > last_failure)
        failover = recovered - t_kill if failed else 0.0
        self.report.append(
            "1. kill -9 tandem on %s: %s enters FAULT after %.1fs, %s MASTER after %.1fs; "
            "requests succeed again after %.1fs (failover time); failed requests: %d of %d "
            "(%s)" % (master, master, fault - t_kill, backup, taken - t_kill, failover,
                      len(failed), len(phase), self.failures(phase)))
        self.assertLess(failover, 8.0, "failover takes longer than a few seconds")
        self.assertEqual([r for r in self.requests(recovered, t_end) if not r.ok], [])
        self.assertGreater(self.served(backup, t_moved, t_end), 0)

        # 2. tandem comes back on the old master: BACKUP, and no second outage.
        t_back = time.monotonic()
        self.tandem[master] = self.start_tandem(master)
        rejoined = self.wait_state(master, "BACKUP", t_back, 10)
        time.sleep(max(4 * lb1.advert_int, 3.0))
        t_end = time.monotonic()
        phase = self.requests(t_back, t_end)
        moves = self.timeline.since(t_back)
        self.report.append(
            "2. tandem back on %s: BACKUP after %.1fs; the address stays on %s (nopreempt); "
            "failed requests: %d of %d" % (master, rejoined - t_back, backup,
                                           len([r for r in phase if not r.ok]), len(phase)))
        self.assertEqual(moves, [], "the address moved although nopreempt")
        self.assertEqual(self.timeline.holders(), {backup})
        self.assertEqual([r for r in phase if not r.ok], [], "a second outage")
        self.assertEqual(self.served(master, t_back, t_end), 0)

        # 3. Split brain: the balancers no longer see each other.
        t_split = time.monotonic()
        self.network.isolate(BALANCERS, True)
        try:
            self.wait(lambda: self.timeline.holders() == set(BALANCERS), 10,
                      "both balancers taking the address")
            time.sleep(3.0)
            t_end = time.monotonic()
            phase = self.requests(t_split, t_end)
            mac, state = self.network.neighbour(self.ns["client"], self.vip)
            became = [t - t_split for t, s in self.vrrp_states(master, t_split) if s == "MASTER"]
            self.report.append(
                "3. split brain (bridge port isolation between lb1 and lb2): %s enters MASTER "
                "after %s and both hold %s; the client follows the newest gratuitous ARP: "
                "%s served until %s, %s from %s; the client's ARP entry points at %s (%s); "
                "failed requests: %d of %d (%s)" %
                (master, "%.1fs" % became[0] if became else "?", self.vip,
                 backup, self.served_span(backup, t_split, t_end, last=True),
                 master, self.served_span(master, t_split, t_end, last=False),
                 self.who_is(mac), state, len([r for r in phase if not r.ok]), len(phase),
                 self.failures(phase)))
        finally:
            t_heal = time.monotonic()
            self.network.isolate(BALANCERS, False)
        single = self.wait(lambda: len(self.timeline.holders()) == 1 and time.monotonic(), 10,
                           "one holder after the link heals")
        time.sleep(3.0)
        t_end = time.monotonic()
        phase = self.requests(t_heal, t_end)
        winner = next(iter(self.timeline.holders()))
        loser = [lb for lb in BALANCERS if lb != winner][0]
        mac, state = self.network.neighbour(self.ns["client"], self.vip)
        to_backup = [t - t_heal for t, s in self.vrrp_states(loser, t_heal) if s == "BACKUP"]
        self.report.append(
            "   link healed: %s (priority %d) keeps the address, %s (priority %d) goes BACKUP "
            "after %s; one holder after %.1fs; the client's ARP entry points at %s (%s); "
            "served by lb1 %d, lb2 %d; failed requests: %d (%s)" %
            (winner, self.confs[winner].priority, loser, self.confs[loser].priority,
             "%.1fs" % to_backup[0] if to_backup else "?", single - t_heal, self.who_is(mac),
             state, self.served("lb1", t_heal, t_end), self.served("lb2", t_heal, t_end),
             len([r for r in phase if not r.ok]), self.failures(phase)))
        total = self.requests()
        self.report.append("total: %d requests, %d failed; scenario %.0fs" %
                           (len(total), len([r for r in total if not r.ok]),
                            time.monotonic() - self.began))
        self.assertEqual(len(self.timeline.holders()), 1)
        self.assertLess(time.monotonic() - self.began, BUDGET)


if __name__ == "__main__":
    main()
