"""Circuit breakers per cluster, across threads (issue "Overload"): at most
max_requests in flight to the backends, max_pending waiting in the queue and
max_retries_in_flight retries; over them a request waits in the queue (when
it has room) up to queue_timeout, else gets 503 with Retry-After, and its
access-log line is flagged CB."""

import collections
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

        def send(name, priority, ms):
            sent = time.monotonic()
            response = http_request(tandem.port, "GET", "/sleep?ms=%d" % ms,
                                    headers={"X-Priority": priority}, timeout=scaled(20))
            results[name] = (response.status, sent, time.monotonic(),
                             response.header("retry-after"))

        threads = []
        # One request holds the only slot; two low ones fill the queue; a
        # high one comes last.
        for name, priority, ms in (("first", "normal", 600), ("low1", "low", 100),
                                   ("low2", "7", 100), ("high", "high", 100)):
            thread = threading.Thread(target=send, args=(name, priority, ms), daemon=True)
            thread.start()
            threads.append(thread)
            time.sleep(0.1)
        for thread in threads:
            thread.join(scaled(20))
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
        metrics = tandem.metrics()
        shed = {k: v for k, v in metrics.items() if k.startswith("tandem_shed_total") and v}
        self.assertEqual(list(shed.values()), [1.0], shed)
        self.assertIn('priority="7"', list(shed)[0])


if __name__ == "__main__":
    unittest.main()
