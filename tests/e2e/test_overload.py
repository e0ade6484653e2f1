"""Circuit breakers per cluster, across threads (issue "Overload"): at most
max_requests in flight to the backends, max_pending waiting in the queue and
max_retries_in_flight retries; over them a request waits in the queue (when
it has room) up to queue_timeout, else gets 503 with Retry-After, and its
access-log line is flagged CB. With concurrency = "adaptive" the limit
follows the workers' latency, and its refusals are flagged AC."""

import collections
import socket
import threading
import time
import unittest

from faults import FaultTestCase, access_entries, parallel_gets, report, wait_access_count
from harness import http_request, make_config, scaled

NO_CHECKS = '[clusters.compute.health]\nkind = "none"\n'


def overflows(tandem, limit):
    return sum(v for k, v in tandem.metrics().items()
               if k.startswith("tandem_circuit_breaker_overflows_total") and
               'limit="%s"' % limit in k)


class MaxRequestsTest(FaultTestCase):

    def start(self, threads=1, **cluster):
        workers = [self.start_worker("w%d" % i, threads=2) for i in (1, 2)]
        tandem = self.start_tandem(make_config(
            [w.address for w in workers], global_opts={"threads": threads},
            cluster_opts=cluster, extra=NO_CHECKS))
        return workers, tandem

    def test_over_max_requests_clients_get_503_with_retry_after_on_every_thread(self):
        for threads in (1, 2):
            with self.subTest(threads=threads):
                _, tandem = self.start(threads=threads, max_requests=2)
                outcomes = parallel_gets(tandem.port, ["/sleep?ms=500"] * 6)
                statuses = collections.Counter(o.status for o in outcomes)
                rejected = [o for o in outcomes if o.status == 503]
                report("max_requests 2, %d thread(s)" % threads, statuses=dict(statuses))
                self.assertEqual(statuses, {200: 2, 503: 4}, outcomes)
                for outcome in rejected:
                    self.assertRegex(outcome.retry_after or "", r"^\d+$", outcome)
                    self.assertLess(outcome.seconds, 0.4, outcome)
                wait_access_count(tandem, 6)
                flagged = [e for e in access_entries(tandem) if "CB" in e.flags]
                self.assertEqual(sorted(e.status for e in flagged), [503] * 4)
                self.assertEqual(overflows(tandem, "max_requests"), 4)

    def test_over_max_requests_a_request_waits_in_the_queue(self):
        _, tandem = self.start(max_requests=2, queue_size=4, queue_timeout="5s")
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=300"] * 6)
        statuses = collections.Counter(o.status for o in outcomes)
        slowest = max(o.seconds for o in outcomes)
        report("max_requests 2, queue 4", statuses=dict(statuses), slowest_s=slowest)
        self.assertEqual(statuses, {200: 6}, outcomes)
        # Three rounds of two: the last ones waited for two slots to free.
        self.assertGreaterEqual(slowest, 0.85)
        wait_access_count(tandem, 6)
        self.assertEqual(len([e for e in access_entries(tandem) if "CB" in e.flags]), 4)
        self.assertEqual(overflows(tandem, "max_requests"), 4)


def gauge(tandem, name):
    return next((v for k, v in tandem.metrics().items()
                 if k.startswith(name + "{")), None)


def load_loop(port, target, clients, seconds):
    """`clients` threads sending `target` one after another on new
    connections for `seconds`; returns the statuses (and failures) seen."""
    statuses = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run():
        while time.monotonic() < deadline:
            try:
                status = http_request(port, "GET", target, timeout=scaled(10)).status
            except (OSError, EOFError) as e:
                status = type(e).__name__
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + scaled(20))
    return statuses


