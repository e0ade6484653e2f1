"""DNS discovery of backends ([[clusters.NAME.dns]]): a scripted DNS server
(dnsserver.py) answers tandem's lookups, tandem-worker processes listen on
several loopback addresses with one port (A records share the config's port),
and the tests change the answers while traffic flows.

What is checked: addresses that come and go are taken into and out of service
without a failed request (new ones start unknown and take traffic after their
first passing check; vanished ones drain for `hold`, then go); the refresh
follows min(TTL, refresh) with a 1 s floor; SRV gives ports, weights and
(with primary-backup) roles; failed lookups keep the last good set and are
retried at `failure_refresh`; a truncated UDP answer is asked again over TCP;
`--check` names the key of every mistake; a reload keeps what was found;
/readyz waits for the first lookups; /status and /metrics show it all.
"""

import collections
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import unittest

from dnsserver import DnsServer
from harness import (TandemTestCase, http_request, make_config, run_tandem, scaled, toml_table,
                     wait_until)
from ops import LoadClient, admin_post, health_table, scrape, wait_reload_by

CHECK_INTERVAL = 0.2  # health_table()'s interval
# Without checks (kind = "none") a backend stays "unknown" and serves, found in
# DNS or configured (docs/health.md).
SERVING_UNCHECKED = ("unknown", "up")
# What the tests allow beyond the contract's own bounds: the health snapshot
# reaching the loop, the polling of /status, a loaded machine.
SLACK = scaled(0.8)


def report(scenario, **numbers):
    """One line per measurement for the log of the run (and CTest's output)."""
    fields = " ".join("%s=%s" % (k, ("%.3f" % v) if isinstance(v, float) else v)
                      for k, v in numbers.items())
    print("\nSCENARIO %s: %s" % (scenario, fields), flush=True)


# ---- addresses and workers -----------------------------------------------------------


