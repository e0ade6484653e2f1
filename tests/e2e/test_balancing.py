"""Allocation through tandem, seen at real backends (issue 3, end-to-end tests):
weighted shares, load-aware picks, sticky consistent hashing and its
disruption when a backend leaves, primaries before backups, and max_inflight
with its wait queue."""

import collections
import time
import unittest

from faults import (FaultTestCase, access_entries, backend_status, by_worker, failures,
                    health_table, parallel_gets, report, wait_access_count, wait_all_up,
                    wait_state)
from harness import Client, make_config, response_bytes, scaled, serve_each

FAST_CHECKS = health_table(kind="http", path="/healthz", interval="200ms", timeout="150ms",
                           rise=1, fall=1)
NO_CHECKS = health_table(kind="none")
# For the stickiness cases: a stopped worker refuses at once and is down
# after two checks, while a survivor must miss two checks of 300 ms in a row
# to be taken out (with 150 ms and fall = 1, a single slow check on a busy
# machine can take a survivor out and move its keys).
STEADY_CHECKS = health_table(kind="http", path="/healthz", interval="300ms", timeout="300ms",
                             rise=1, fall=2)


def send_sequentially(port, count, headers_for=None, target="/"):
    """`count` GETs one after another on one keep-alive connection; returns
    the X-Worker of each (None for a non-2xx answer)."""
    workers = []
    with Client(port, scaled(10)) as client:
        for i in range(count):
            response = client.get(target, headers_for(i) if headers_for else None)
            workers.append(response.header("x-worker") if response.status == 200 else None)
    return workers


def served(worker, before):
    """Requests `worker` served since its /stats said `before`, this /stats
    excluded."""
    return worker.stats()["requests_served"] - before - 1


class WeightTest(FaultTestCase):
    """Weights 3:1:1, no checks (every backend takes traffic from the start)."""

    def start(self, algorithm, **cluster):
        self.workers = [self.start_worker(name) for name in ("w1", "w2", "w3")]
        backends = [(w.address, {"weight": weight}) for w, weight in zip(self.workers, (3, 1, 1))]
        cluster_opts = {"algorithm": algorithm}
        cluster_opts.update(cluster)
        return self.start_tandem(make_config(backends, cluster_opts=cluster_opts,
                                             extra=NO_CHECKS))

    def measure(self, tandem, count, headers_for=None):
        before = {w.worker_name: w.stats()["requests_served"] for w in self.workers}
        answered = collections.Counter(send_sequentially(tandem.port, count, headers_for))
        at_backends = {w.worker_name: served(w, before[w.worker_name]) for w in self.workers}
        self.assertEqual(answered[None], 0)
        # What the clients saw is what the backends counted.
        self.assertEqual(dict(answered), at_backends)
        return {name: at_backends[name] / count for name in at_backends}

    def assertShares(self, shares, tolerance):
        for name, expected in (("w1", 0.6), ("w2", 0.2), ("w3", 0.2)):
            self.assertAlmostEqual(shares[name], expected, delta=tolerance, msg=shares)

    def test_round_robin_shares_follow_the_weights_3_1_1(self):
        tandem = self.start("round-robin")
        shares = self.measure(tandem, 3000)
        report("weights round-robin", shares=shares)
        # Smooth WRR on one thread is exact over whole cycles of five.
        self.assertShares(shares, 0.005)

    def test_random_shares_follow_the_weights_3_1_1(self):
        tandem = self.start("random")
        shares = self.measure(tandem, 3000)
        report("weights random", shares=shares)
        self.assertShares(shares, 0.04)  # over 4 standard deviations

    def test_ring_hash_shares_of_distinct_keys_follow_the_weights_3_1_1(self):
        tandem = self.start("ring-hash", hash_key="header:X-User")
        shares = self.measure(tandem, 3000, lambda i: {"X-User": "user-%d" % i})
        report("weights ring-hash", shares=shares)
        # 160 points per weight (nginx's ketama) leave each backend's share of
        # the ring uneven by chance, and the ports (so the points) differ each
        # run: over 2,000 simulated placements of these three backends the
        # largest share error was 0.072 (p99 0.051). A picker that ignored the
        # weights would be 0.27 off.
        self.assertShares(shares, 0.08)

    def test_maglev_shares_of_distinct_keys_follow_the_weights_3_1_1(self):
        tandem = self.start("maglev", hash_key="header:X-User")
        shares = self.measure(tandem, 3000, lambda i: {"X-User": "user-%d" % i})
        report("weights maglev", shares=shares)
        self.assertShares(shares, 0.05)