class AdaptiveConcurrencyTest(FaultTestCase):

    def test_the_limit_grows_on_fast_workers_and_falls_when_they_slow_down(self):
        workers = [self.start_worker("w%d" % i, threads=2) for i in (1, 2)]
        extra = NO_CHECKS + '[clusters.compute.adaptive]\nmin_limit = 3\nmax_limit = 100\n'
        tandem = self.start_tandem(make_config(
            [w.address for w in workers], global_opts={"threads": 2},
            cluster_opts={"concurrency": "adaptive"}, extra=extra))
        # Workers answering in 20 ms: minRTT is measured (the limit at 3,
        # requests over it waiting, not refused), then the limit grows past
        # the 16 clients.
        for worker in workers:
            self.assertEqual(http_request(worker.port, "POST", "/control/delay?ms=20",
                                          body=b"").status, 200)
        fast = load_loop(tandem.port, "/", 16, 2.5)
        limit = gauge(tandem, "tandem_adaptive_concurrency_limit")
        min_rtt = gauge(tandem, "tandem_adaptive_min_rtt_seconds")
        report("adaptive, fast workers", statuses=dict(fast), limit=limit, min_rtt=min_rtt)
        self.assertEqual(set(fast), {200}, fast)
        self.assertGreaterEqual(limit, 16)
        self.assertTrue(0.015 <= min_rtt <= 0.1, min_rtt)
        # Every worker 20× slower: the limit falls to its floor, and the
        # requests over it are refused at once with Retry-After, flagged AC.
        for worker in workers:
            self.assertEqual(http_request(worker.port, "POST", "/control/delay?ms=400",
                                          body=b"").status, 200)
        start = len(tandem.access_lines())
        slow = load_loop(tandem.port, "/", 16, 2.5)
        limit_after = gauge(tandem, "tandem_adaptive_concurrency_limit")
        report("adaptive, slow workers", statuses=dict(slow), limit=limit_after)
        self.assertLessEqual(limit_after, 6)
        self.assertGreater(slow[503], 0, slow)
        self.assertGreater(slow[200], 0, slow)
        wait_access_count(tandem, sum(slow.values()), start)
        refused = [e for e in access_entries(tandem, start) if e.status == 503]
        self.assertTrue(refused and all("AC" in e.flags for e in refused), refused[:3])
        self.assertGreater(overflows(tandem, "adaptive"), 0)
        self.assertEqual(tandem.status_json()["clusters"][0]["concurrency_limit_from"],
                         "adaptive")


    def test_a_reload_keeps_the_limit_of_an_unchanged_cluster(self):
        workers = [self.start_worker("w%d" % i, threads=2) for i in (1, 2)]

        def config(retries, max_limit):
            extra = NO_CHECKS + ('[clusters.compute.adaptive]\nmin_limit = 3\n'
                                 'max_limit = %d\n' % max_limit)
            return make_config([w.address for w in workers],
                               cluster_opts={"concurrency": "adaptive", "retries": retries},
                               extra=extra)
        tandem = self.start_tandem(config(2, 100))
        for worker in workers:
            self.assertEqual(http_request(worker.port, "POST", "/control/delay?ms=20",
                                          body=b"").status, 200)
        load_loop(tandem.port, "/", 16, 2.5)

        def state():
            return (gauge(tandem, "tandem_adaptive_concurrency_limit"),
                    gauge(tandem, "tandem_adaptive_measuring"),
                    gauge(tandem, "tandem_adaptive_min_rtt_seconds"))
        grown = state()
        # Another retries value, the same adaptive settings: the limiter, its
        # limit and its minRTT carry over.
        self.assertTrue(tandem.reload(config(3, 100)))
        kept = state()
        # Other adaptive settings: a new limiter, measuring minRTT at its floor.
        self.assertTrue(tandem.reload(config(3, 90)))
        fresh = state()
        report("adaptive across reloads", grown=grown, kept=kept, fresh=fresh)
        self.assertGreaterEqual(grown[0], 16)
        self.assertEqual(grown[1], 0)
        self.assertEqual(kept, grown)
        self.assertEqual(fresh[0], 3)
        self.assertEqual(fresh[1], 1)


