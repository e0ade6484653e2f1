"""Failover under load (issue 4, "What it must show"): three workers behind
tandem, a bounded client sending GETs continuously, and one fault per test —
a crash, a freeze, primaries lost and back, a cold backup started on demand,
a worker failing real traffic, every check failing at once.

Each scenario prints one "SCENARIO" line: requests sent, failed, retried (access
log flags RT/R5), and the detection time (the /status transition minus the
moment of the fault).
"""

import collections
import os
import shutil
import signal
import tempfile
import time
import unittest

from faults import (FaultTestCase, access_entries, backend_status, between, by_worker,
                    cluster_status, detection_seconds, failures, first_transition, free_port,
                    health_table, outlier_table, parallel_gets, parse_utc, process_cmdline,
                    process_gone, report, wait_access_count, wait_all_up, wait_backends,
                    wait_state, worker_control)
from harness import TANDEM_WORKER, make_config, refused_address, scaled, wait_until

# Active checks of every scenario: a fault is seen within
# FALL x INTERVAL + TIMEOUT; a worker is back after RISE passing checks.
INTERVAL = 0.5
TIMEOUT = 0.25
FALL = 2
RISE = 2
# tandem's default fast_interval for that interval (interval / 4, at least
# 100 ms): the pace of checks while a backend is between states.
FAST_INTERVAL = max(0.1, INTERVAL / 4)
TRY_TIMEOUT = "300ms"
# What a detection may take beyond the bound: the check loop's own latency
# and the publication of the new state (more in sanitizer builds).
DETECTION_SLACK = scaled(0.3)


def check_table(**overrides):
    values = {"kind": "http", "path": "/healthz", "interval": "%dms" % (INTERVAL * 1000),
              "timeout": "%dms" % (TIMEOUT * 1000), "rise": RISE, "fall": FALL}
    values.update(overrides)
    return health_table(**values)


def cluster_options(**overrides):
    values = {"retries": 2, "connect_timeout": "500ms", "try_timeout": TRY_TIMEOUT,
              "request_timeout": "5s"}
    values.update(overrides)
    return values


def failure_statuses(outcomes):
    """"502x3,503x7": the failed requests by status (or "error")."""
    counts = collections.Counter(o.status or "error" for o in failures(outcomes))
    return ",".join("%sx%d" % kv for kv in sorted(counts.items(), key=str)) or "-"


def read_pid(path):
    with open(path) as f:
        return int(f.read())


def detection_bound():
    return FALL * INTERVAL + TIMEOUT


class FailoverCase(FaultTestCase):
    """Three workers w1..w3 behind one tandem thread."""

    def start_cluster(self, backends, cluster=None, health=None, extra=""):
        config = make_config(backends, cluster_opts=cluster_options(**(cluster or {})),
                             extra=(health or check_table()) + extra)
        tandem = self.start_tandem(config)
        self.config = config
        return tandem

    def retried(self, tandem, count):
        """Access log entries of the run (waiting for all `count` lines)
        and how many of them were retried."""
        wait_access_count(tandem, count)
        entries = access_entries(tandem)
        return entries, sum(1 for e in entries if e.retried)

    def assertNoFailures(self, outcomes, tandem):
        failed = failures(outcomes)
        if failed:
            lines = [e.line for e in access_entries(tandem) if e.status >= 300]
            self.fail("%d of %d client requests failed, first %r\naccess log:\n%s\nconfig:\n%s"
                      % (len(failed), len(outcomes), failed[:5], "\n".join(lines[:20]),
                         self.config))