class LoadAwareTest(FaultTestCase):
    """Two fast workers and one backend that takes 100 ms per answer: the
    load-aware algorithms send the slow one far less than its third."""

    def slow_answer(self, request):
        time.sleep(0.1)
        return response_bytes(200, b"slow\n", [("X-Worker", "slow")])

    def share_of_slow(self, algorithm):
        fast = [self.start_worker(name) for name in ("w1", "w2")]
        slow = self.start_backend(serve_each(self.slow_answer))
        tandem = self.start_tandem(make_config(
            [w.address for w in fast] + [slow.address],
            cluster_opts={"algorithm": algorithm}, extra=NO_CHECKS))
        load = self.start_load(tandem.port, connections=6, max_requests=900, pause=0)
        load.wait_done(scaled(60))
        outcomes = load.stop()
        self.assertEqual(failures(outcomes), [])
        counts = by_worker(outcomes)
        share = counts["slow"] / len(outcomes)
        report("load-aware " + algorithm, requests=len(outcomes), counts=dict(counts),
               slow_share=share)
        return share

    def test_least_conn_favours_the_less_loaded_backends(self):
        self.assertLess(self.share_of_slow("least-conn"), 0.1)

    def test_p2c_favours_the_less_loaded_backends(self):
        self.assertLess(self.share_of_slow("p2c"), 0.15)