def free_port_on(host):
    """A port nothing listens on at `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_worker_group(test, hosts, names):
    """tandem-workers on `hosts` (loopback addresses), all on one port, as A
    records need; returns (port, workers)."""
    last_error = None
    for _ in range(5):
        port = free_port_on(hosts[0])
        workers = []
        try:
            for host, name in zip(hosts, names):
                workers.append(test.start_worker(name, listen="%s:%d" % (host, port)))
            return port, workers
        except RuntimeError as e:  # the port was taken on one of the hosts meanwhile
            last_error = e
            for worker in workers:
                worker.close()
    raise AssertionError("no port free on every one of %s: %s" % (hosts, last_error))


# ---- config --------------------------------------------------------------------------


def dns_table(dns, name="workers.test.", cluster="compute", **values):
    """One [[clusters.CLUSTER.dns]] entry asking `dns` (a DnsServer)."""
    entry = {"name": name}
    entry.update(values)
    entry.setdefault("servers", [dns.address])
    return toml_table("[clusters.%s.dns]" % cluster, entry)


def discovery_config(entries, backends=(), checks=True, cluster_opts=None):
    """make_config() with the dns `entries` (dns_table() texts), fast health
    checks (or `kind = "none"`) and the configured `backends`."""
    extra = "".join(entries)
    extra += health_table() if checks else toml_table("clusters.compute.health",
                                                      {"kind": "none"})
    return make_config(list(backends), cluster_opts=cluster_opts, extra=extra)


# ---- /status and /metrics ------------------------------------------------------------


def compute_backends(tandem):
    status = tandem.status_json()
    for cluster in status["clusters"]:
        if cluster["name"] == "compute":
            return cluster["backends"]
    raise KeyError("no cluster compute in /status")


def found_backends(tandem, name="workers.test."):
    """{address: /status entry} of the backends `name` found (held ones too)."""
    return {b["address"]: b for b in compute_backends(tandem)
            if b.get("source") == "dns:" + name}


def wait_found(tandem, addresses, name="workers.test.", timeout=None, states=None):
    """Waits until the backends `name` found and still answers (not draining)
    are exactly `addresses` (and, with `states`, each in one of them);
    returns the seconds it took."""
    start = time.monotonic()
    wanted = set(addresses)
    last = [None]

    def reached():
        found = found_backends(tandem, name)
        last[0] = found
        current = {a for a, b in found.items() if b["state"] != "draining"}
        if current != wanted:
            return False
        return states is None or all(found[a]["state"] in states for a in wanted)
    try:
        wait_until(reached, timeout or scaled(10), "the backends of %s to be %s"
                   % (name, sorted(wanted)), interval=0.02)
    except TimeoutError as e:
        raise AssertionError("%s; last seen: %s" % (
            e, {a: b["state"] for a, b in (last[0] or {}).items()})) from None
    return time.monotonic() - start


def metric(tandem, family, **labels):
    """The sum of the samples of `family` whose labels include `labels` (the
    label `name` among them, which Scrape.value() cannot take); None when
    there is none."""
    found = [value for sample, sample_labels, value in scrape(tandem).samples
             if sample == family and all(sample_labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def lookups(tandem, result, name="workers.test."):
    value = metric(tandem, "tandem_dns_lookups_total", cluster="compute", name=name,
                   result=result)
    return 0 if value is None else value


def dns_backends_gauge(tandem, name="workers.test."):
    return metric(tandem, "tandem_dns_backends", cluster="compute", name=name)


# ---- load ----------------------------------------------------------------------------


class TimedLoad(LoadClient):
    """ops.LoadClient (keep-alive and new-connection threads, every answer but
    a 200 a failure, bounded in time) that also keeps each 200 as (sent,
    answered, worker), in time.monotonic() seconds, with a 2 ms pause between
    a thread's requests."""

    def __init__(self, port, keepalive=3, fresh=1, max_seconds=60, timeout=None):
        super().__init__(port, keepalive=keepalive, fresh=fresh,
                         max_seconds=scaled(max_seconds), timeout=timeout, pause=0.002)
        self.answers = []

    def _record(self, kind, response=None, error=None, sent=None):
        super()._record(kind, response, error, sent)
        if response is not None and response.status == 200:
            with self.lock:
                self.answers.append((sent, time.monotonic(), response.header("x-worker")))

    def count(self):
        with self.lock:
            return len(self.answers)

    def wait_answers(self, count, timeout=None):
        """Waits until `count` more requests than now were answered 200."""
        target = self.count() + count
        wait_until(lambda: self.count() >= target, timeout or scaled(10),
                   "%d more answers from the load" % count)

    def by_worker(self, since=None):
        with self.lock:
            return collections.Counter(w for s, _, w in self.answers
                                       if since is None or s >= since)

    def first_sent(self, worker, since):
        """When the first request answered by `worker` and sent at or after
        `since` was sent; None when there is none."""
        with self.lock:
            times = [s for s, _, w in self.answers if w == worker and s >= since]
        return min(times) if times else None

    def last_sent(self, worker):
        with self.lock:
            times = [s for s, _, w in self.answers if w == worker]
        return max(times) if times else None

    def wait_past(self, moment, count=50, timeout=None):
        """Waits until `count` requests sent after `moment` were answered."""
        def answered():
            with self.lock:
                return sum(1 for s, _, _ in self.answers if s > moment) >= count
        wait_until(answered, timeout or scaled(10) + max(0.0, moment - time.monotonic()),
                   "%d answers to requests sent after the cutoff" % count)

    def wait_worker(self, worker, since, timeout):
        """Waits until `worker` answered a request sent at or after `since`;
        returns when that request was sent."""
        try:
            return wait_until(lambda: self.first_sent(worker, since), timeout,
                              "%s to answer a request" % worker, interval=0.02)
        except TimeoutError as e:
            raise AssertionError("%s; answered since: %s" % (
                e, dict(self.by_worker(since)))) from None


# ---- test case base ------------------------------------------------------------------


class DiscoveryTestCase(TandemTestCase):

    def start_dns(self):
        dns = DnsServer()
        self.addCleanup(self._close_dns, dns)
        return dns

    def _close_dns(self, dns):
        dns.close()
        self.assertEqual(dns.errors, [], "the DNS server's thread failed")

    def start_load(self, port, **options):
        load = TimedLoad(port, **options).start()
        self.addCleanup(load.stop)
        return load

    def assertNoFailures(self, load, what):
        load.stop()
        self.assertEqual(load.failures, [], "%s: %d of %d requests failed; first: %s" % (
            what, len(load.failures), len(load.failures) + load.count(), load.failures[:10]))


# ---- addresses that come and go ------------------------------------------------------