class KillTest(FailoverCase):

    def test_1_a_killed_worker_costs_no_client_request_and_gets_no_more_traffic(self):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers])
        wait_all_up(tandem)
        load = self.start_load(tandem.port, connections=4)
        load.wait_requests(300)

        victim = workers[0]
        fault_at = self.crash(victim)
        wait_state(tandem, victim.address, "down", detection_bound() + scaled(3))
        detection = detection_seconds(tandem, victim.address, "down", fault_at)
        down_at = fault_at + detection
        load.wait_requests(600)
        outcomes = load.stop()

        entries, retried = self.retried(tandem, len(outcomes))
        report("1 kill -9", requests=len(outcomes), failed=len(failures(outcomes)),
               retried=retried, detection_s=detection,
               bound_s=detection_bound())
        self.assertNoFailures(outcomes, tandem)
        self.assertLessEqual(detection, detection_bound() + DETECTION_SLACK)
        # Once down, nothing is sent its way: no request that began after
        # that has a failed try or a retry. (A log line's time is its end.)
        after = [e for e in entries if e.started >= down_at + 0.05]
        self.assertGreater(len(after), 100)
        touched = [e.line for e in after if e.flags & {"UF", "UC", "RT"} or
                   e.backend == victim.address]
        self.assertEqual(touched, [])
        self.assertEqual(set(by_worker(between(outcomes, down_at + 0.05))), {"w2", "w3"})


    def test_connect_failures_are_retried_even_when_many_come_at_once(self):
        # A request that never reached a worker is always retried (issue 4),
        # so the retry budget, which bounds retries of requests a worker may
        # have seen, must not turn a refused connect into a 502.
        refused, holder = refused_address()
        self.addCleanup(holder.close)
        workers = [self.start_worker("w%d" % i) for i in (1, 2)]
        tandem = self.start_cluster([refused] + [w.address for w in workers],
                                    health=health_table(kind="none"))
        outcomes = []
        for _ in range(3):
            outcomes += parallel_gets(tandem.port, ["/"] * 48)
        entries, retried = self.retried(tandem, len(outcomes))
        refused_tries = sum(1 for e in entries if "UF" in e.flags)
        report("connect failures at once", requests=len(outcomes),
               failed=len(failures(outcomes)), retried=retried, refused_tries=refused_tries,
               not_retried=sorted({e.not_retried for e in entries if e.not_retried}))
        self.assertGreater(refused_tries, 0)
        self.assertNoFailures(outcomes, tandem)


class FreezeTest(FailoverCase):

    def test_2_a_frozen_worker_is_retried_around_marked_down_and_ramps_back_after_cont(self):
        slow_start = 3.0
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers],
                                    cluster={"slow_start": "%ds" % slow_start})
        wait_all_up(tandem)
        load = self.start_load(tandem.port, connections=4)
        load.wait_requests(300)

        victim = workers[0]
        fault_at = self.freeze(victim)
        wait_state(tandem, victim.address, "down", detection_bound() + scaled(3))
        detection = detection_seconds(tandem, victim.address, "down", fault_at)
        load.wait_requests(300)

        thaw_at = self.thaw(victim)
        # Back after RISE checks, then a ramp: sample the weight as it rises.
        samples = []

        def ramped():
            backend = backend_status(tandem, victim.address)
            samples.append((time.time(), backend["state"], backend["effective_weight"]))
            return backend["state"] == "up" and backend["effective_weight"] == backend["weight"]
        wait_until(ramped, RISE * INTERVAL + TIMEOUT + slow_start + scaled(5),
                   "%s back up at full weight" % victim.address, interval=0.05)
        backend = backend_status(tandem, victim.address)
        returned = first_transition(backend, ("slow-start", "up"), thaw_at)
        self.assertIsNotNone(returned, backend["transitions"])
        return_seconds = parse_utc(returned["at"]) - thaw_at
        load.wait_requests(300)
        outcomes = load.stop()

        entries, retried = self.retried(tandem, len(outcomes))
        timeouts = sum(1 for e in entries if "UT" in e.flags)
        ramp = [w for _, state, w in samples if state == "slow-start"]
        report("2 kill -STOP", requests=len(outcomes), failed=len(failures(outcomes)),
               retried=retried, try_timeouts=timeouts, detection_s=detection,
               bound_s=detection_bound(), back_after_cont_s=return_seconds,
               ramp="/".join("%g" % w for w in sorted(set(ramp))))
        self.assertNoFailures(outcomes, tandem)
        self.assertGreater(timeouts, 0, "no try timed out on the frozen worker")
        self.assertLessEqual(detection, detection_bound() + DETECTION_SLACK)
        # RISE passing checks: the first within the down interval, the rest
        # at the fast interval.
        self.assertEqual(returned["to"], "slow-start", backend["transitions"])
        self.assertGreaterEqual(return_seconds, (RISE - 1) * FAST_INTERVAL * 0.9)
        self.assertLessEqual(return_seconds, INTERVAL + (RISE - 1) * FAST_INTERVAL +
                             TIMEOUT + DETECTION_SLACK)
        # The weight rose through values below the full weight.
        self.assertGreaterEqual(len(set(ramp)), 2, samples)
        # (The last step of the ramp may reach the full weight just before the
        # state leaves slow-start.)
        self.assertTrue(all(0 < w <= backend["weight"] for w in ramp), samples)
        self.assertLess(min(ramp), backend["weight"], samples)
        self.assertEqual(ramp, sorted(ramp), samples)
        # And it serves again.
        self.assertIn("w1", by_worker(between(outcomes, parse_utc(returned["at"]))))


    def test_2_a_frozen_worker_costs_no_request_when_many_time_out_at_once(self):
        # Eight requests stuck on the frozen worker time out together: each is
        # a GET that a retry would save (issue 4, "Side by side": none lost
        # where a retry is allowed), more than the budget's floor of three.
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers])
        wait_all_up(tandem)
        self.freeze(workers[0])
        outcomes = parallel_gets(tandem.port, ["/"] * 24)
        entries, retried = self.retried(tandem, len(outcomes))
        timeouts = sum(1 for e in entries if "UT" in e.flags)
        report("2b stuck at once", requests=len(outcomes), failed=len(failures(outcomes)),
               retried=retried, try_timeouts=timeouts,
               not_retried=sorted({e.not_retried for e in entries if e.not_retried}))
        self.assertGreater(timeouts, 3)
        self.assertNoFailures(outcomes, tandem)


