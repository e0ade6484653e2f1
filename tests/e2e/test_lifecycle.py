"""tandem's command line, signals, reloads, admin endpoints and access log, as
DESIGN.md's "Contract" states them."""

import os
import re
import shutil
import signal
import tempfile
import time
import unittest

from harness import (Client, IncompleteMessage, TandemTestCase, http_request, make_config,
                     run_tandem, scaled, wait_until, write_file)


def refuses_connections(port):
    """True when a connection to 127.0.0.1:port is refused."""
    try:
        client = Client(port, timeout=scaled(2))
    except ConnectionRefusedError:
        return True
    client.close()
    return False


def start_sleeping_request(test, tandem, worker, ms):
    """Sends GET /sleep?ms=ms through `tandem` and waits until `worker` has it;
    returns the client, whose response is still to come."""
    before = worker.stats()["requests_served"]
    client = test.client(tandem.port, timeout=scaled(30))
    client.request("GET", "/sleep?ms=%d" % ms)
    # /stats counts itself, so the k-th poll sees `before + k`, plus one once
    # the sleep request has arrived (it is counted when its head is complete).
    polls = [0]

    def arrived():
        polls[0] += 1
        return worker.stats()["requests_served"] >= before + polls[0] + 1
    wait_until(arrived, scaled(5), "the worker to receive /sleep")
    return client