class ScaleTest(DiscoveryTestCase):
    """A records change under load: no request fails, traffic follows."""

    TTL = 1

    def test_scale_up_from_one_to_three_addresses_under_load(self):
        dns = self.start_dns()
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        port, workers = start_worker_group(self, hosts, ["w1", "w2", "w3"])
        addresses = [w.address for w in workers]
        dns.set_a("workers.test.", hosts[:1], ttl=self.TTL)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=port, refresh="10s", hold="1s")]))
        wait_found(tandem, addresses[:1], states=("up",))
        load = self.start_load(tandem.port)
        load.wait_answers(50)

        changed = time.monotonic()
        dns.set_a("workers.test.", hosts, ttl=self.TTL)
        bound = self.TTL + 1 + CHECK_INTERVAL + SLACK
        delays = {}
        for worker in workers[1:]:
            first = load.wait_worker(worker.worker_name, changed, scaled(10))
            delays[worker.worker_name] = first - changed
        load.wait_answers(100)
        load.stop()
        report("scale-up", requests=load.count(), failures=len(load.failures),
               w2_delay=delays["w2"], w3_delay=delays["w3"], bound=bound)
        self.assertNoFailures(load, "scale up 1 -> 3")
        for name, delay in delays.items():
            self.assertLessEqual(delay, bound, "%s took traffic %.2fs after the change"
                                 % (name, delay))

        found = found_backends(tandem)
        self.assertEqual(set(found), set(addresses))
        for address, backend in found.items():
            self.assertEqual((backend["state"], backend["source"], backend["role"]),
                             ("up", "dns:workers.test.", "primary"), address)
        # A new address started unknown and came up by its check.
        for address in addresses[1:]:
            transitions = found[address]["transitions"]
            self.assertTrue(transitions, address)
            self.assertEqual((transitions[0]["from"], transitions[-1]["to"]), ("unknown", "up"),
                             address)
        self.assertEqual(dns_backends_gauge(tandem), 3)
        self.assertGreaterEqual(lookups(tandem, "ok"), 2)
        self.assertEqual(lookups(tandem, "failed"), 0)

    def test_scale_down_from_three_to_one_address_under_load(self):
        dns = self.start_dns()
        hold = 2.0
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        port, workers = start_worker_group(self, hosts, ["w1", "w2", "w3"])
        addresses = [w.address for w in workers]
        removed = workers[1:]
        dns.set_a("workers.test.", hosts, ttl=self.TTL)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=port, refresh="10s", hold="%gs" % hold)]))
        wait_found(tandem, addresses, states=("up",))
        load = self.start_load(tandem.port)
        load.wait_answers(50)
        self.assertEqual(set(load.by_worker()), {"w1", "w2", "w3"})

        # Slow requests in flight on the addresses about to go: they must
        # finish even though the backend is removed while they run.
        slow = []
        for _ in range(4):
            for _ in range(3):
                client = self.client(tandem.port, timeout=scaled(30))
                client.request("GET", "/sleep?ms=%d" % int((self.TTL + 1 + hold + 1) * 1000))
                slow.append(client)
            # /stats counts itself as in flight.
            if wait_until_true(lambda: any(w.stats()["in_flight"] >= 2 for w in removed), 1.0):
                break
        self.assertTrue(any(w.stats()["in_flight"] >= 2 for w in removed),
                        "no slow request reached an address about to be removed")

        changed = time.monotonic()
        dns.set_a("workers.test.", hosts[:1], ttl=self.TTL)
        seen_draining = {}
        gone = {}
        gauge_while_draining = []
        deadline = changed + scaled(self.TTL + 1 + hold + 5)
        while len(gone) < len(removed) and time.monotonic() < deadline:
            found = found_backends(tandem)
            now = time.monotonic()
            for worker in removed:
                backend = found.get(worker.address)
                if backend is None:
                    gone.setdefault(worker.address, now)
                elif backend["state"] == "draining":
                    seen_draining.setdefault(worker.address, now)
            if len(seen_draining) == len(removed) and not gone and not gauge_while_draining:
                gauge_while_draining.append((
                    dns_backends_gauge(tandem),
                    metric(tandem, "tandem_dns_held_backends", cluster="compute",
                           name="workers.test.")))
            time.sleep(0.05)
        for client in slow:
            response = client.response()
            self.assertEqual(response.status, 200, response)
        load.wait_past(changed + self.TTL + 1 + SLACK, 100)
        load.stop()
        cutoff = changed + self.TTL + 1 + SLACK
        report("scale-down", requests=load.count(), failures=len(load.failures),
               draining_after=min(seen_draining.values(), default=-1) - changed,
               gone_after=max(gone.values(), default=-1) - changed,
               last_request_w2=(load.last_sent("w2") or 0) - changed,
               last_request_w3=(load.last_sent("w3") or 0) - changed)
        self.assertNoFailures(load, "scale down 3 -> 1 (the change at %.3f)" % changed)
        for worker in removed:
            self.assertIn(worker.address, seen_draining, "%s never shown draining" % worker.address)
            self.assertIn(worker.address, gone, "%s still listed %.1fs after the change"
                          % (worker.address, deadline - changed))
            # Held for `hold` after it vanished from the answer, then removed.
            self.assertGreaterEqual(gone[worker.address] - changed, hold - 0.1, worker.address)
            self.assertLessEqual(gone[worker.address] - changed,
                                 self.TTL + 1 + hold + SLACK, worker.address)
            last = load.last_sent(worker.worker_name)
            self.assertLess(last, cutoff, "%s got a request sent %.2fs after the change"
                            % (worker.worker_name, last - changed))
        self.assertEqual(gauge_while_draining, [(1, 2)],
                         "tandem_dns_backends and tandem_dns_held_backends while two were held")
        self.assertEqual(set(found_backends(tandem)), {addresses[0]})
        self.assertEqual(dns_backends_gauge(tandem), 1)

    def test_an_address_replaced_by_another_under_load(self):
        dns = self.start_dns()
        hosts = ["127.0.0.2", "127.0.0.3"]
        port, (old, new) = start_worker_group(self, hosts, ["old", "new"])
        dns.set_a("workers.test.", [hosts[0]], ttl=self.TTL)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=port, refresh="10s", hold="1s")]))
        wait_found(tandem, [old.address], states=("up",))
        load = self.start_load(tandem.port)
        load.wait_answers(50)

        changed = time.monotonic()
        dns.set_a("workers.test.", [hosts[1]], ttl=self.TTL)
        first = load.wait_worker("new", changed, scaled(10))
        wait_until(lambda: old.address not in found_backends(tandem), scaled(10),
                   "the replaced address to be removed")
        load.wait_past(changed + self.TTL + 1 + SLACK, 100)
        load.stop()
        # (A failure reads "KIND WALLCLOCK: what"; assertNoFailures shows them.)
        report("replace", requests=load.count(), failures=len(load.failures),
               new_after=first - changed, old_last=(load.last_sent("old") or 0) - changed)
        self.assertNoFailures(load, "A -> B (the change at %.3f)" % changed)
        self.assertLessEqual(first - changed, self.TTL + 1 + CHECK_INTERVAL + SLACK)
        self.assertLess(load.last_sent("old"), changed + self.TTL + 1 + SLACK)
        late = load.by_worker(changed + self.TTL + 1 + SLACK)
        self.assertEqual(set(late), {"new"}, late)
        self.assertEqual(set(found_backends(tandem)), {new.address})