class HotBackupTest(FailoverCase):

    def test_3_hot_backups_take_over_from_killed_primaries_and_are_demoted_when_they_return(self):
        primaries = [self.start_worker(name) for name in ("p1", "p2")]
        backups = [self.start_worker(name) for name in ("b1", "b2")]
        backends = [p.address for p in primaries] + [
            (b.address, {"role": "backup", "standby": "hot"}) for b in backups]
        tandem = self.start_cluster(backends, cluster={"policy": "primary-backup",
                                                       "min_active": 2})
        wait_all_up(tandem)
        load = self.start_load(tandem.port, connections=4)
        load.wait_requests(300)
        self.assertEqual(set(by_worker(load.outcomes())), {"p1", "p2"})

        fault_at = time.time()
        for primary in primaries:
            self.crash(primary)
        cluster = wait_backends(tandem, lambda b: all(b[x.address]["active"] for x in backups),
                                detection_bound() + scaled(3), "both backups promoted")
        detection = max(detection_seconds(tandem, p.address, "down", fault_at)
                        for p in primaries)
        promoted_at = max(parse_utc(e["at"]) for e in cluster["events"]
                          if "promoted" in e["message"])
        load.wait_requests(400)
        outage = between(load.outcomes(), promoted_at + 0.05)

        restart_at = time.time()
        restarted = [self.start_port_worker(p.worker_name, p.port) for p in primaries]
        cluster = wait_backends(
            tandem, lambda b: all(b[p.address]["active"] for p in restarted) and
            not any(b[x.address]["active"] for x in backups),
            RISE * INTERVAL + TIMEOUT + scaled(5), "primaries back and backups demoted")
        demoted_at = max(parse_utc(e["at"]) for e in cluster["events"]
                         if "demoted" in e["message"])
        load.wait_requests(400)
        outcomes = load.stop()

        _, retried = self.retried(tandem, len(outcomes))
        report("3 hot backups", requests=len(outcomes), failed=len(failures(outcomes)),
               failed_by_status=failure_statuses(outcomes), retried=retried, detection_s=detection,
               promoted_after_s=promoted_at - fault_at,
               demoted_after_restart_s=demoted_at - restart_at)
        self.assertNoFailures(outcomes, tandem)
        self.assertEqual(set(by_worker(outage)), {"b1", "b2"})
        self.assertEqual(set(by_worker(between(outcomes, demoted_at + 0.05))), {"p1", "p2"})
        messages = [e["message"] for e in cluster["events"]]
        for backup in backups:
            self.assertTrue(any(m.startswith("backup %s promoted" % backup.address)
                                for m in messages), messages)
            self.assertTrue(any(m.startswith("backup %s demoted" % backup.address)
                                for m in messages), messages)