class MaxPendingTest(FaultTestCase):

    def test_a_full_queue_turns_requests_away_across_threads(self):
        worker = self.start_worker("w1", threads=2)
        tandem = self.start_tandem(make_config(
            [worker.address], global_opts={"threads": 2},
            cluster_opts={"max_requests": 1, "max_pending": 1, "queue_size": 10,
                          "queue_timeout": "5s"},
            extra=NO_CHECKS))
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=400"] * 4)
        statuses = collections.Counter(o.status for o in outcomes)
        rejected = [o for o in outcomes if o.status == 503]
        report("max_requests 1, max_pending 1", statuses=dict(statuses))
        # One in flight, one waiting, two turned away at once.
        self.assertEqual(statuses, {200: 2, 503: 2}, outcomes)
        for outcome in rejected:
            self.assertRegex(outcome.retry_after or "", r"^\d+$", outcome)
            self.assertLess(outcome.seconds, 0.3, outcome)
        self.assertEqual(overflows(tandem, "max_pending"), 2)
        self.assertEqual(worker.stats()["max_concurrent"], 1)


class MaxRetriesInFlightTest(FaultTestCase):

    def test_retries_over_the_limit_wait_for_one_to_end(self):
        failing = self.start_worker("w1")
        slow = self.start_worker("w2", threads=2)
        for worker, path in ((failing, "/control/fail?status=503"),
                             (slow, "/control/delay?ms=400")):
            response = http_request(worker.port, "POST", path, body=b"")
            self.assertEqual(response.status, 200, response)
        tandem = self.start_tandem(make_config(
            [failing.address, slow.address],
            cluster_opts={"algorithm": "round-robin", "retries": 1,
                          "max_retries_in_flight": 1},
            extra=NO_CHECKS))
        outcomes = parallel_gets(tandem.port, ["/"] * 4)
        statuses = collections.Counter(o.status for o in outcomes)
        report("max_retries_in_flight 1", statuses=dict(statuses),
               seconds=sorted(round(o.seconds, 3) for o in outcomes))
        # Two requests met the failing worker; both were retried on the slow
        # one, the second only after the first retry had ended.
        self.assertEqual(statuses, {200: 4}, outcomes)
        self.assertGreaterEqual(max(o.seconds for o in outcomes), 0.75)
        wait_access_count(tandem, 4)
        waited = [e for e in access_entries(tandem) if "CB" in e.flags]
        self.assertEqual(len(waited), 1, [e.line for e in access_entries(tandem)])
        self.assertEqual(waited[0].tries, 2)
        self.assertGreaterEqual(overflows(tandem, "max_retries_in_flight"), 1)


def staggered(send, calls):
    """send(*args) for each args of `calls`, each in its own thread, started
    0.1 s apart (so they reach tandem in that order); waits for them all."""
    threads = []
    for args in calls:
        thread = threading.Thread(target=send, args=args, daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.1)
    for thread in threads:
        thread.join(scaled(20))


def shed_counts(tandem):
    """{series: value} of tandem_shed_total's non-zero series."""
    return {k: v for k, v in tandem.metrics().items()
            if k.startswith("tandem_shed_total") and v}


def priority_sender(tandem, results):
    """send(name, priority, ms): a GET of /sleep?ms=MS with X-Priority, its
    (status, sent, done, Retry-After) kept in results[name]."""
    def send(name, priority, ms):
        sent = time.monotonic()
        response = http_request(tandem.port, "GET", "/sleep?ms=%d" % ms,
                                headers={"X-Priority": priority}, timeout=scaled(20))
        results[name] = (response.status, sent, time.monotonic(),
                         response.header("retry-after"))
    return send