def wait_until_true(predicate, timeout):
    """Like wait_until(), but returns False instead of raising."""
    try:
        return wait_until(predicate, timeout, interval=0.05)
    except TimeoutError:
        return False


# ---- when tandem asks again ----------------------------------------------------------


class RefreshTest(DiscoveryTestCase):
    """The next lookup comes after min(TTL, refresh), at least 1 s apart.
    No checks and no workers: /status shows what was found at once."""

    def start(self, ttl, **entry):
        dns = self.start_dns()
        port = free_port_on("127.0.0.2")
        dns.set_a("workers.test.", ["127.0.0.2"], ttl=ttl)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=port, hold="1s", **entry)], checks=False))
        wait_found(tandem, ["127.0.0.2:%d" % port], states=SERVING_UNCHECKED)
        return dns, port, tandem

    def test_a_short_ttl_wins_over_a_long_refresh(self):
        dns, port, tandem = self.start(ttl=1, refresh="30s")
        time.sleep(0.5)
        dns.set_a("workers.test.", ["127.0.0.3"], ttl=1)
        took = wait_found(tandem, ["127.0.0.3:%d" % port], timeout=scaled(10))
        report("ttl-1s-refresh-30s", took=took)
        self.assertLessEqual(took, 1 + 1 + SLACK)

    def test_a_short_refresh_wins_over_a_long_ttl(self):
        dns, port, tandem = self.start(ttl=60, refresh="1s")
        time.sleep(0.5)
        dns.set_a("workers.test.", ["127.0.0.3"], ttl=60)
        took = wait_found(tandem, ["127.0.0.3:%d" % port], timeout=scaled(10))
        report("ttl-60s-refresh-1s", took=took)
        self.assertLessEqual(took, 1 + 1 + SLACK)

    def test_a_zero_ttl_is_asked_again_about_once_a_second_not_more(self):
        dns, port, tandem = self.start(ttl=0, refresh="5s")
        since = time.monotonic()
        window = 6.0
        time.sleep(window)
        asked = [t for t, _, _, _ in dns.query_log("workers.test.", "A", since=since)]
        gaps = [b - a for a, b in zip(asked, asked[1:])]
        report("ttl-0", queries=len(asked), window=window,
               min_gap=min(gaps, default=-1.0), max_gap=max(gaps, default=-1.0))
        # min(0, 5s) is below the 1 s floor: about one lookup a second.
        self.assertLessEqual(len(asked), window + 2, "more than about one query a second")
        self.assertGreaterEqual(len(asked), window - 2, "the 1 s floor, not the 5 s refresh")
        self.assertGreaterEqual(min(gaps), 0.5, gaps)
        self.assertEqual(set(found_backends(tandem)), {"127.0.0.2:%d" % port})
        self.assertEqual(lookups(tandem, "failed"), 0)