class ColdBackupTest(FailoverCase):

    def test_4_a_cold_backup_is_started_when_the_primaries_die_and_stopped_when_they_return(self):
        work = tempfile.mkdtemp(prefix="tandem-e2e-cold-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        port = free_port()
        pid_file = os.path.join(work, "cold.pid")
        self.addCleanup(self.stop_cold_worker, pid_file, port)
        activate = ('"%s" --listen 127.0.0.1:%d --name cold >"%s/cold.log" 2>&1 & '
                    'echo $! >"%s"' % (TANDEM_WORKER, port, work, pid_file))
        deactivate = 'kill "$(cat "%s")"' % pid_file
        cold_address = "127.0.0.1:%d" % port

        primaries = [self.start_worker(name) for name in ("p1", "p2")]
        backends = [p.address for p in primaries] + [
            (cold_address, {"role": "backup", "standby": "cold", "activate": activate,
                            "deactivate": deactivate})]
        tandem = self.start_cluster(backends, cluster={"policy": "primary-backup",
                                                       "min_active": 1,
                                                       "activate_timeout": "10s"})
        wait_backends(tandem, lambda b: all(b[p.address]["state"] == "up" for p in primaries)
                      and b[cold_address].get("activation") == "inactive",
                      what="primaries up, the backup inactive")
        # tandem may have started the backup before the primaries' first checks
        # (test_a_cold_backup_is_not_started_while_the_primaries_pass_their_first_checks);
        # that start must be undone before the fault.
        if os.path.exists(pid_file):
            early = read_pid(pid_file)
            wait_until(lambda: process_gone(early), scaled(10),
                       "the backup started at start-up to be stopped")
            os.unlink(pid_file)
        load = self.start_load(tandem.port, connections=4)
        load.wait_requests(300)

        fault_at = time.time()
        for primary in primaries:
            self.crash(primary)
        cluster = wait_backends(
            tandem, lambda b: b[cold_address]["active"] and b[cold_address]["state"] == "up",
            detection_bound() + scaled(15), "the cold backup activated, up and active")
        serving_at = time.time()
        detection = max(detection_seconds(tandem, p.address, "down", fault_at)
                        for p in primaries)
        pid = read_pid(pid_file)
        self.assertFalse(process_gone(pid))
        self.assertIn(TANDEM_WORKER.encode(), process_cmdline(pid))
        load.wait_requests(300)
        self.assertIn("cold", by_worker(between(load.outcomes(), serving_at)))

        restart_at = time.time()
        for primary in primaries:
            self.start_port_worker(primary.worker_name, primary.port)
        wait_backends(tandem, lambda b: not b[cold_address]["active"] and
                      all(b[p.address]["active"] for p in primaries),
                      RISE * INTERVAL + TIMEOUT + scaled(5), "primaries back, backup demoted")
        wait_until(lambda: process_gone(pid), scaled(10), "deactivate to stop the cold worker")
        gone_at = time.time()
        load.wait_requests(300)
        outcomes = load.stop()

        cluster = cluster_status(tandem)
        _, retried = self.retried(tandem, len(outcomes))
        failed = failures(outcomes)
        report("4 cold backup", requests=len(outcomes), failed=len(failed),
               failed_by_status=failure_statuses(outcomes), retried=retried,
               detection_s=detection, serving_after_s=serving_at - fault_at,
               stopped_after_restart_s=gone_at - restart_at,
               activation=backend_status(tandem, cold_address, cluster).get("activation"))
        # Requests that find every primary refusing wait for the cold backup
        # (within request_timeout) instead of failing: none is lost.
        self.assertNoFailures(outcomes, tandem)
        self.assertEqual(set(by_worker(between(outcomes, gone_at))), {"p1", "p2"})
        self.assertIn(backend_status(tandem, cold_address, cluster).get("activation"),
                      ("inactive", "deactivated"))
        messages = "\n".join(tandem.stderr.lines())
        self.assertIn("activate", messages)

    def test_a_cold_backup_is_not_started_while_the_primaries_pass_their_first_checks(self):
        work = tempfile.mkdtemp(prefix="tandem-e2e-cold-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        port = free_port()
        pid_file = os.path.join(work, "cold.pid")
        self.addCleanup(self.stop_cold_worker, pid_file, port)
        activate = ('"%s" --listen 127.0.0.1:%d --name cold >"%s/cold.log" 2>&1 & '
                    'echo $! >"%s"' % (TANDEM_WORKER, port, work, pid_file))
        primaries = [self.start_worker(name) for name in ("p1", "p2")]
        backends = [p.address for p in primaries] + [
            ("127.0.0.1:%d" % port, {"role": "backup", "standby": "cold",
                                     "activate": activate,
                                     "deactivate": 'kill "$(cat "%s")"' % pid_file})]
        tandem = self.start_cluster(backends, cluster={"policy": "primary-backup",
                                                       "min_active": 1})
        wait_backends(tandem, lambda b: all(b[p.address]["state"] == "up" for p in primaries),
                      what="primaries up")
        # Healthy from their first check on: no promotion, so no command ran
        # (it would have been logged when the policy promoted the backup).
        commands = [line for line in tandem.stderr.lines() if "activat" in line]
        self.assertEqual(commands, [], "\n".join(tandem.stderr.lines()))
        self.assertFalse(os.path.exists(pid_file))

    @staticmethod
    def stop_cold_worker(pid_file, port):
        """Stops the worker the activate command started, if it still runs —
        only when that PID is the worker on our port."""
        try:
            pid = read_pid(pid_file)
        except (OSError, ValueError):
            return
        argv = process_cmdline(pid)
        if process_gone(pid) or TANDEM_WORKER.encode() not in argv or \
                ("127.0.0.1:%d" % port).encode() not in argv:
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: process_gone(pid), scaled(5), "the cold worker to stop")
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)