class CommandLineTest(TandemTestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tandem-e2e-cli-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        write_file(path, text)
        return path

    def test_version_prints_the_version_and_exits_0(self):
        result = run_tandem(["--version"])
        self.assertEqual(result.returncode, 0)
        self.assertRegex(result.stdout.decode(), r"^tandem \d+\.\d+\.\d+\n$")

    def test_help_prints_the_usage_and_exits_0(self):
        result = run_tandem(["--help"])
        self.assertEqual(result.returncode, 0)
        text = result.stdout.decode()
        for option in ("-c", "--check", "--demo", "--version", "--help"):
            self.assertIn(option, text)

    def test_an_unknown_argument_fails(self):
        result = run_tandem(["--no-such-option"])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--no-such-option", result.stderr.decode())

    def test_check_accepts_a_valid_file_and_exits_0(self):
        path = self.write("good.toml", make_config(["127.0.0.1:9"]))
        result = run_tandem(["-c", path, "--check"])
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_check_reports_every_error_with_file_line_and_column_and_exits_1(self):
        path = self.write("bad.toml", "\n".join([
            '[global]',                              # 1
            'threads = 1',                           # 2
            'grace_period = "10 parsecs"',           # 3: col 16
            '',                                      # 4
            '[listeners.web]',                       # 5
            'listen = "127.0.0.1:0"',                # 6
            'cluster = "nope"',                      # 7: col 11
            'idle_timeot = "5s"',                    # 8: col 1
            '',                                      # 9
            '[clusters.compute]',                    # 10
            'retries = "two"',                       # 11: col 11
            '',                                      # 12
            '[[clusters.compute.backends]]',         # 13
            'address = "127.0.0.1:99999"',           # 14: col 11
            '',
        ]))
        result = run_tandem(["-c", path, "--check"])
        self.assertEqual(result.returncode, 1)
        output = (result.stdout + result.stderr).decode()
        expected = [
            (3, 16, "global.grace_period"),
            (7, 11, "listeners.web.cluster"),
            (8, 1, "listeners.web.idle_timeot"),
            (11, 11, "clusters.compute.retries"),
            (14, 11, "clusters.compute.backends[0].address"),
        ]
        errors = [line for line in output.splitlines()
                  if re.match(re.escape(path) + r":\d+:\d+: ", line)
                  and not line.endswith("(warning)")]
        for line_number, column, key in expected:
            prefix = "%s:%d:%d: %s: " % (path, line_number, column, key)
            self.assertTrue(any(line.startswith(prefix) for line in errors),
                            "no error starting %r in:\n%s" % (prefix, output))
        self.assertEqual(len(errors), len(expected), output)
        self.assertIn("did you mean 'idle_timeout'", output)

    def test_check_reports_a_toml_syntax_error_with_its_position(self):
        path = self.write("syntax.toml", "[global\nthreads = 1\n")
        result = run_tandem(["-c", path, "--check"])
        self.assertEqual(result.returncode, 1)
        self.assertRegex((result.stdout + result.stderr).decode(),
                         re.escape(path) + r":1:\d+: ")

    def test_starting_with_a_broken_file_prints_the_errors_and_exits_1(self):
        path = self.write("bad.toml", make_config(["127.0.0.1:9"]) + "\n[bogus]\nx = 1\n")
        result = run_tandem(["-c", path])
        self.assertEqual(result.returncode, 1)
        self.assertIn("bogus", result.stderr.decode())


class ShutdownTest(TandemTestCase):
    """SIGTERM and SIGINT: stop accepting, finish in-flight requests within
    grace_period, exit 0."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")

    def start_sleeping_request(self, tandem, ms):
        return start_sleeping_request(self, tandem, self.worker, ms)

    def test_sigterm_lets_an_in_flight_request_finish_refuses_new_connections_and_exits_0(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"grace_period": "10s"}))
        client = self.start_sleeping_request(tandem, 1000)
        start = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(tandem.port), scaled(0.8),
                   "the listener to close while the request is in flight")
        try:
            response = client.response()
        except IncompleteMessage:
            self.fail("the in-flight request was cut\n" + tandem.output())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"slept 1000 ms\n")
        self.assertTrue(client.closed_by_peer(scaled(5)), "connection kept open while draining")
        client.close()
        self.assertEqual(tandem.wait(scaled(5)), 0, tandem.output())
        self.assertLess(time.monotonic() - start, 1 + scaled(4), "waited for the grace period")

    def test_an_idle_tandem_exits_0_at_once_on_sigterm(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"grace_period": "10s"}))
        idle = self.client(tandem.port)  # an idle keep-alive connection does not hold it
        self.assertEqual(idle.get("/").status, 200)
        start = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        self.assertEqual(tandem.wait(scaled(5)), 0, tandem.output())
        self.assertLess(time.monotonic() - start, scaled(3))

    def test_sigint_drains_and_exits_0_like_sigterm(self):
        tandem = self.start_tandem(make_config([self.worker.address]))
        client = self.start_sleeping_request(tandem, 500)
        tandem.send_signal(signal.SIGINT)
        self.assertEqual(client.response().status, 200)
        client.close()
        self.assertEqual(tandem.wait(scaled(8)), 0, tandem.output())

    def test_a_request_longer_than_grace_period_is_cut_and_tandem_still_exits_0(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"grace_period": "1s"}))
        client = self.start_sleeping_request(tandem, 20000)
        start = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        self.assertEqual(tandem.wait(1 + scaled(3)), 0, tandem.output())
        self.assertGreaterEqual(time.monotonic() - start, 0.9)
        with self.assertRaises(IncompleteMessage):
            client.response()

    def test_readyz_fails_during_drain_delay_while_requests_are_still_served(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"drain_delay": "1s"}))
        self.assertEqual(tandem.admin("/readyz").status, 200)
        tandem.send_signal(signal.SIGTERM)
        tandem.stderr.wait_for(r'msg="shutting down"', scaled(5))
        self.assertEqual(tandem.admin("/readyz").status, 503)
        self.assertEqual(http_request(tandem.port).status, 200)
        self.assertEqual(tandem.wait(scaled(8)), 0, tandem.output())


class ProcessModelTest(TandemTestCase):

    def test_tandem_is_one_process_with_a_thread_per_event_loop(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address], global_opts={"threads": 3}))
        for _ in range(10):
            self.assertEqual(http_request(tandem.port).status, 200)
        threads = len(os.listdir("/proc/%d/task" % tandem.pid))
        self.assertGreaterEqual(threads, 3)
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == tandem.pid:
                children.append(entry)
        self.assertEqual(children, [], "tandem has child processes")


class ReloadTest(TandemTestCase):
    """SIGHUP reloads the file; a bad file is rejected and the old config serves."""

    @classmethod
    def setUpClass(cls):
        cls.w1 = cls.start_class_worker("w1")
        cls.w2 = cls.start_class_worker("w2")

    def workers_answering(self, tandem, count=4):
        return {http_request(tandem.port).header("x-worker") for _ in range(count)}

    def test_sighup_with_a_good_file_moves_traffic_to_the_new_backend(self):
        tandem = self.start_tandem(make_config([self.w1.address]))
        self.assertEqual(self.workers_answering(tandem), {"w1"})
        self.assertTrue(tandem.reload(make_config([self.w2.address])), tandem.stderr.text())
        self.assertEqual(self.workers_answering(tandem), {"w2"})
        status = tandem.status_json()
        self.assertTrue(status["config"]["last_reload"]["ok"])
        self.assertEqual([b["address"] for b in status["clusters"][0]["backends"]],
                         [self.w2.address])

    def test_a_reload_keeps_the_listener_port(self):
        tandem = self.start_tandem(make_config([self.w1.address]))
        port = tandem.port
        self.assertTrue(tandem.reload(make_config([self.w2.address])))
        self.assertEqual(http_request(port).status, 200)

    def test_sighup_with_a_bad_file_keeps_the_old_config_serving(self):
        tandem = self.start_tandem(make_config([self.w1.address]))
        bad = make_config([self.w2.address]) + "\n[bogus]\nx = 1\n"
        self.assertFalse(tandem.reload(bad))
        self.assertEqual(self.workers_answering(tandem), {"w1"})

        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertFalse(last_reload["ok"])
        self.assertTrue(any("bogus" in e for e in last_reload["errors"]), last_reload)
        self.assertTrue(all(re.match(re.escape(tandem.config_path) + r":\d+:\d+: ", e)
                            for e in last_reload["errors"]), last_reload)
        metrics = tandem.metrics()
        self.assertEqual(metrics["tandem_config_last_reload_success"], 0)
        self.assertEqual(metrics['tandem_config_reloads_total{result="failure"}'], 1)

        # A good file afterwards is taken, and says so.
        self.assertTrue(tandem.reload(make_config([self.w2.address])))
        self.assertEqual(self.workers_answering(tandem), {"w2"})
        self.assertTrue(tandem.status_json()["config"]["last_reload"]["ok"])
        self.assertEqual(tandem.metrics()["tandem_config_last_reload_success"], 1)

    def test_a_request_in_flight_during_a_reload_completes(self):
        tandem = self.start_tandem(make_config([self.w1.address]))
        client = start_sleeping_request(self, tandem, self.w1, 300)
        self.assertTrue(tandem.reload(make_config([self.w2.address])))
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("x-worker"), "w1")


class AdminTest(TandemTestCase):
    """The admin listener's basics (health, readiness, status, metrics, token)."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")
        cls.tandem = cls.start_class_tandem(make_config([cls.worker.address]))

    def test_healthz_and_readyz_answer_200_while_serving(self):
        self.assertEqual(self.tandem.admin("/healthz").status, 200)
        self.assertEqual(self.tandem.admin("/readyz").status, 200)

    def test_status_describes_the_config_and_its_backends(self):
        status = self.tandem.status_json()
        self.assertRegex(status["version"], r"^\d+\.\d+\.\d+")
        self.assertEqual(status["config"]["path"], self.tandem.config_path)
        self.assertTrue(status["config"]["last_reload"]["ok"])
        self.assertEqual(status["config"]["last_reload"]["errors"], [])
        (cluster,) = status["clusters"]
        self.assertEqual(cluster["name"], "compute")
        self.assertEqual(cluster["policy"], "all-active")
        self.assertEqual(cluster["algorithm"], "round-robin")
        (backend,) = cluster["backends"]
        self.assertEqual(backend["address"], self.worker.address)
        self.assertEqual(backend["role"], "primary")
        self.assertIn(backend["state"], ["unknown", "up", "down", "ejected", "draining",
                                         "disabled", "slow-start"])
        for field in ("active", "weight", "effective_weight", "inflight", "transitions"):
            self.assertIn(field, backend)

    def test_metrics_are_prometheus_text_named_tandem(self):
        self.assertEqual(http_request(self.tandem.port, "GET", "/").status, 200)
        response = self.tandem.admin("/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("content-type").startswith("text/plain"))
        text = response.body.decode()
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        self.assertTrue(samples)
        for line in samples:
            self.assertTrue(line.startswith("tandem_"), line)
        for name in ("tandem_requests_total", "tandem_request_duration_seconds",
                     "tandem_retries_total", "tandem_config_reloads_total",
                     "tandem_config_last_reload_success"):
            self.assertRegex(text, r"(?m)^%s[{_ ]" % name)
        self.assertEqual(self.tandem.metrics()["tandem_config_last_reload_success"], 1)

    def test_admin_calls_need_the_bearer_token(self):
        self.assertEqual(self.tandem.admin("/admin/reload", "POST").status, 401)
        wrong = {"Authorization": "Bearer wrong"}
        self.assertEqual(self.tandem.admin("/admin/reload", "POST", wrong).status, 401)
        right = {"Authorization": "Bearer secret"}
        self.assertEqual(self.tandem.admin("/admin/reload", "POST", right).status, 200)


class AccessLogTest(TandemTestCase):
    """One access log line per request: time, client, request, status, bytes,
    duration, listener, cluster, backend."""

    LINE = re.compile(
        r'^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<client>127\.0\.0\.1:\d+) '
        r'"(?P<method>\S+) (?P<target>\S+) (?P<protocol>HTTP/1\.[01])" (?P<status>\d{3}) '
        r'(?P<bytes>\d+) (?P<duration>\d+\.\d+) (?P<listener>\S+) (?P<cluster>\S+) '
        r'(?P<backend>\S+)')

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")

    def test_each_request_gets_one_line_with_its_fields(self):
        tandem = self.start_tandem(make_config([self.worker.address]))
        client = self.client(tandem.port)
        self.assertEqual(client.get("/status/404").status, 404)
        self.assertEqual(client.get("/bytes?n=1234").status, 200)
        tandem.wait_access_line(r"/bytes\?n=1234")
        lines = [self.LINE.match(line) for line in tandem.access_lines()]
        self.assertTrue(all(lines), tandem.access_lines())
        self.assertEqual(len(lines), 2, tandem.access_lines())
        first, second = lines
        self.assertEqual((first["method"], first["target"], first["status"]),
                         ("GET", "/status/404", "404"))
        self.assertEqual((second["target"], second["status"], second["bytes"]),
                         ("/bytes?n=1234", "200", "1234"))
        for line in lines:
            self.assertEqual(line["protocol"], "HTTP/1.1")
            self.assertEqual(line["listener"], "web")
            self.assertEqual(line["cluster"], "compute")
            self.assertEqual(line["backend"], self.worker.address)
            self.assertEqual(line["client"], client.sock.getsockname()[0] + ":%d"
                             % client.sock.getsockname()[1])
            self.assertLess(float(line["duration"]), scaled(5))

    def test_the_duration_covers_the_backend_time(self):
        tandem = self.start_tandem(make_config([self.worker.address]))
        self.assertEqual(http_request(tandem.port, "GET", "/sleep?ms=300").status, 200)
        match = self.LINE.match(tandem.wait_access_line(r"/sleep").string)
        self.assertGreaterEqual(float(match["duration"]), 0.29)

    def test_the_access_log_can_go_to_a_file(self):
        directory = tempfile.mkdtemp(prefix="tandem-e2e-log-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "access.log")
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"access_log": path}))
        self.assertEqual(http_request(tandem.port, "GET", "/?to=file").status, 200)

        def logged():
            if not os.path.exists(path):
                return None
            with open(path) as f:
                return [line for line in f if "/?to=file" in line]
        (line,) = wait_until(logged, scaled(5), "the access log file line")
        self.assertTrue(self.LINE.match(line), line)
        self.assertEqual(tandem.access_lines(), [])

    def test_an_access_log_set_to_off_writes_nothing(self):
        tandem = self.start_tandem(make_config([self.worker.address],
                                               global_opts={"access_log": "off"}))
        self.assertEqual(http_request(tandem.port).status, 200)
        self.assertEqual(tandem.stop(), 0)
        self.assertEqual(tandem.access_lines(), [])


if __name__ == "__main__":
    unittest.main()