class AaaaTest(DiscoveryTestCase):

    def test_aaaa_records_give_ipv6_backends_with_the_entry_s_port_and_weight(self):
        dns = self.start_dns()
        dns.set_aaaa("workers.test.", ["::1", "fd00::7"], ttl=5)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, type="AAAA", port=9001, weight=2)], checks=False))
        wait_found(tandem, ["[::1]:9001", "[fd00::7]:9001"], states=SERVING_UNCHECKED)
        found = found_backends(tandem)
        self.assertEqual({b["weight"] for b in found.values()}, {2})
        self.assertEqual(dns.queries("workers.test.", "A"), 0)
        self.assertGreaterEqual(dns.queries("workers.test.", "AAAA"), 1)
        self.assertEqual(dns_backends_gauge(tandem), 2)


# ---- SRV -----------------------------------------------------------------------------


class SrvTest(DiscoveryTestCase):
    """SRV: each record's port and weight, its target resolved with an A query;
    priorities give roles only in a primary-backup cluster."""

    NAME = "_compute._tcp.test."

    def test_srv_records_give_ports_and_weights_and_all_are_primaries_when_all_active(self):
        dns = self.start_dns()
        w1 = self.start_worker("w1")
        w3 = self.start_worker("w3")
        dns.set_a("local.test.", ["127.0.0.1"], ttl=5)
        # Different priorities: an all-active cluster ignores them.
        dns.set_srv(self.NAME, [(10, 1, w1.port, "local.test."),
                                (20, 3, w3.port, "local.test.")], ttl=5)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, name=self.NAME, type="SRV", hold="1s")]))
        wait_found(tandem, [w1.address, w3.address], name=self.NAME, states=("up",))
        found = found_backends(tandem, self.NAME)
        self.assertEqual({a: (b["weight"], b["role"]) for a, b in found.items()},
                         {w1.address: (1, "primary"), w3.address: (3, "primary")})
        self.assertGreaterEqual(dns.queries("local.test.", "A"), 1,
                                "the SRV target was not resolved with an A query")

        counts = collections.Counter()
        with self.client(tandem.port) as client:
            for _ in range(400):
                response = client.get("/")
                self.assertEqual(response.status, 200, response)
                counts[response.header("x-worker")] += 1
        report("srv-weights", w1=counts["w1"], w3=counts["w3"])
        self.assertEqual(set(counts), {"w1", "w3"})
        ratio = counts["w3"] / counts["w1"]
        self.assertTrue(2.0 <= ratio <= 4.5, "share 1:%.2f, not about 1:3 (%s)"
                        % (ratio, dict(counts)))
        self.assertEqual(dns_backends_gauge(tandem, self.NAME), 2)

    def test_srv_priorities_give_primaries_and_backups_in_a_primary_backup_cluster(self):
        dns = self.start_dns()
        primary = self.start_worker("primary")
        backup = self.start_worker("backup")
        dns.set_a("local.test.", ["127.0.0.1"], ttl=5)
        dns.set_srv(self.NAME, [(10, 1, primary.port, "local.test."),
                                (20, 1, backup.port, "local.test.")], ttl=5)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, name=self.NAME, type="SRV", hold="1s")],
            cluster_opts={"policy": "primary-backup"}))
        wait_found(tandem, [primary.address, backup.address], name=self.NAME, states=("up",))
        found = found_backends(tandem, self.NAME)
        # As /status shows a configured hot backup (test_admin.py).
        self.assertEqual((found[primary.address]["role"], found[primary.address]["active"]),
                         ("primary", True))
        self.assertEqual((found[backup.address]["role"], found[backup.address]["standby"],
                          found[backup.address]["active"]), ("backup", "hot", False))
        counts = collections.Counter()
        with self.client(tandem.port) as client:
            for _ in range(30):
                response = client.get("/")
                self.assertEqual(response.status, 200, response)
                counts[response.header("x-worker")] += 1
        self.assertEqual(dict(counts), {"primary": 30})