class PriorityTest(FaultTestCase):
    """priority_header: a request of higher priority waits ahead of lower
    ones, and pushes the newest lower one out of a full queue."""

    def test_high_priority_goes_first_and_low_is_shed_from_a_full_queue(self):
        worker = self.start_worker("w1", threads=2)
        tandem = self.start_tandem(make_config(
            [worker.address],
            cluster_opts={"max_requests": 1, "queue_size": 2, "queue_timeout": "5s",
                          "priority_header": "X-Priority"},
            extra=NO_CHECKS))
        results = {}
        # One request holds the only slot; two low ones fill the queue; a
        # high one comes last.
        staggered(priority_sender(tandem, results), (("first", "normal", 600), ("low1", "low", 100),
                         ("low2", "7", 100), ("high", "high", 100)))
        report("priorities", **{k: "%d/%.3f" % (v[0], v[2] - v[1]) for k, v in results.items()})
        self.assertEqual(results["first"][0], 200)
        self.assertEqual(results["high"][0], 200)
        self.assertEqual(results["low1"][0], 200)
        # The newest low one made room for the high one, at once.
        status, sent, done, retry_after = results["low2"]
        self.assertEqual(status, 503)
        self.assertRegex(retry_after or "", r"^\d+$")
        self.assertLess(done - results["high"][1], 0.3)
        # The high one went before the low one that had waited longer.
        self.assertLess(results["high"][2], results["low1"][2])
        shed = shed_counts(tandem)
        self.assertEqual(list(shed.values()), [1.0], shed)
        self.assertIn('priority="7"', list(shed)[0])


    def test_high_requests_may_wait_past_a_full_queue_normal_ones_not(self):
        # queue_size 1: one normal request may wait; high ones may wait up to
        # 4 x queue_size, so a burst of three is served rather than refused.
        worker = self.start_worker("w1", threads=2)
        tandem = self.start_tandem(make_config(
            [worker.address],
            cluster_opts={"max_requests": 1, "queue_size": 1, "queue_timeout": "5s",
                          "priority_header": "X-Priority"},
            extra=NO_CHECKS))
        found = {}
        staggered(priority_sender(tandem, found),
                  (("first", "normal", 1000), ("high1", "high", 50), ("high2", "0", 50),
                   ("high3", "high", 50), ("normal", "normal", 50), ("high4", "high", 50),
                   ("high5", "high", 50)))
        results = {name: found[name][0] for name in found}
        report("burst of high", **results)
        self.assertEqual(results["first"], 200)
        # The normal one found the queue full of high ones: refused.
        self.assertEqual(results["normal"], 503)
        for name in ("high1", "high2", "high3", "high4"):
            self.assertEqual(results[name], 200, results)
        # Past 4 x queue_size even a high one is refused.
        self.assertEqual(results["high5"], 503, results)


class ListenerPriorityTest(FaultTestCase):
    """A listener's `priority` is its requests' priority when they name none:
    a "low" batch listener's request is shed from a full queue for a normal
    one from the main listener."""

    def test_a_low_listener_request_is_shed_for_a_normal_one(self):
        worker = self.start_worker("w1", threads=2)
        extra = NO_CHECKS + ('[listeners.batch]\nlisten = "127.0.0.1:0"\n'
                             'cluster = "compute"\npriority = "low"\n')
        tandem = self.start_tandem(make_config(
            [worker.address],
            cluster_opts={"max_requests": 1, "queue_size": 1, "queue_timeout": "5s",
                          "priority_header": "X-Priority"},
            extra=extra))
        results = {}

        def send(name, port, ms):
            response = http_request(port, "GET", "/sleep?ms=%d" % ms, timeout=scaled(20))
            results[name] = response.status

        staggered(send, (("first", tandem.port, 500), ("batch", tandem.ports["batch"], 100),
                         ("main", tandem.port, 100)))
        report("listener priority", **results)
        self.assertEqual(results, {"first": 200, "batch": 503, "main": 200})
        shed = shed_counts(tandem)
        self.assertEqual(list(shed.values()), [1.0], shed)
        self.assertIn('priority="7"', list(shed)[0])


