"""Load feedback from the workers and the connection limit (issue 4): a check
response's Tandem-Weight scales a backend's share, Tandem-State drains it and
brings it back; max_connections caps the connections tandem opens."""

import collections
import unittest

from faults import (FaultTestCase, health_table, parallel_gets, report,
                    wait_all_up, wait_backends, wait_state)
from harness import Client, http_request, make_config, scaled

# fall = 3: a check that misses its deadline on a loaded machine does not take
# a worker out in the middle of a count (these tests are about feedback, which
# acts on the first check that carries it).
CHECKS = health_table(kind="http", path="/healthz", interval="200ms", timeout="150ms",
                      rise=1, fall=3)


def set_feedback(worker, **query):
    target = "/control/feedback?" + "&".join("%s=%s" % kv for kv in query.items())
    response = http_request(worker.port, "POST", target)
    assert response.status == 200, response


def shares(port, count):
    """Which worker answered each of `count` GETs on one keep-alive connection."""
    seen = collections.Counter()
    with Client(port, scaled(10)) as client:
        for _ in range(count):
            response = client.get("/")
            seen[response.header("x-worker") if response.status == 200 else None] += 1
    return seen


class FeedbackTest(FaultTestCase):

    def start(self):
        self.workers = [self.start_worker(name) for name in ("w1", "w2")]
        tandem = self.start_tandem(make_config([w.address for w in self.workers],
                                               global_opts={"threads": 1}, extra=CHECKS))
        wait_all_up(tandem)
        return tandem

    def test_a_worker_reporting_25_percent_gets_a_quarter_of_its_share(self):
        tandem = self.start()
        w1, w2 = self.workers
        set_feedback(w1, weight=25)
        wait_backends(tandem, lambda b: b[w1.address]["effective_weight"] == 0.25,
                      scaled(5), "w1's weight scaled to 25 %")
        seen = shares(tandem.port, 1000)
        report("feedback weight 25%", shares=dict(seen))
        self.assertEqual(seen[None], 0)
        # Weights 0.25 : 1 give w1 a fifth of the requests (smooth WRR: exact).
        self.assertAlmostEqual(seen["w1"] / 1000, 0.2, delta=0.01)
        set_feedback(w1, weight=-1)
        wait_backends(tandem, lambda b: b[w1.address]["effective_weight"] == 1,
                      scaled(5), "w1's weight back")
        seen = shares(tandem.port, 1000)
        self.assertAlmostEqual(seen["w1"] / 1000, 0.5, delta=0.01)

    def test_a_worker_asking_to_drain_takes_no_new_requests_until_it_is_up_again(self):
        tandem = self.start()
        w1, w2 = self.workers
        set_feedback(w1, state="drain")
        drained = wait_state(tandem, w1.address, "draining", scaled(5))
        self.assertEqual(drained["transitions"][-1]["reason"],
                         "the worker asked to drain (Tandem-State: drain)")
        seen = shares(tandem.port, 200)
        self.assertEqual(seen, collections.Counter({"w2": 200}))
        set_feedback(w1, state="up")
        back = wait_state(tandem, w1.address, "up", scaled(5))
        self.assertEqual(back["transitions"][-1]["reason"],
                         "the worker is ready again (Tandem-State: up)")
        seen = shares(tandem.port, 200)
        self.assertEqual(seen, collections.Counter({"w1": 100, "w2": 100}))


class ConnectionLimitTest(FaultTestCase):

    def test_max_connections_caps_the_connections_to_a_backend(self):
        worker = self.start_worker("w1")
        config = make_config([(worker.address, {"max_connections": 2})],
                             global_opts={"threads": 2},
                             cluster_opts={"queue_size": 100, "queue_timeout": "5s"},
                             extra=health_table(kind="none"))
        tandem = self.start_tandem(config)
        before = worker.stats()["connections_accepted"]
        outcomes = parallel_gets(tandem.port, ["/sleep?ms=100"] * 12)
        statuses = collections.Counter(o.status for o in outcomes)
        accepted = worker.stats()["connections_accepted"] - before - 1  # this /stats
        report("max_connections 2", statuses=dict(statuses), connections=accepted,
               max_concurrent=worker.stats()["max_concurrent"])
        # Every request waited its turn in the queue and was served...
        self.assertEqual(statuses, collections.Counter({200: 12}))
        # ...over at most two connections at a time.
        self.assertLessEqual(worker.stats()["max_concurrent"], 2)


if __name__ == "__main__":
    unittest.main()