# ---- failed lookups ------------------------------------------------------------------


class OutageTest(DiscoveryTestCase):
    """While the name server fails, the last good set serves; lookups are
    retried at failure_refresh; an answer after the outage is used."""

    def setUp(self):
        self.dns = self.start_dns()
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        self.hosts = hosts
        self.port, self.workers = start_worker_group(self, hosts, ["w1", "w2", "w3"])
        self.dns.set_a("workers.test.", hosts[:2], ttl=3)
        # Answers are asked again after 3 s; failures after 1 s.
        self.tandem = self.start_tandem(discovery_config(
            [dns_table(self.dns, port=self.port, refresh="3s", failure_refresh="1s",
                       hold="1s")]))
        self.addresses = [w.address for w in self.workers]
        wait_found(self.tandem, self.addresses[:2], states=("up",))

    def hold_through(self, seconds, load):
        """Watches /status for `seconds`: the two backends stay, up."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            found = found_backends(self.tandem)
            self.assertEqual({a: b["state"] for a, b in found.items()},
                             {a: "up" for a in self.addresses[:2]})
            time.sleep(0.25)
        self.assertEqual(dns_backends_gauge(self.tandem), 2, "the last good set")
        self.assertEqual(set(load.by_worker(time.monotonic() - 1)), {"w1", "w2"})

    def test_servfail_and_nxdomain_keep_the_backends_and_are_retried_at_failure_refresh(self):
        load = self.start_load(self.tandem.port, max_seconds=60)
        load.wait_answers(50)
        results = {}
        for mode, seconds in (("servfail", 7.0), ("nxdomain", 4.0)):
            failed_before = lookups(self.tandem, "failed")
            ok_before = lookups(self.tandem, "ok")
            since = time.monotonic()
            self.dns.set_mode(mode)
            self.hold_through(seconds, load)
            failed = lookups(self.tandem, "failed") - failed_before
            queries = self.dns.queries("workers.test.", since=since)
            results[mode] = (failed, queries, lookups(self.tandem, "ok") - ok_before)
            report("outage-" + mode, seconds=seconds, failed_lookups=failed, queries=queries)
        # A set name with no records of the type (an empty answer) fails too.
        self.dns.set_mode("answer")
        self.dns.remove("workers.test.")
        self.dns.set_aaaa("workers.test.", ["::1"])
        failed_before = lookups(self.tandem, "failed")
        self.hold_through(3.0, load)
        empty_failed = lookups(self.tandem, "failed") - failed_before

        changed = time.monotonic()
        self.dns.set_a("workers.test.", self.hosts[1:], ttl=3)
        first = load.wait_worker("w3", changed, scaled(10))
        wait_found(self.tandem, self.addresses[1:], timeout=scaled(5))
        load.wait_answers(50)
        self.assertNoFailures(load, "SERVFAIL and NXDOMAIN from the name server")
        report("after-outage", w3_after=first - changed, empty_failed=empty_failed)

        # The first failure comes within the 3 s refresh; then one every ~1 s.
        servfail_failed, servfail_queries, servfail_ok = results["servfail"]
        self.assertEqual(servfail_ok, 0)
        self.assertGreaterEqual(servfail_failed, 4, "retried at failure_refresh (1s)")
        self.assertLessEqual(servfail_failed, 8, "retried more often than failure_refresh")
        self.assertLessEqual(servfail_queries, 3 * (servfail_failed + 1))
        nxdomain_failed, _, _ = results["nxdomain"]
        self.assertGreaterEqual(nxdomain_failed, 2)
        self.assertGreaterEqual(empty_failed, 1, "an empty answer is a failed lookup")
        self.assertLessEqual(first - changed, 1 + CHECK_INTERVAL + SLACK,
                             "the retry after a failure comes at failure_refresh")
        self.assertGreaterEqual(lookups(self.tandem, "ok"), 2)

    def test_thirty_seconds_without_answers_keep_the_backends_and_a_later_change_is_used(self):
        load = self.start_load(self.tandem.port, max_seconds=90)
        load.wait_answers(50)
        outage = 30.0
        failed_before = lookups(self.tandem, "failed")
        since = time.monotonic()
        self.dns.set_mode("timeout")
        self.hold_through(outage, load)
        failed = lookups(self.tandem, "failed") - failed_before
        asked = [t for t, _, _, _ in self.dns.query_log("workers.test.", since=since)]
        gaps = [b - a for a, b in zip(asked, asked[1:])]

        # Back, with another answer: it is used at the next retry.
        self.dns.set_a("workers.test.", self.hosts[1:], ttl=3)
        changed = time.monotonic()
        self.dns.set_mode("answer")
        first = load.wait_worker("w3", changed, scaled(20))
        wait_found(self.tandem, self.addresses[1:], timeout=scaled(10))
        load.wait_answers(50)
        self.assertNoFailures(load, "30 s without DNS answers")
        report("outage-timeout", seconds=outage, failed_lookups=failed, queries=len(asked),
               first_query=(asked[0] - since) if asked else -1.0,
               max_gap=max(gaps, default=-1.0), w3_after=first - changed)

        self.assertGreaterEqual(failed, 3, "failed lookups counted during the outage")
        self.assertGreaterEqual(len(asked), failed)
        self.assertLessEqual(len(asked), 3 * outage, "more than ~3 queries a second")
        # Asked throughout: the first within the 3 s refresh, then no long pause.
        self.assertLessEqual(asked[0] - since, 3 + SLACK)
        self.assertLessEqual(max(gaps), 10.0, gaps)
        self.assertGreater(asked[-1], since + outage - 10.0)
        self.assertGreater(lookups(self.tandem, "ok"), 0)


# ---- a long answer -------------------------------------------------------------------


class TruncationTest(DiscoveryTestCase):

    def test_a_300_record_answer_is_truncated_over_udp_and_read_over_tcp(self):
        dns = self.start_dns()
        port = free_port_on("127.0.0.2")
        hosts = ["127.1.%d.%d" % (i // 250, i % 250 + 1) for i in range(300)]
        dns.set_a("workers.test.", hosts, ttl=30)
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=port, refresh="30s")], checks=False))
        wait_found(tandem, ["%s:%d" % (h, port) for h in hosts], timeout=scaled(15))
        log = dns.query_log("workers.test.", "A")
        report("truncated", udp=dns.queries("workers.test.", "A", "udp"),
               tcp=dns.queries("workers.test.", "A", "tcp"), truncated=dns.truncated)
        self.assertGreaterEqual(dns.truncated, 1, "no UDP answer was truncated")
        self.assertGreaterEqual(dns.queries("workers.test.", "A", "tcp"), 1,
                                "the truncated answer was not asked again over TCP")
        self.assertEqual(log[0][3], "udp", "UDP first, TCP after the TC bit")
        found = found_backends(tandem)
        self.assertEqual(len(found), 300)
        self.assertLessEqual({b["state"] for b in found.values()}, set(SERVING_UNCHECKED))
        self.assertEqual({b["source"] for b in found.values()}, {"dns:workers.test."})
        self.assertEqual(dns_backends_gauge(tandem), 300)
        self.assertGreaterEqual(lookups(tandem, "ok"), 1)
        self.assertEqual(lookups(tandem, "failed"), 0)


# ---- --check -------------------------------------------------------------------------


class CheckTest(DiscoveryTestCase):
    """`tandem --check` on [[clusters.NAME.dns]] mistakes: exit 1, naming the key."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tandem-e2e-dns-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def check(self, text):
        path = os.path.join(self.dir, "tandem.toml")
        with open(path, "w") as f:
            f.write(text)
        result = run_tandem(["-c", path, "--check"])
        return result.returncode, (result.stdout + result.stderr).decode()

    @staticmethod
    def entry(cluster_opts=None, **values):
        return make_config([], cluster_opts=cluster_opts,
                           extra=toml_table("[clusters.compute.dns]", values))

    def assertRejected(self, text, key, words=()):
        code, output = self.check(text)
        self.assertNotEqual(code, 0, output)
        self.assertEqual(code, 1, output)
        self.assertRegex(output, r"tandem\.toml:\d+:\d+: " + re.escape(key) + r"\b", output)
        for word in words:
            self.assertIn(word, output)

    def test_a_dns_entry_without_backends_is_valid(self):
        code, output = self.check(self.entry(name="workers.test.", port=9001, type="A",
                                             weight=2, refresh="5s", failure_refresh="1s",
                                             hold="30s", servers=["127.0.0.1:53"]))
        self.assertEqual(code, 0, output)
        code, output = self.check(self.entry(name="_http._tcp.test.", type="SRV"))
        self.assertEqual(code, 0, output)

    def test_an_unknown_record_type(self):
        self.assertRejected(self.entry(name="workers.test.", type="MX", port=9001),
                            "clusters.compute.dns[0].type", ["MX"])

    def test_a_port_on_an_srv_entry(self):
        self.assertRejected(self.entry(name="_http._tcp.test.", type="SRV", port=9001),
                            "clusters.compute.dns[0].port")

    def test_an_a_entry_without_a_port(self):
        self.assertRejected(self.entry(name="workers.test.", type="A"),
                            "clusters.compute.dns[0].port")
        self.assertRejected(self.entry(name="workers.test."), "clusters.compute.dns[0].port")

    def test_a_dns_entry_without_a_name(self):
        self.assertRejected(self.entry(type="A", port=9001), "clusters.compute.dns[0].name")

    def test_a_cold_standby_on_a_dns_entry(self):
        self.assertRejected(self.entry(cluster_opts={"policy": "primary-backup"},
                                       name="workers.test.", port=9001, role="backup",
                                       standby="cold"),
                            "clusters.compute.dns[0].standby", ["cold"])

    def test_a_cluster_with_neither_backends_nor_dns(self):
        code, output = self.check(make_config([]))
        self.assertEqual(code, 1, output)
        self.assertRegex(output, r"tandem\.toml:\d+:\d+: clusters\.compute(\.backends|\.dns)?: ",
                         output)
        self.assertIn("backend", output)