def get_from(port, source="127.0.0.1", headers=None, keep=None):
    """GET / from `source` (an address of 127.0.0.0/8); returns (status,
    Retry-After or None). `keep`: a socket to send on again (keep-alive)."""
    lines = ["GET / HTTP/1.1", "Host: tandem"]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10),
                                    source_address=(source, 0))
    try:
        sock.sendall(("\r\n".join(lines + ["Connection: close", "", ""])).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    retry_after = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            retry_after = value.strip()
    return status, retry_after


def rate_results(tandem, scope):
    """tandem_rate_limit_requests_total of the `scope` ("listener" or
    "cluster") by result."""
    return {r: sum(v for k, v in tandem.metrics().items()
                   if k.startswith("tandem_rate_limit_requests_total") and
                   '%s=' % scope in k and 'result="%s"' % r in k)
            for r in ("allowed", "limited", "dry_run")}


class RateLimitTest(FaultTestCase):

    def start(self, listener=None, cluster=None, threads=1):
        worker = self.start_worker("w1", threads=2)
        extra = NO_CHECKS
        if listener:
            extra += "\n[listeners.web.rate_limit]\n" + "".join(
                "%s = %s\n" % kv for kv in listener.items())
        if cluster:
            extra += "\n[clusters.compute.rate_limit]\n" + "".join(
                "%s = %s\n" % kv for kv in cluster.items())
        return self.start_tandem(make_config([worker.address], extra=extra,
                                             global_opts={"threads": threads}))

    def test_a_global_limit_answers_429_with_retry_after_past_its_burst(self):
        tandem = self.start(listener={"rate": 5, "burst": 10, "key": '"global"'})
        started = time.monotonic()
        results = [get_from(tandem.port) for _ in range(30)]
        elapsed = time.monotonic() - started
        allowed = sum(1 for status, _ in results if status == 200)
        limited = [(status, after) for status, after in results if status == 429]
        report("global 5/s burst 10", allowed=allowed, limited=len(limited), seconds=elapsed)
        self.assertEqual(allowed + len(limited), 30, results)
        # The burst, and what the rate refilled meanwhile.
        self.assertGreaterEqual(allowed, 10)
        self.assertLessEqual(allowed, 10 + int(5 * elapsed) + 1)
        for _, after in limited:
            self.assertRegex(after or "", r"^[1-9]\d*$")
        counts = rate_results(tandem, "listener")
        self.assertEqual(counts, {"allowed": allowed, "limited": len(limited), "dry_run": 0})
        wait_access_count(tandem, 30)
        flagged = [e for e in access_entries(tandem) if "RL" in e.flags]
        self.assertEqual(len(flagged), len(limited))
        self.assertTrue(all(e.status == 429 for e in flagged))

    def test_each_source_address_has_its_own_bucket(self):
        tandem = self.start(cluster={"rate": 1, "burst": 3})
        first = [get_from(tandem.port, "127.0.0.1")[0] for _ in range(6)]
        second = [get_from(tandem.port, "127.0.0.2")[0] for _ in range(3)]
        report("source-ip 1/s burst 3", first=first, second=second)
        self.assertEqual(first[:3], [200] * 3)
        self.assertIn(429, first[3:])
        self.assertEqual(second, [200] * 3)
        self.assertEqual(rate_results(tandem, "cluster")["limited"], first.count(429))

    def test_a_header_key_limits_each_value_and_not_requests_without_it(self):
        tandem = self.start(cluster={"rate": 1, "burst": 2, "key": '"header:X-User"',
                                     "max_keys": 10})
        alice = [get_from(tandem.port, headers={"X-User": "alice"})[0] for _ in range(4)]
        bob = [get_from(tandem.port, headers={"X-User": "bob"})[0] for _ in range(2)]
        nobody = [get_from(tandem.port)[0] for _ in range(5)]
        for n in range(30):
            get_from(tandem.port, headers={"X-User": "user%d" % n})
        keys = sum(v for k, v in tandem.metrics().items()
                   if k.startswith("tandem_rate_limit_keys"))
        report("header:X-User 1/s burst 2", alice=alice, bob=bob, nobody=nobody, keys=keys)
        self.assertEqual(alice[:2], [200, 200])
        self.assertIn(429, alice[2:])
        self.assertEqual(bob, [200, 200])
        self.assertEqual(nobody, [200] * 5)
        # 32 users seen, at most max_keys tracked.
        self.assertEqual(keys, 10)

    def test_long_header_keys_cost_no_memory_of_their_own(self):
        # 2,000 users, each named by 32 KiB: kept as they came, the keys
        # alone would hold 64 MiB.
        tandem = self.start(cluster={"rate": 1000, "key": '"header:X-User"'})
        get_from(tandem.port, headers={"X-User": "warm-up"})
        before = tandem.memory_kib("VmRSS")
        for n in range(2000):
            name = ("%05d" % n) * (32 * 1024 // 5)
            self.assertEqual(get_from(tandem.port, headers={"X-User": name})[0], 200)
        grown = tandem.memory_kib("VmRSS") - before
        keys = sum(v for k, v in tandem.metrics().items()
                   if k.startswith("tandem_rate_limit_keys"))
        report("2,000 keys of 32 KiB", rss_growth_kib=grown, keys=keys)
        self.assertEqual(keys, 2001)
        # (Under ASan its 16 MiB quarantine of freed blocks counts too.)
        self.assertLess(grown, 32 * 1024)

    def test_dry_run_counts_and_flags_but_answers(self):
        tandem = self.start(listener={"rate": 1, "burst": 1, "key": '"global"',
                                      "dry_run": "true"})
        statuses = [get_from(tandem.port)[0] for _ in range(8)]
        counts = rate_results(tandem, "listener")
        report("dry_run", statuses=statuses, counts=counts)
        self.assertEqual(statuses, [200] * 8)
        self.assertGreaterEqual(counts["dry_run"], 6)
        self.assertEqual(counts["limited"], 0)
        wait_access_count(tandem, 8)
        self.assertEqual(len([e for e in access_entries(tandem) if "RL" in e.flags]),
                         counts["dry_run"])

    def test_a_reload_keeps_the_buckets_of_an_unchanged_limit(self):
        worker = self.start_worker("w1", threads=2)

        def text(burst):
            # One token every 20 s: nothing refills while the test runs.
            return make_config([worker.address], extra=NO_CHECKS + (
                '\n[listeners.web.rate_limit]\nrate = 0.05\nburst = %d\n'
                'key = "global"\n' % burst))
        tandem = self.start_tandem(text(3))
        first = [get_from(tandem.port)[0] for _ in range(4)]
        self.assertTrue(tandem.reload(text(3)))
        same = get_from(tandem.port)[0]
        self.assertTrue(tandem.reload(text(5)))
        changed = [get_from(tandem.port)[0] for _ in range(6)]
        report("reload and rate limit", first=first, same=same, changed=changed)
        self.assertEqual(first, [200, 200, 200, 429])
        # The same settings: the empty bucket stays empty.
        self.assertEqual(same, 429)
        # Other settings: new buckets, full.
        self.assertEqual(changed, [200] * 5 + [429])

    def test_one_limit_for_the_process_across_threads(self):
        # Two loop threads, four clients well over the rate for 2 s: what is
        # allowed is the burst plus the rate over that time.
        tandem = self.start(listener={"rate": 100, "burst": 20, "key": '"global"'},
                            threads=2)
        stop = time.monotonic() + 2.0
        counts = collections.Counter()
        lock = threading.Lock()

        def client():
            while time.monotonic() < stop:
                status, _ = get_from(tandem.port)
                with lock:
                    counts[status] += 1
        started = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(30))
        elapsed = time.monotonic() - started
        expected = 20 + 100 * elapsed
        report("global 100/s, 2 threads", statuses=dict(counts), expected=expected,
               ratio=counts[200] / expected)
        self.assertGreater(counts[429], counts[200])  # well over the rate
        self.assertLess(abs(counts[200] - expected) / expected, 0.1, counts)


if __name__ == "__main__":
    unittest.main()