class OutlierTest(FailoverCase):

    def test_5_a_worker_failing_real_traffic_is_ejected_but_never_more_than_the_cap(self):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        consecutive = 3
        tandem = self.start_cluster(
            [w.address for w in workers],
            extra=outlier_table(consecutive_failures=consecutive, ejection_time="30s",
                                max_ejection_percent=34))
        wait_all_up(tandem)
        load = self.start_load(tandem.port, connections=2)
        load.wait_requests(200)

        first, second = workers[0], workers[1]
        fault_at = time.time()
        worker_control(first, "fail", 500)
        self.addCleanup(worker_control, first, "fail", 0)
        wait_state(tandem, first.address, "ejected", scaled(5))
        detection = detection_seconds(tandem, first.address, "ejected", fault_at)
        ejected_at = fault_at + detection
        load.wait_requests(300)

        # A second one fails too: ejecting it would pass 34% of three.
        second_at = time.time()
        worker_control(second, "fail", 500)
        self.addCleanup(worker_control, second, "fail", 0)
        start = len(tandem.access_lines())
        wait_until(lambda: sum(1 for e in access_entries(tandem, start)
                               if e.backend == second.address and e.status == 500)
                   >= 4 * consecutive, scaled(10), "the second worker to fail real requests")
        load.wait_requests(200)
        outcomes = load.stop()

        cluster = cluster_status(tandem)
        states = {b["address"]: b["state"] for b in cluster["backends"]}
        _, retried = self.retried(tandem, len(outcomes))
        second_status = backend_status(tandem, second.address, cluster)
        report("5 outlier", requests=len(outcomes), failed=len(failures(outcomes)),
               retried=retried, detection_s=detection,
               states=",".join("%s=%s" % (w.worker_name, states[w.address]) for w in workers))
        self.assertEqual(states[first.address], "ejected")
        reason = first_transition(backend_status(tandem, first.address, cluster), "ejected",
                                  fault_at)["reason"]
        self.assertIn("5xx", reason.lower().replace("500", "5xx"))
        self.assertEqual(states[second.address], "up", second_status["transitions"])
        self.assertIsNone(first_transition(second_status, "ejected", second_at))
        self.assertEqual(states[workers[2].address], "up")
        # The ejected one gets nothing; the 500s after it come from the second.
        after = between(outcomes, ejected_at + 0.05)
        self.assertNotIn("w1", {o.worker for o in after})
        # (Outcomes are stamped when sent: one sent just before the second
        # worker was switched may still be answered 500 by it.)
        self.assertEqual({o.worker for o in failures(between(outcomes, ejected_at + 0.05,
                                                             second_at - scaled(0.5)))}, set())