# ---- reload --------------------------------------------------------------------------


class ReloadTest(DiscoveryTestCase):

    def test_a_reload_keeps_the_discovered_backends_and_their_state(self):
        dns = self.start_dns()
        configured = self.start_worker("w0")
        hosts = ["127.0.0.2", "127.0.0.3"]
        port, workers = start_worker_group(self, hosts, ["w1", "w2"])
        addresses = [w.address for w in workers]
        dns.set_a("workers.test.", hosts, ttl=1)
        text = discovery_config([dns_table(dns, port=port, refresh="2s", hold="1s")],
                                backends=[configured.address])
        tandem = self.start_tandem(text)
        wait_found(tandem, addresses, states=("up",))
        by_address = {b["address"]: b for b in compute_backends(tandem)}
        self.assertEqual(by_address[configured.address]["source"], "config")
        load = self.start_load(tandem.port)
        load.wait_answers(50)
        before = found_backends(tandem)

        # No answer from now on: what a reload shows comes from before it.
        dns.set_mode("timeout")
        for trigger in ("SIGHUP", "admin"):
            start = tandem.stderr.count()
            if trigger == "SIGHUP":
                tandem.send_signal(signal.SIGHUP)
            else:
                response = admin_post(tandem, "/admin/reload")
                self.assertEqual(response.status, 200, response.body)
            _, ok, fields = wait_reload_by(tandem, start, trigger)
            self.assertTrue(ok, fields)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                found = found_backends(tandem)
                self.assertEqual({a: b["state"] for a, b in found.items()},
                                 {a: "up" for a in addresses}, "after the %s reload" % trigger)
                for address in addresses:
                    self.assertEqual(found[address]["transitions"],
                                     before[address]["transitions"], address)
                time.sleep(0.1)
            load.wait_answers(20)
        self.assertEqual(set(load.by_worker(time.monotonic() - 1)), {"w0", "w1", "w2"})
        self.assertNoFailures(load, "reloads with the dns entry unchanged")
        self.assertEqual(dns_backends_gauge(tandem), 2)