class ConsistentHashTest(FaultTestCase):
    """300 users, each asking three times; then one of three backends goes."""

    KEYS = 300

    def sticky(self, algorithm, survivors_may_move):
        workers = [self.start_worker(name) for name in ("w1", "w2", "w3")]
        tandem = self.start_tandem(make_config(
            [w.address for w in workers],
            cluster_opts={"algorithm": algorithm, "hash_key": "header:X-User"},
            extra=STEADY_CHECKS))
        wait_all_up(tandem)

        def user(i):
            return {"X-User": "user-%d" % (i % self.KEYS)}
        rounds = send_sequentially(tandem.port, 3 * self.KEYS, user)
        placement = {}
        for i, worker in enumerate(rounds):
            self.assertIsNotNone(worker)
            placement.setdefault(i % self.KEYS, set()).add(worker)
        unstable = {k: v for k, v in placement.items() if len(v) != 1}
        self.assertEqual(unstable, {}, "a key landed on more than one backend")
        before = {k: next(iter(v)) for k, v in placement.items()}

        gone = workers[2]
        gone.stop()
        wait_state(tandem, gone.address, "down", scaled(5))
        after = dict(enumerate(send_sequentially(tandem.port, self.KEYS, user)))
        moved = [k for k in before if after[k] != before[k]]
        moved_from_survivors = [k for k in moved if before[k] != "w3"]
        on_gone = sum(1 for k in before if before[k] == "w3")
        # A survivor that left "up" at any time would move its keys for a
        # reason other than the algorithm: name it in the failure.
        survivor_changes = {
            w.name: [t["to"] for t in backend_status(tandem, w.address)["transitions"]][1:]
            for w in workers[:2]}
        report("consistent " + algorithm, keys=self.KEYS,
               spread=dict(collections.Counter(before.values())), on_removed=on_gone,
               moved=len(moved), moved_from_survivors=len(moved_from_survivors),
               survivor_changes=survivor_changes,
               retried=[e.line for e in access_entries(tandem) if e.retried][:5])
        self.assertEqual(survivor_changes, {w.name: [] for w in workers[:2]})
        self.assertNotIn(None, after.values())
        self.assertNotIn("w3", after.values())
        # The removed backend's keys move, most stay put, and of the others
        # at most `survivors_may_move` (the algorithm's own bound).
        self.assertGreater(on_gone, 0)
        self.assertLessEqual(len(moved_from_survivors), survivors_may_move)
        self.assertEqual(len(moved), on_gone + len(moved_from_survivors))
        self.assertLess(len(moved), self.KEYS / 2)

    def test_ring_hash_keeps_each_user_on_one_backend_and_moves_only_the_removed_ones(self):
        self.sticky("ring-hash", survivors_may_move=0)

    def test_maglev_keeps_each_user_on_one_backend_and_moves_few_others(self):
        # Maglev trades strict minimal disruption for even shares (its paper,
        # section 3.4; tests/unit/algorithms/maglev_test.cc allows under 1%).
        self.sticky("maglev", survivors_may_move=self.KEYS // 100)


class PrimaryBackupTest(FaultTestCase):

    def test_a_backup_gets_nothing_while_both_primaries_are_up(self):
        primaries = [self.start_worker(name) for name in ("p1", "p2")]
        backup = self.start_worker("b1")
        backends = [p.address for p in primaries] + [
            (backup.address, {"role": "backup", "standby": "hot"})]
        tandem = self.start_tandem(make_config(
            backends, cluster_opts={"policy": "primary-backup", "min_active": 2},
            extra=FAST_CHECKS))
        wait_all_up(tandem)
        counts = collections.Counter(send_sequentially(tandem.port, 400))
        wait_access_count(tandem, 400)
        to_backup = [e.line for e in access_entries(tandem) if e.backend == backup.address]
        status = backend_status(tandem, backup.address)
        report("primary-backup 2+1", counts=dict(counts), backup_active=status["active"])
        self.assertEqual(dict(counts), {"p1": 200, "p2": 200})
        self.assertEqual(to_backup, [])
        self.assertEqual(status["state"], "up")  # checked, healthy, and idle
        self.assertFalse(status["active"])


class QueueTest(FaultTestCase):
    """A backend with max_inflight = 2 and a queue of 3 in front of it."""

    def start(self, threads=1, queue_timeout="10s"):
        worker = self.start_worker("w1", threads=2)
        tandem = self.start_tandem(make_config(
            [(worker.address, {"max_inflight": 2})], global_opts={"threads": threads},
            cluster_opts={"queue_size": 3, "queue_timeout": queue_timeout},
            extra=NO_CHECKS))
        return worker, tandem

    def test_past_the_limit_and_a_full_queue_clients_get_503_with_retry_after(self):
        worker, tandem = self.start()
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=500"] * 10)
        statuses = collections.Counter(o.status for o in outcomes)
        rejected = [o for o in outcomes if o.status == 503]
        stats = worker.stats()
        report("max_inflight 2 + queue 3", statuses=dict(statuses),
               max_concurrent=stats["max_concurrent"],
               slowest_reject_s=max((o.seconds for o in rejected), default=0.0))
        self.assertEqual(statuses, {200: 5, 503: 5}, outcomes)
        for outcome in rejected:
            self.assertIsNotNone(outcome.retry_after, outcome)
            self.assertRegex(outcome.retry_after, r"^\d+$")
            # Turned away at once, not after waiting for a place.
            self.assertLess(outcome.seconds, 0.4, outcome)
        self.assertEqual(stats["max_concurrent"], 2)

    def test_a_request_that_waits_past_queue_timeout_gets_503(self):
        worker, tandem = self.start(queue_timeout="300ms")
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=1000"] * 4)
        statuses = collections.Counter(o.status for o in outcomes)
        timed_out = [o for o in outcomes if o.status == 503]
        report("queue_timeout", statuses=dict(statuses),
               waited_s=[round(o.seconds, 3) for o in timed_out])
        self.assertEqual(statuses, {200: 2, 503: 2}, outcomes)
        for outcome in timed_out:
            self.assertGreaterEqual(outcome.seconds, 0.25, outcome)
            self.assertLess(outcome.seconds, 0.9, outcome)
            self.assertIsNotNone(outcome.retry_after, outcome)
        self.assertEqual(worker.stats()["max_concurrent"], 2)

    def test_the_limit_holds_across_event_loop_threads(self):
        worker, tandem = self.start(threads=2)
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=300"] * 16)
        statuses = collections.Counter(o.status for o in outcomes)
        stats = worker.stats()
        report("max_inflight 2, two threads", statuses=dict(statuses),
               max_concurrent=stats["max_concurrent"])
        self.assertLessEqual(set(statuses), {200, 503}, outcomes)
        self.assertGreaterEqual(statuses[200], 2)
        self.assertTrue(all(o.retry_after for o in outcomes if o.status == 503), outcomes)
        self.assertEqual(stats["max_concurrent"], 2)


if __name__ == "__main__":
    unittest.main()
