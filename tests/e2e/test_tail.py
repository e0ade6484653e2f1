"""Slow and frozen workers with the default configuration (issue "Slow, frozen
and flaky workers"): hang detection takes a frozen worker out of rotation
within tens of milliseconds, retries what waited on it, and says why.

Timing goals (p99, throughput per second) are benchmark figures; these tests
assert what must hold everywhere: no failed request, the frozen worker
suspected with its figures and ejected until a check passes, the others
untouched; try_timeout = "auto" cuts a stuck try near a second; a worker
failing a fifth of its requests is ejected by success rate, a cluster
failing alike is not."""

import re
import threading
import time
import unittest

from faults import (FaultTestCase, access_entries, backend_status, between, by_worker,
                    failures, parallel_gets, report, wait_all_up, wait_state)
from harness import (http_request, make_config, parse_logfmt, response_bytes, scaled, serve_each,
                     wait_until)

# The defaults, but for the check interval a user of a compute cluster would
# leave alone: only `kind` is chosen.
DEFAULT_CHECKS = '[clusters.compute.health]\nkind = "http"\n'


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class FrozenWorkerTest(FaultTestCase):

    def start_cluster(self, extra_cluster=None):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_tandem(make_config([w.address for w in workers],
                                               cluster_opts=extra_cluster or {},
                                               extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        return workers, tandem

    def test_a_frozen_worker_is_suspected_at_once_and_costs_no_request(self):
        workers, tandem = self.start_cluster()
        load = self.start_load(tandem.port, connections=6, pause=0)
        load.wait_requests(1000)
        victim = workers[0]
        frozen_at = self.freeze(victim)
        load.wait_requests(1500, timeout=scaled(30))
        wait_state(tandem, victim.address, ("ejected", "down"), scaled(5))
        thawed_at = self.thaw(victim)
        time.sleep(scaled(0.5))
        outcomes = load.stop()

        backend = backend_status(tandem, victim.address)
        reasons = [t["reason"] for t in backend["transitions"]]
        during = between(outcomes, frozen_at, thawed_at)
        slow = [o for o in during if o.seconds > 1.0]
        latencies = [o.seconds for o in outcomes]
        metrics = tandem.metrics()
        suspicions = sum(v for k, v in metrics.items()
                         if k.startswith("tandem_backend_hang_suspicions_total") and
                         victim.address in k)
        report("frozen worker, defaults", requests=len(outcomes),
               failed=len(failures(outcomes)), during=len(during),
               over_1s=len(slow), p99_ms=1000 * percentile(latencies, 0.99),
               max_ms=1000 * max(latencies), suspicions=int(suspicions),
               by_worker_during=dict(by_worker(during)))
        self.assertEqual(failures(outcomes), [])
        # Suspected with its figures, ejected until a check passes.
        self.assertTrue(any(r.startswith("suspected hung: oldest request") for r in reasons),
                        reasons)
        self.assertGreaterEqual(suspicions, 1)
        self.assertEqual(ejections(tandem, victim.address, "suspected_hang"), 1)
        # No request waited for the default try_timeout (30 s) or even a
        # second: the ones caught on the frozen worker went elsewhere.
        self.assertEqual(slow, [], slow[:5])

    def test_one_request_at_a_time_a_frozen_worker_costs_one_try_timeout(self):
        # With one request in flight nothing waits beside the one caught on
        # the frozen worker, so its age alone says nothing; the same request
        # answered at once by another worker after its try was cut does.
        workers, tandem = self.start_cluster()
        load = self.start_load(tandem.port, connections=1, pause=0.005)
        load.wait_requests(200)
        victim = workers[0]
        frozen_at = self.freeze(victim)
        time.sleep(scaled(5))
        thawed_at = self.thaw(victim)
        outcomes = load.stop()

        during = between(outcomes, frozen_at, thawed_at)
        slow = [o for o in during if o.seconds > 0.5]
        backend = backend_status(tandem, victim.address)
        reasons = [t["reason"] for t in backend["transitions"]]
        report("frozen worker, one request at a time", requests=len(outcomes),
               failed=len(failures(outcomes)), during=len(during),
               over_500ms=len(slow), slow_ms=[round(1000 * o.seconds) for o in slow],
               by_worker_during=dict(by_worker(during)))
        self.assertEqual(failures(outcomes), [])
        self.assertTrue(any(re.match(r"suspected hung: a request waited \d+ ms on it without a "
                                     r"response head; 127\.0\.0\.1:\d+ answered it in \d+ ms",
                                     r) for r in reasons), reasons)
        self.assertEqual(ejections(tandem, victim.address, "suspected_hang"), 1)
        # The one request caught on it when it froze waited for the try
        # timeout ("auto": 1 s here); none after it.
        self.assertEqual(len(slow), 1, [o.seconds for o in slow])
        self.assertGreater(len(during), 100)

    def test_without_hang_detection_requests_wait_on_the_frozen_worker(self):
        # The same run with the detection off: the requests caught on the
        # frozen worker wait (here for a 2 s try_timeout), which is what the
        # detection removes.
        workers, tandem = self.start_cluster({"hang_detection": False, "try_timeout": "2s"})
        load = self.start_load(tandem.port, connections=6, pause=0)
        load.wait_requests(1000)
        frozen_at = self.freeze(workers[0])
        time.sleep(scaled(2.5))
        thawed_at = self.thaw(workers[0])
        outcomes = load.stop()
        slow = [o for o in between(outcomes, frozen_at, thawed_at) if o.seconds > 1.0]
        self.assertEqual(failures(outcomes), [])
        self.assertGreater(len(slow), 0)


class AutoTryTimeoutTest(FaultTestCase):
    """try_timeout = "auto" (the default): a try that may be retried is cut at
    3 x the cluster's recent p99, at least a second, not at request_timeout."""

    def start_cluster(self, cluster_opts):
        self.silent = threading.Event()
        self.release = threading.Event()

        def answer(request):
            if self.silent.is_set():
                # Holds the request without a word (as a stuck worker would)
                # until the test ends.
                self.release.wait(scaled(30))
                return None
            return response_bytes(200, b"ok\n", [("X-Worker", "raw")])
        self.raw = self.start_backend(serve_each(answer))
        # Before the backend's own cleanup (last in, first out).
        self.addCleanup(self.release.set)
        workers = [self.start_worker("w%d" % i) for i in (1, 2)]
        options = {"hang_detection": False}
        options.update(cluster_opts)
        tandem = self.start_tandem(make_config(
            [w.address for w in workers] + [self.raw.address], cluster_opts=options,
            extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        # A p99 to derive the timeout from: 32 answers at least.
        load = self.start_load(tandem.port, connections=2, max_requests=300)
        load.wait_done()
        self.assertEqual(failures(load.outcomes()), [])
        self.silent.set()
        return tandem

    def gets(self, tandem, count=6):
        started = time.time()
        outcomes = parallel_gets(tandem.port, ["/"] * count, timeout=scaled(40))
        return outcomes, time.time() - started

    def test_a_stuck_try_is_cut_near_a_second_and_retried(self):
        tandem = self.start_cluster({})
        outcomes, seconds = self.gets(tandem)

        def timed_out():
            return [e for e in access_entries(tandem) if e.failed_tries and
                    ":UT" in e.failed_tries]
        try:
            wait_until(timed_out, scaled(5), "an access log line with a timed-out try")
        except TimeoutError:
            pass
        timed_out = timed_out()
        report("auto try_timeout", requests=len(outcomes), seconds=seconds,
               try_timeouts=len(timed_out))
        self.assertEqual(failures(outcomes), [])
        self.assertGreater(len(timed_out), 0, "no request went to the silent backend")
        # Cut at the 1 s floor (the p99 is far below it), not at 30 s.
        self.assertLess(seconds, scaled(5))

    def test_a_duration_still_wins(self):
        tandem = self.start_cluster({"try_timeout": "3s"})
        outcomes, seconds = self.gets(tandem)
        self.assertEqual(failures(outcomes), [])
        self.assertGreaterEqual(seconds, 2.9)


class FlakyWorkerTest(FaultTestCase):
    """Success-rate detection, on by default: one worker answering 503 to a
    fifth of its requests is ejected with its figures (Envoy's own rule
    would keep it among three workers, docs/health.md); when every worker
    fails alike, none is."""

    def run_cluster(self, failing, seconds=12):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_tandem(make_config([w.address for w in workers],
                                               extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        for index in failing:
            worker_control_percent(workers[index], 503, 20)
        load = self.start_load(tandem.port, connections=4, duration=seconds)
        load.wait_done(scaled(seconds + 20))
        return workers, tandem, load.outcomes()

    def test_one_flaky_worker_of_three_is_ejected_and_costs_no_request(self):
        workers, tandem, outcomes = self.run_cluster([1])
        flaky = backend_status(tandem, workers[1].address)
        reasons = [t["reason"] for t in flaky["transitions"]]
        others = [backend_status(tandem, w.address)["state"] for w in (workers[0], workers[2])]
        report("flaky worker, defaults", requests=len(outcomes),
               failed=len(failures(outcomes)), state=flaky["state"],
               reason=next((r for r in reasons if r.startswith("success rate")), "-"))
        self.assertEqual(failures(outcomes), [])
        self.assertTrue(any(r.startswith("success rate ") and "ejected for" in r
                            for r in reasons), reasons)
        self.assertEqual(ejections(tandem, workers[1].address, "success_rate"), 1)
        self.assertEqual(others, ["up", "up"])

    def test_every_worker_failing_alike_ejects_none(self):
        workers, tandem, outcomes = self.run_cluster([0, 1, 2])
        states = [backend_status(tandem, w.address)["state"] for w in workers]
        report("every worker flaky", requests=len(outcomes),
               failed=len(failures(outcomes)), states="/".join(states))
        self.assertEqual(states, ["up", "up", "up"])


class SlowWorkerTest(FaultTestCase):
    """A worker 20 times slower than its peers gets the share it can serve
    with the default config (round-robin passing over slow backends) and with
    p2c-ewma; plain round-robin gives it a third of the requests and their
    latency."""

    def run_cluster(self, cluster_opts, check=None):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_tandem(make_config([w.address for w in workers],
                                               cluster_opts=cluster_opts,
                                               extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        response = http_request(workers[2].port, "POST", "/control/delay?ms=20", body=b"")
        self.assertEqual(response.status, 200, response)
        load = self.start_load(tandem.port, connections=4, duration=4, pause=0)
        load.wait_done(scaled(30))
        outcomes = load.outcomes()
        self.assertEqual(failures(outcomes), [])
        counts = by_worker(outcomes)
        share = counts.get("w3", 0) / len(outcomes)
        latencies = [o.seconds for o in outcomes]
        report("slow worker, %s" % (cluster_opts or "defaults"), requests=len(outcomes),
               w3_share=share, p50_ms=1000 * percentile(latencies, 0.5),
               p99_ms=1000 * percentile(latencies, 0.99))
        if check:
            check(tandem, workers)
        return share

    def test_the_default_config_passes_over_a_slow_worker(self):
        def check(tandem, workers):
            # Said with its figures, and counted.
            index, _ = tandem.stderr.wait_for(r'msg="backend passed over as slow".*backend=%s'
                                              % re.escape(workers[2].address), scaled(5))
            line = tandem.stderr.lines()[index]
            fields = parse_logfmt(line)
            self.assertGreaterEqual(int(fields["median_us"]), 15000, line)
            self.assertLess(int(fields["fastest_us"]), 5000, line)
            metrics = tandem.metrics()
            passed = sum(v for k, v in metrics.items()
                         if k.startswith("tandem_backend_passed_over_slow_total")
                         and workers[2].address in k)
            self.assertGreater(passed, 100)

        defaults = self.run_cluster({}, check)
        plain = self.run_cluster({"avoid_slow_backends": False})
        self.assertGreater(plain, 0.2)
        # It still gets its probes (about one a second per loop) and the
        # requests sent before it was seen slow.
        self.assertLess(defaults, 0.02)

    def test_p2c_ewma_gives_a_slow_worker_the_share_it_can_serve(self):
        ewma = self.run_cluster({"algorithm": "p2c-ewma"})
        self.assertLess(ewma, 0.1)


class ClusterSpikeTest(FaultTestCase):
    """Every worker turning five times slower (10 ms to 50 ms, one after the
    other within milliseconds, as a shared cause does) is not a hang:
    nothing is suspected or ejected and nothing is retried."""

    def set_delay(self, workers, ms):
        for worker in workers:
            response = http_request(worker.port, "POST", "/control/delay?ms=%d" % ms, body=b"")
            self.assertEqual(response.status, 200, response)

    def test_a_whole_cluster_five_times_slower_ejects_and_retries_nothing(self):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_tandem(make_config([w.address for w in workers],
                                               extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        self.set_delay(workers, 10)
        load = self.start_load(tandem.port, connections=6, pause=0)
        load.wait_requests(300)
        self.set_delay(workers, 50)
        time.sleep(scaled(3))
        self.set_delay(workers, 10)
        load.wait_requests(300)
        outcomes = load.stop()
        states = [backend_status(tandem, w.address)["state"] for w in workers]
        metrics = tandem.metrics()
        suspicions = sum(v for k, v in metrics.items()
                         if k.startswith("tandem_backend_hang_suspicions_total"))
        retries = sum(v for k, v in metrics.items() if k.startswith("tandem_retries_total"))
        report("whole cluster 5x slower", requests=len(outcomes),
               failed=len(failures(outcomes)), states="/".join(states),
               suspicions=int(suspicions), retries=int(retries))
        self.assertEqual(failures(outcomes), [])
        self.assertEqual(states, ["up", "up", "up"])
        self.assertEqual(suspicions, 0)
        self.assertEqual(retries, 0)


class SimultaneousSpikeTest(FaultTestCase):
    """Three backends turning 200 ms slow at the same instant (far beyond 8 x
    their p99): no backend is suspected, because no peer answers a request
    younger than the oldest one waiting."""

    def test_no_hang_is_suspected_when_no_peer_answers_younger_requests(self):
        delay = [0.0]

        def answer(request):
            if delay[0]:
                time.sleep(delay[0])
            return response_bytes(200, b"ok\n")
        backends = [self.start_backend(serve_each(answer)) for _ in range(3)]
        tandem = self.start_tandem(make_config([b.address for b in backends],
                                               extra='[clusters.compute.health]\nkind = "none"\n'))
        load = self.start_load(tandem.port, connections=6, pause=0)
        load.wait_requests(500)
        delay[0] = 0.2
        time.sleep(scaled(2))
        # Counted before the end of the spike: as it ends, a request still
        # sleeping while its peers answer fast again is a fair suspect.
        metrics = tandem.metrics()
        delay[0] = 0.0
        load.wait_requests(300)
        outcomes = load.stop()
        suspicions = sum(v for k, v in metrics.items()
                         if k.startswith("tandem_backend_hang_suspicions_total"))
        report("whole cluster 200 ms at once", requests=len(outcomes),
               failed=len(failures(outcomes)), suspicions=int(suspicions))
        self.assertEqual(failures(outcomes), [])
        self.assertEqual(suspicions, 0)


class HedgeTest(FaultTestCase):
    """hedge = true: a request whose response head is later than the
    cluster's p95 gets a second try on another backend, the first head wins,
    and the try that lost is neither a failure nor a health event. One
    worker of three delays 6 % of its requests by 300 ms (pauses, not a
    fault: 2 % of all requests); hang detection and the passing over of
    slow backends are off so that only hedging acts (with the latter on, the
    run without hedging sometimes learnt to pass over the delayed worker,
    and too few requests were slow for the comparison). (Were every worker to pause, their evenly spaced delays would fall
    on the same moments under round-robin, and a hedge would often meet a
    pause too.)"""

    SLOW = 0.25  # seconds: a request this slow waited out a delayed worker

    def run_cluster(self, hedge):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_tandem(make_config(
            [w.address for w in workers],
            cluster_opts={"hedge": hedge, "hang_detection": False,
                          "avoid_slow_backends": False,
                          "algorithm": "round-robin"},
            extra=DEFAULT_CHECKS))
        wait_all_up(tandem, scaled(15))
        response = http_request(workers[0].port, "POST", "/control/delay?ms=300&percent=6",
                                body=b"")
        self.assertEqual(response.status, 200, response)
        load = self.start_load(tandem.port, connections=4, duration=5, pause=0)
        load.wait_done(scaled(40))
        outcomes = load.outcomes()
        metrics = tandem.metrics()
        hedges = {result: sum(v for k, v in metrics.items()
                              if k.startswith("tandem_hedges_total") and
                              'result="%s"' % result in k)
                  for result in ("won", "lost", "failed")}
        slow = [o for o in outcomes if o.seconds >= self.SLOW]
        latencies = [o.seconds for o in outcomes]
        states = [backend_status(tandem, w.address)["state"] for w in workers]
        report("2 %% of requests 300 ms late, hedge=%s" % hedge, requests=len(outcomes),
               failed=len(failures(outcomes)), slow=len(slow),
               p99_ms=1000 * percentile(latencies, 0.99),
               p999_ms=1000 * percentile(latencies, 0.999), states="/".join(states),
               **{"hedges_" + k: int(v) for k, v in hedges.items()})
        self.assertEqual(failures(outcomes), [])
        self.assertEqual(states, ["up", "up", "up"])
        return outcomes, slow, hedges, tandem

    def test_a_hedge_takes_the_tail_and_the_losing_try_is_no_failure(self):
        plain, plain_slow, plain_hedges, _ = self.run_cluster(False)
        hedged, hedged_slow, hedges, tandem = self.run_cluster(True)
        # Without hedging about 2 % of the requests wait out a delay.
        self.assertGreater(len(plain_slow), len(plain) // 100, len(plain_slow))
        self.assertEqual(sum(plain_hedges.values()), 0)
        # With it, a delayed request is answered by another worker: the few
        # left are those whose hedge was delayed too (or found no room).
        self.assertLess(len(hedged_slow) * 5, len(plain_slow),
                        (len(hedged_slow), len(plain_slow)))
        self.assertGreater(hedges["won"], 0, hedges)
        # The try that lost was cancelled, not failed: no failed tries in the
        # access log of the hedged requests, no ejection, no retry counted.
        entries = access_entries(tandem)
        hedged_entries = [e for e in entries if "HD" in e.flags]
        self.assertGreater(len(hedged_entries), 0)
        self.assertTrue(all(e.status == 200 and e.tries == 2 for e in hedged_entries),
                        [e.line for e in hedged_entries if e.status != 200 or e.tries != 2][:3])
        lost = [e for e in hedged_entries if e.failed_tries]
        self.assertEqual(len(lost), 0, [e.line for e in lost][:3])
        metrics = tandem.metrics()
        self.assertEqual(sum(v for k, v in metrics.items()
                             if k.startswith("tandem_backend_ejections_total")), 0)
        self.assertEqual(sum(v for k, v in metrics.items()
                             if k.startswith("tandem_retries_total")), 0)


def ejections(tandem, address, reason):
    """tandem_backend_ejections_total of `address` for `reason`."""
    return sum(v for k, v in tandem.metrics().items()
               if k.startswith("tandem_backend_ejections_total") and address in k and
               'reason="%s"' % reason in k)


def worker_control_percent(worker, status, percent):
    response = http_request(worker.port, "POST",
                            "/control/fail?status=%d&percent=%d" % (status, percent), body=b"")
    if response.status != 200:
        raise AssertionError("worker refused /control/fail: %r" % response)


if __name__ == "__main__":
    unittest.main()