# ---- readiness -----------------------------------------------------------------------


class ReadinessTest(DiscoveryTestCase):

    def test_readyz_is_503_until_the_first_lookup_is_answered(self):
        dns = self.start_dns()
        worker = self.start_worker("w1", listen="127.0.0.2:0")
        dns.set_a("workers.test.", ["127.0.0.2"], ttl=5)
        dns.set_mode("timeout")
        tandem = self.start_tandem(discovery_config(
            [dns_table(dns, port=worker.port, failure_refresh="1s")], checks=False))
        self.assertEqual(tandem.admin("/readyz").status, 503)
        self.assertIs(tandem.status_json()["ready"], False)
        wait_until(lambda: dns.queries("workers.test."), scaled(5), "the first query")
        self.assertEqual(tandem.admin("/readyz").status, 503, "with the first lookup pending")
        self.assertEqual(found_backends(tandem), {})

        answered = time.monotonic()
        dns.set_mode("answer")
        wait_until(lambda: tandem.admin("/readyz").status == 200, scaled(20),
                   "/readyz to answer 200")
        report("readyz", ready_after=time.monotonic() - answered,
               queries=dns.queries("workers.test."))
        self.assertIs(tandem.status_json()["ready"], True)
        self.assertEqual(set(found_backends(tandem)), {worker.address})
        response = http_request(tandem.port)
        self.assertEqual((response.status, response.header("x-worker")), (200, "w1"))


if __name__ == "__main__":
    unittest.main()