class PanicTest(FailoverCase):

    def test_6_every_check_failing_with_a_panic_threshold_keeps_requests_succeeding(self):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers],
                                    cluster={"panic_threshold": 0.5})
        wait_all_up(tandem)
        load = self.start_load(tandem.port, connections=4)
        load.wait_requests(300)

        fault_at = time.time()
        for worker in workers:
            worker_control(worker, "health", 503)
            self.addCleanup(worker_control, worker, "health", 200)
        cluster = wait_backends(
            tandem, lambda b: all(x["state"] == "down" for x in b.values()),
            detection_bound() + scaled(3), "every backend down")
        detection = max(detection_seconds(tandem, w.address, "down", fault_at)
                        for w in workers)
        panic_events = [e for e in cluster["events"] if e["message"].startswith("panic:")
                        and parse_utc(e["at"]) >= fault_at]
        self.assertTrue(cluster["panic"], cluster)
        self.assertTrue(panic_events, cluster["events"])
        all_down_at = fault_at + detection
        load.wait_requests(600)
        outcomes = load.stop()

        _, retried = self.retried(tandem, len(outcomes))
        report("6 panic", requests=len(outcomes), failed=len(failures(outcomes)),
               retried=retried, detection_s=detection,
               panic_after_s=parse_utc(panic_events[0]["at"]) - fault_at)
        self.assertNoFailures(outcomes, tandem)
        self.assertTrue(cluster_status(tandem)["panic"])
        self.assertEqual(set(by_worker(between(outcomes, all_down_at + 0.05))),
                         {"w1", "w2", "w3"})

    def test_start_up_before_the_first_checks_is_no_panic(self):
        # Backends are not proven healthy before their first check, but not
        # proven unhealthy either: panic routing (which spreads traffic over
        # unchecked backends) must not start before anything was checked.
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers],
                                    cluster={"panic_threshold": 0.5})
        cluster = wait_all_up(tandem)
        self.assertFalse(cluster["panic"])
        self.assertEqual([e["message"] for e in cluster["events"]], [])

    def test_6_every_check_failing_without_a_panic_threshold_fails_closed_with_503(self):
        workers = [self.start_worker("w%d" % i) for i in (1, 2, 3)]
        tandem = self.start_cluster([w.address for w in workers])
        wait_all_up(tandem)
        for worker in workers:
            worker_control(worker, "health", 503)
            self.addCleanup(worker_control, worker, "health", 200)
        cluster = wait_backends(
            tandem, lambda b: all(x["state"] == "down" for x in b.values()),
            detection_bound() + scaled(3), "every backend down")
        self.assertFalse(cluster["panic"])
        load = self.start_load(tandem.port, connections=2, max_requests=100)
        wait_until(lambda: not load.running(), scaled(20), "100 requests")
        outcomes = load.stop()
        report("6 no panic", requests=len(outcomes), failed=len(failures(outcomes)),
               statuses=",".join(sorted({str(o.status) for o in outcomes})))
        self.assertGreaterEqual(len(outcomes), 100)
        self.assertEqual({o.status for o in outcomes}, {503})


if __name__ == "__main__":
    unittest.main()
