"""The admin listener, metrics and logs, as issue 5 and DESIGN.md's "Admin
listener" state them: /status in the contract's shape, /healthz and /readyz,
the bearer token, drain/enable/disable, `--check` for an exposed admin
listener, a Prometheus exposition promtool accepts and whose counters follow
the traffic, JSON access log lines and logfmt log lines."""

import collections
import json
import os
import re
import shutil
import signal
import tempfile
import time
import unittest

from harness import (Client, TandemTestCase, http_request, make_config, refused_address,
                     run_tandem, scaled, toml_table, wait_until, write_file)
from ops import (STATES, UTC_MILLIS, UTC_SECONDS, admin_post, answered_by, backend_action,
                 backend_status, free_port, health_table, last_reason, parse_logfmt_strict,
                 promtool_check, scrape, start_sleep, start_sleep_anywhere,
                 wait_metric, wait_serving, wait_state)


def set_health(worker, status):
    response = http_request(worker.port, "POST", "/control/health?status=%d" % status)
    assert response.status == 200, response


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class StatusShapeTest(TandemTestCase):
    """GET /status: every field the contract names, with its type."""

    @classmethod
    def setUpClass(cls):
        cls.primary = cls.start_class_worker("p1")
        cls.hot = cls.start_class_worker("hot")
        cold_address, cls.cold_holder = refused_address()
        cls.addClassCleanup(cls.cold_holder.close)
        cls.cold_address = cold_address
        cls.extra_port = free_port()
        extra = health_table() + toml_table(
            "listeners.extra", {"listen": "127.0.0.1:%d" % cls.extra_port, "cluster": "compute"})
        cls.tandem = cls.start_class_tandem(make_config(
            [(cls.primary.address, {"weight": 3}),
             (cls.hot.address, {"role": "backup", "standby": "hot"}),
             (cold_address, {"role": "backup", "standby": "cold", "activate": "true"})],
            cluster_opts={"policy": "primary-backup", "min_active": 1,
                          "algorithm": "least-conn"},
            extra=extra))
        wait_state(cls.tandem, cls.primary.address, "up")
        wait_state(cls.tandem, cls.hot.address, "up")

    def test_status_has_every_field_of_the_contract_with_its_type(self):
        response = self.tandem.admin("/status")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("content-type").startswith("application/json"))
        status = json.loads(response.body)

        self.assertRegex(status["version"], r"^\d+\.\d+\.\d+")
        config = status["config"]
        self.assertEqual(config["path"], self.tandem.config_path)
        last_reload = config["last_reload"]
        self.assertIs(last_reload["ok"], True)
        self.assertRegex(last_reload["at"], UTC_SECONDS)
        self.assertEqual(last_reload["errors"], [])
        self.assertIs(status["ready"], True)

        listeners = {l["name"]: l for l in status["listeners"]}
        self.assertEqual(set(listeners), {"web", "extra"})
        self.assertEqual(listeners["web"], {"name": "web", "cluster": "compute", "tls": False,
                                            "address": "127.0.0.1:%d" % self.tandem.port})
        self.assertEqual(listeners["extra"]["address"], "127.0.0.1:%d" % self.extra_port)

        (cluster,) = status["clusters"]
        self.assertEqual(cluster["name"], "compute")
        self.assertEqual(cluster["policy"], "primary-backup")
        self.assertEqual(cluster["algorithm"], "least-conn")
        self.assertIs(cluster["panic"], False)
        self.assertEqual(cluster["min_active"], 1)
        self.assertEqual(cluster["serving"], 1)
        self.assertIsInstance(cluster["events"], list)
        for event in cluster["events"]:
            self.assertRegex(event["at"], UTC_MILLIS)
            self.assertIsInstance(event["message"], str)

        backends = {b["address"]: b for b in cluster["backends"]}
        self.assertEqual(list(backends), [self.primary.address, self.hot.address,
                                          self.cold_address])
        for backend in cluster["backends"]:
            with self.subTest(backend=backend["address"]):
                self.assertIn(backend["role"], ("primary", "backup"))
                self.assertIn(backend["state"], STATES)
                self.assertIsInstance(backend["active"], bool)
                self.assertIsInstance(backend["weight"], int)
                self.assertTrue(is_number(backend["effective_weight"]), backend)
                self.assertIsInstance(backend["inflight"], int)
                self.assertIsInstance(backend["last_check"], str)
                self.assertIsInstance(backend["transitions"], list)
                for transition in backend["transitions"]:
                    self.assertEqual(set(transition), {"at", "from", "to", "reason"})
                    self.assertRegex(transition["at"], UTC_MILLIS)
                    self.assertIn(transition["from"], STATES)
                    self.assertIn(transition["to"], STATES)
                    self.assertIsInstance(transition["reason"], str)
                    self.assertTrue(transition["reason"])

        primary = backends[self.primary.address]
        self.assertEqual((primary["role"], primary["standby"], primary["state"],
                          primary["active"], primary["weight"], primary["effective_weight"],
                          primary["inflight"]), ("primary", None, "up", True, 3, 3, 0))
        self.assertEqual(primary["last_check"], "HTTP 200")
        self.assertEqual(primary["transitions"][0]["from"], "unknown")
        self.assertEqual(primary["transitions"][0]["to"], "up")
        self.assertIn("HTTP check passed", primary["transitions"][0]["reason"])
        self.assertNotIn("activation", primary)

        hot = backends[self.hot.address]
        self.assertEqual((hot["role"], hot["standby"], hot["state"], hot["active"]),
                         ("backup", "hot", "up", False))
        self.assertNotIn("activation", hot)

        cold = backends[self.cold_address]
        self.assertEqual((cold["role"], cold["standby"], cold["active"]),
                         ("backup", "cold", False))
        self.assertIn(cold["activation"], ("inactive", "activating", "active", "failed"))
        self.assertEqual(cold["activation"], "inactive")

    def test_status_counts_requests_in_flight_per_backend(self):
        sleeping = start_sleep(self, self.tandem, self.primary, 600)
        backend = backend_status(self.tandem.status_json(), self.primary.address)
        self.assertEqual(backend["inflight"], 1)
        self.assertEqual(sleeping.response().status, 200)
        wait_until(lambda: backend_status(self.tandem.status_json(),
                                          self.primary.address)["inflight"] == 0,
                   scaled(5), "in-flight back to 0")

    def test_unknown_admin_paths_are_404(self):
        self.assertEqual(self.tandem.admin("/nope").status, 404)
        self.assertEqual(self.tandem.admin("/status/extra").status, 404)


class HealthAndReadinessTest(TandemTestCase):

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")

    def test_healthz_and_readyz_answer_200_while_serving(self):
        tandem = self.start_tandem(make_config([self.worker.address]))
        for path in ("/healthz", "/readyz"):
            response = tandem.admin(path)
            self.assertEqual(response.status, 200, path)
        self.assertIs(tandem.status_json()["ready"], True)
        self.assertEqual(scrape(tandem).value("tandem_ready"), 1)

    def test_readyz_is_503_during_the_sigterm_drain_delay_while_requests_are_still_served(self):
        delay = scaled(1.5)
        tandem = self.start_tandem(make_config(
            [self.worker.address], global_opts={"drain_delay": "%dms" % (delay * 1000)}))
        self.assertEqual(tandem.admin("/readyz").status, 200)
        start = time.monotonic()
        tandem.send_signal(signal.SIGTERM)
        tandem.stderr.wait_for(r'msg="shutting down"', scaled(5))
        self.assertEqual(tandem.admin("/readyz").status, 503)
        self.assertEqual(tandem.admin("/healthz").status, 200)
        self.assertIs(tandem.status_json()["ready"], False)
        self.assertEqual(scrape(tandem).value("tandem_ready"), 0)
        # Still serving, on new connections too, while the delay lasts.
        self.assertEqual(http_request(tandem.port).status, 200)
        self.assertEqual(http_request(tandem.port).status, 200)
        self.assertLess(time.monotonic() - start, delay, "checks took longer than the delay")
        self.assertEqual(tandem.wait(delay + scaled(5)), 0, tandem.output())
        self.assertGreaterEqual(time.monotonic() - start, delay - 0.1)


class TokenTest(TandemTestCase):
    """Mutating /admin calls need "Authorization: Bearer <token>", else 401."""

    @classmethod
    def setUpClass(cls):
        cls.worker = cls.start_class_worker("w1")
        cls.tandem = cls.start_class_tandem(make_config([cls.worker.address]))

    def calls(self):
        return ["/admin/reload",
                "/admin/clusters/compute/backends/%s/drain" % self.worker.address,
                "/admin/clusters/compute/backends/%s/disable" % self.worker.address]

    def test_calls_without_the_token_or_with_a_wrong_one_are_401_and_change_nothing(self):
        wrong = [None, "Bearer wrong", "Bearer secretsecret", "Bearer secre", "Bearer ",
                 "Bearer", "secret", "Basic c2VjcmV0", "Bearer secreT", "Bearer secret2"]
        before = scrape(self.tandem)
        for path in self.calls():
            for value in wrong:
                with self.subTest(path=path, authorization=value):
                    headers = {} if value is None else {"Authorization": value}
                    response = admin_post(self.tandem, path, headers)
                    self.assertEqual(response.status, 401, response.body)
                    self.assertEqual(response.header("www-authenticate"), "Bearer")
        after = scrape(self.tandem)
        for result in ("success", "failure"):
            self.assertEqual(after.value("tandem_config_reloads_total", result=result),
                             before.value("tandem_config_reloads_total", result=result))
        backend = backend_status(self.tandem.status_json(), self.worker.address)
        self.assertNotIn(backend["state"], ("draining", "disabled"))
        self.assertEqual(http_request(self.tandem.port).status, 200)

    def test_the_right_token_is_200(self):
        response = admin_post(self.tandem, "/admin/reload")
        self.assertEqual(response.status, 200, response.body)
        response = backend_action(self.tandem, self.worker.address, "enable")
        self.assertEqual(response.status, 200, response.body)

    def test_an_unknown_cluster_backend_or_action_is_404(self):
        for path in ("/admin/clusters/nope/backends/%s/drain" % self.worker.address,
                     "/admin/clusters/compute/backends/127.0.0.1:1/drain",
                     "/admin/clusters/compute/backends/%s/explode" % self.worker.address,
                     "/admin/nope"):
            with self.subTest(path=path):
                self.assertEqual(admin_post(self.tandem, path).status, 404)
        # Without the token an unknown path says nothing about what exists.
        self.assertEqual(admin_post(self.tandem, "/admin/clusters/nope/backends/x/drain",
                                    {}).status, 401)

    def test_read_only_endpoints_need_no_token(self):
        for path in ("/status", "/metrics", "/healthz", "/readyz", "/"):
            with self.subTest(path=path):
                self.assertEqual(self.tandem.admin(path).status, 200)

    def test_without_a_configured_token_every_admin_call_is_401(self):
        tandem = self.start_tandem(make_config(
            [self.worker.address], admin=False,
            extra=toml_table("admin", {"listen": "127.0.0.1:0"})))
        for value in (None, "Bearer ", "Bearer secret"):
            headers = {} if value is None else {"Authorization": value}
            self.assertEqual(admin_post(tandem, "/admin/reload", headers).status, 401)

    def test_a_reload_changes_the_token(self):
        tandem = self.start_tandem(make_config([self.worker.address]))
        text = make_config([self.worker.address]).replace('token = "secret"',
                                                          'token = "rotated"')
        self.assertTrue(tandem.reload(text), tandem.stderr.text())
        self.assertEqual(admin_post(tandem, "/admin/reload").status, 401)
        self.assertEqual(admin_post(tandem, "/admin/reload",
                                    {"Authorization": "Bearer rotated"}).status, 200)


class BackendActionTest(TandemTestCase):
    """drain, enable and disable from the admin API."""

    def setUp(self):
        self.w1 = self.start_worker("w1")
        self.w2 = self.start_worker("w2")
        self.tandem = self.start_tandem(make_config([self.w1.address, self.w2.address],
                                                    extra=health_table()))
        wait_state(self.tandem, self.w1.address, "up")
        wait_state(self.tandem, self.w2.address, "up")

    def test_drain_lets_in_flight_requests_finish_and_sends_no_new_ones(self):
        client, target = start_sleep_anywhere(self, self.tandem, [self.w1, self.w2], 1000)
        other = "w2" if target is self.w1 else "w1"
        response = backend_action(self.tandem, target.address, "drain")
        self.assertEqual(response.status, 200, response.body)

        backend = wait_state(self.tandem, target.address, "draining", timeout=scaled(1))
        self.assertEqual(last_reason(backend), "drained by admin")
        self.assertEqual(backend["transitions"][-1]["to"], "draining")
        self.assertIs(backend["active"], False)
        self.assertEqual(backend["inflight"], 1)
        self.assertEqual(scrape(self.tandem).value("tandem_backend_state", backend=target.address,
                                                   state="draining"), 1)
        self.tandem.stderr.wait_for(r'msg="backend state changed".*backend=%s.*to=draining'
                                    % re.escape(target.address), scaled(5))

        self.assertEqual(answered_by(self.tandem.port, 6), {other: 6})
        response = client.response()
        self.assertEqual((response.status, response.header("x-worker"), response.body),
                         (200, target.worker_name, b"slept 1000 ms\n"))
        # Health checks go on; the drain holds until an operator ends it.
        time.sleep(0.5)
        self.assertEqual(backend_status(self.tandem.status_json(), target.address)["state"],
                         "draining")
        self.assertEqual(answered_by(self.tandem.port, 4), {other: 4})

    def test_enable_ends_a_drain_and_the_backend_takes_traffic_again(self):
        self.assertEqual(backend_action(self.tandem, self.w1.address, "drain").status, 200)
        wait_state(self.tandem, self.w1.address, "draining", timeout=scaled(1))
        self.assertEqual(answered_by(self.tandem.port, 4), {"w2": 4})
        response = backend_action(self.tandem, self.w1.address, "enable")
        self.assertEqual(response.status, 200, response.body)
        backend = wait_state(self.tandem, self.w1.address, "up")
        self.assertEqual(last_reason(backend), "enabled by admin")
        wait_serving(self.tandem.port, "w1")
        self.assertEqual(answered_by(self.tandem.port, 4), {"w1": 2, "w2": 2})

    def test_disable_takes_the_backend_out_until_enabled(self):
        response = backend_action(self.tandem, self.w2.address, "disable")
        self.assertEqual(response.status, 200, response.body)
        backend = wait_state(self.tandem, self.w2.address, "disabled", timeout=scaled(1))
        self.assertEqual(last_reason(backend), "disabled by admin")
        self.assertIs(backend["active"], False)
        self.assertEqual(answered_by(self.tandem.port, 4), {"w1": 4})
        # A disabled backend is not checked; a failing /healthz changes nothing.
        set_health(self.w2, 503)
        time.sleep(0.6)
        self.assertEqual(backend_status(self.tandem.status_json(), self.w2.address)["state"],
                         "disabled")
        set_health(self.w2, 200)

        self.assertEqual(backend_action(self.tandem, self.w2.address, "enable").status, 200)
        backend = wait_state(self.tandem, self.w2.address, "up")
        wait_serving(self.tandem.port, "w2")
        self.assertEqual(answered_by(self.tandem.port, 4), {"w1": 2, "w2": 2})
        reasons = [t["reason"] for t in backend["transitions"]]
        self.assertIn("disabled by admin", reasons)


class CheckCommandTest(TandemTestCase):
    """`tandem --check`: an admin listener off loopback needs a token."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tandem-e2e-admin-check-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def write(self, admin_values):
        """Writes a config whose [admin] table comes last; returns (path,
        line of its `listen`)."""
        text = make_config(["127.0.0.1:9"], admin=False,
                           extra=toml_table("admin", admin_values))
        path = os.path.join(self.dir, "tandem.toml")
        write_file(path, text)
        lines = text.splitlines()
        return path, lines.index("[admin]") + 2

    def test_an_admin_listener_on_a_non_loopback_address_without_a_token_is_an_error(self):
        for address in ("0.0.0.0:0", "[::]:0"):
            with self.subTest(listen=address):
                path, line = self.write({"listen": address})
                result = run_tandem(["-c", path, "--check"])
                output = (result.stdout + result.stderr).decode()
                self.assertEqual(result.returncode, 1, output)
                self.assertRegex(output, r"(?m)^%s:%d:\d+: admin\.listen: .*token" %
                                 (re.escape(path), line))
                # Nor does tandem start with it.
                result = run_tandem(["-c", path])
                self.assertEqual(result.returncode, 1, result.stderr)

    def test_an_admin_listener_on_a_non_loopback_address_with_a_token_passes(self):
        path, _ = self.write({"listen": "0.0.0.0:0", "token": "long-random-token"})
        result = run_tandem(["-c", path, "--check"])
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_an_admin_listener_on_loopback_needs_no_token(self):
        for address in ("127.0.0.1:0", "[::1]:0"):
            with self.subTest(listen=address):
                path, _ = self.write({"listen": address})
                result = run_tandem(["-c", path, "--check"])
                self.assertEqual(result.returncode, 0, result.stderr)


class MetricsTest(TandemTestCase):
    """GET /metrics: Prometheus text that promtool accepts and whose counters
    follow the traffic."""

    def setUp(self):
        self.w1 = self.start_worker("w1")
        self.w2 = self.start_worker("w2")
        self.tandem = self.start_tandem(make_config([self.w1.address, self.w2.address],
                                                    extra=health_table()))
        wait_state(self.tandem, self.w1.address, "up")
        wait_state(self.tandem, self.w2.address, "up")

    def send_mix(self):
        """Traffic of every kind: 2xx, 4xx, 5xx, a body, a retry after a reset."""
        answered = collections.Counter()
        with Client(self.tandem.port) as client:
            for target in ["/"] * 6 + ["/status/404"] * 3 + ["/status/503"] * 2:
                response = client.get(target)
                answered[(response.status // 100, response.header("x-worker"))] += 1
            client.request("POST", "/sink", body=b"x" * 1000)
            response = client.response("POST")
            answered[(response.status // 100, response.header("x-worker"))] += 1
        return answered

    def test_promtool_accepts_a_real_scrape(self):
        self.send_mix()
        self.assertTrue(self.tandem.reload(make_config([self.w1.address, self.w2.address],
                                                       extra=health_table())))
        text = self.tandem.admin("/metrics").body.decode()
        result = promtool_check(text)
        self.assertEqual(result.returncode, 0,
                         "promtool check metrics:\n%s%s" % (result.stdout.decode(),
                                                             result.stderr.decode()))
        self.assertEqual((result.stdout + result.stderr).strip(), b"",
                         "promtool lint findings")

    def test_the_exposition_is_well_formed(self):
        self.send_mix()
        metrics = scrape(self.tandem)
        for name in metrics.names():
            self.assertTrue(name.startswith("tandem_"), name)
        families = set(metrics.types)
        for name in metrics.names():
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            self.assertTrue(name in families or base in families, "no TYPE for " + name)
        for family, kind in metrics.types.items():
            if kind == "counter":
                self.assertTrue(family.endswith("_total"), family)
            self.assertIn(family, metrics.helps, "no HELP for " + family)
        self.assertEqual(metrics.types["tandem_request_duration_seconds"], "histogram")
        buckets = metrics.matching("tandem_request_duration_seconds_bucket", cluster="compute")
        bounds = [float(labels["le"]) for _, labels, _ in buckets]
        self.assertEqual(bounds, sorted(bounds))
        self.assertEqual(bounds[-1], float("inf"))
        counts = [value for _, _, value in buckets]
        self.assertEqual(counts, sorted(counts), "buckets are not cumulative")
        self.assertEqual(counts[-1], metrics.value("tandem_request_duration_seconds_count",
                                                   cluster="compute"))
        for name in ("tandem_requests_total", "tandem_request_duration_seconds_count",
                     "tandem_backend_up", "tandem_backend_state", "tandem_backend_active",
                     "tandem_backend_transitions_total", "tandem_backend_ejections_total",
                     "tandem_health_checks_total", "tandem_retries_total",
                     "tandem_queue_length", "tandem_config_reloads_total",
                     "tandem_config_last_reload_success",
                     "tandem_config_last_reload_timestamp_seconds", "tandem_build_info",
                     "tandem_downstream_connections_open", "tandem_upstream_connections_total",
                     "tandem_backend_inflight", "tandem_backend_responses_total"):
            self.assertIsNotNone(metrics.value(name), name)
        self.assertEqual(len(metrics.matching("tandem_backend_state", backend=self.w1.address)),
                         len(STATES))
        self.assertEqual(metrics.value("tandem_backend_state", backend=self.w1.address), 1)

    def test_request_counters_follow_the_traffic(self):
        before = scrape(self.tandem)
        answered = self.send_mix()
        total = sum(answered.values())

        def delta(metrics, name, **labels):
            return metrics.value(name, **labels) - (before.value(name, **labels) or 0)

        def settled():
            metrics = scrape(self.tandem)
            return metrics if delta(metrics, "tandem_request_duration_seconds_count",
                                    cluster="compute") >= total else None
        metrics = wait_until(settled, scaled(5), "the counters to catch up")
        self.assertEqual(delta(metrics, "tandem_request_duration_seconds_count",
                               cluster="compute"), total)
        for code_class, count in (("2xx", 7), ("4xx", 3), ("5xx", 2)):
            self.assertEqual(delta(metrics, "tandem_requests_total", listener="web",
                                   code_class=code_class), count, code_class)
        for worker in (self.w1, self.w2):
            with self.subTest(worker=worker.worker_name):
                sent = sum(n for (_, name), n in answered.items() if name == worker.worker_name)
                self.assertGreater(sent, 0)
                self.assertEqual(delta(metrics, "tandem_backend_responses_total",
                                       backend=worker.address), sent)
                self.assertEqual(
                    delta(metrics, "tandem_backend_responses_total", backend=worker.address,
                          code_class="2xx"),
                    answered[(2, worker.worker_name)])
        # Each 503 is tried once more on the other backend, which answers 503 too.
        self.assertEqual(delta(metrics, "tandem_retries_total", reason="status_5xx"), 2)
        self.assertEqual(delta(metrics, "tandem_retries_total"), 2)

        # The duration histogram sees a slow request.
        start_sum = metrics.value("tandem_request_duration_seconds_sum", cluster="compute")
        self.assertEqual(http_request(self.tandem.port, "GET", "/sleep?ms=300").status, 200)
        wait_metric(self.tandem, lambda v: v >= start_sum + 0.29,
                    "tandem_request_duration_seconds_sum", cluster="compute")

    def test_gauges_follow_connections_and_requests_in_flight(self):
        base = scrape(self.tandem).value("tandem_downstream_connections_open", listener="web")
        client = self.client(self.tandem.port)
        self.assertEqual(client.get("/").status, 200)
        wait_metric(self.tandem, lambda v: v == base + 1, "tandem_downstream_connections_open",
                    listener="web")
        sleeping, busy = start_sleep_anywhere(self, self.tandem, [self.w1, self.w2], 600)
        self.assertEqual(scrape(self.tandem).value("tandem_backend_inflight",
                                                   backend=busy.address), 1)
        self.assertEqual(sleeping.response().status, 200)
        wait_metric(self.tandem, lambda v: v == 0, "tandem_backend_inflight",
                    backend=busy.address)
        client.close()
        sleeping.close()
        wait_metric(self.tandem, lambda v: v == base, "tandem_downstream_connections_open",
                    listener="web")

    def test_backend_up_flips_when_a_worker_fails_its_check_and_back(self):
        metrics = scrape(self.tandem)
        self.assertEqual(metrics.value("tandem_backend_up", backend=self.w2.address), 1)
        failed = metrics.value("tandem_health_checks_total", backend=self.w2.address,
                               result="failed")
        passed = metrics.value("tandem_health_checks_total", backend=self.w2.address,
                               result="passed")
        self.assertGreater(passed, 0)
        set_health(self.w2, 503)
        wait_metric(self.tandem, lambda v: v == 0, "tandem_backend_up", backend=self.w2.address)
        metrics = scrape(self.tandem)
        self.assertEqual(metrics.value("tandem_backend_state", backend=self.w2.address,
                                       state="down"), 1)
        self.assertEqual(metrics.value("tandem_backend_state", backend=self.w2.address,
                                       state="up"), 0)
        self.assertEqual(metrics.value("tandem_backend_active", backend=self.w2.address), 0)
        self.assertEqual(metrics.value("tandem_backend_transitions_total",
                                       backend=self.w2.address, state="down"), 1)
        self.assertGreaterEqual(metrics.value("tandem_health_checks_total",
                                              backend=self.w2.address, result="failed"),
                                failed + 3)
        self.assertEqual(metrics.value("tandem_backend_up", backend=self.w1.address), 1)

        set_health(self.w2, 200)
        wait_metric(self.tandem, lambda v: v == 1, "tandem_backend_up", backend=self.w2.address)
        self.assertEqual(scrape(self.tandem).value("tandem_backend_transitions_total",
                                                   backend=self.w2.address, state="up"), 2)

    def test_build_info_and_reload_metrics(self):
        metrics = scrape(self.tandem)
        version = self.tandem.status_json()["version"]
        self.assertEqual(metrics.value("tandem_build_info", version=version), 1)
        self.assertEqual(metrics.value("tandem_config_last_reload_success"), 1)
        self.assertLessEqual(abs(metrics.value("tandem_config_last_reload_timestamp_seconds")
                                 - time.time()), scaled(60))
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="success"), 0)
        self.assertEqual(admin_post(self.tandem, "/admin/reload").status, 200)
        metrics = scrape(self.tandem)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="success"), 1)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="failure"), 0)


class LogTest(TandemTestCase):
    """Structured log lines on stderr; the access log as JSON."""

    ACCESS_FIELDS = {"time": str, "client": str, "method": str, "target": str, "protocol": str,
                     "status": int, "bytes_sent": int, "bytes_received": int,
                     "duration": float, "listener": str, "cluster": str, "tries": int,
                     "flags": str}

    def test_json_access_log_lines_parse_as_json_with_every_field(self):
        worker = self.start_worker("w1")
        refused, holder = refused_address()
        self.addCleanup(holder.close)
        dead_port = free_port()
        extra = toml_table("listeners.dead", {"listen": "127.0.0.1:%d" % dead_port,
                                              "cluster": "dead"})
        extra += toml_table("clusters.dead", {"retries": 1})
        extra += toml_table("[clusters.dead.backends]", {"address": refused})
        # Round robin over a refusing backend and a worker: some requests
        # fail to connect first and are retried on the worker.
        tandem = self.start_tandem(make_config(
            [refused, worker.address], global_opts={"access_log_format": "json"}, extra=extra))
        with Client(tandem.port) as client:
            for _ in range(4):
                self.assertEqual(client.get("/?q=%22quoted%22").status, 200)
            client.request("POST", "/sink", body=b"y" * 777)
            self.assertEqual(client.response("POST").status, 200)
        self.assertEqual(http_request(dead_port).status, 502)
        tandem.wait_access_line(r'"listener":"dead"')
        self.assertEqual(tandem.stop(), 0)

        entries = []
        for line in tandem.access_lines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                self.fail("access log line is not JSON: %r" % line)
        self.assertEqual(len(entries), 6, tandem.access_lines())
        for entry in entries:
            with self.subTest(entry=entry):
                for field, kind in self.ACCESS_FIELDS.items():
                    self.assertIn(field, entry)
                    if kind is float:
                        self.assertTrue(is_number(entry[field]), field)
                    else:
                        self.assertIsInstance(entry[field], kind, field)
                self.assertIn("backend", entry)
                self.assertTrue(entry["backend"] is None or isinstance(entry["backend"], str))
                self.assertRegex(entry["time"], UTC_MILLIS)
                self.assertRegex(entry["client"], r"^127\.0\.0\.1:\d+$")
                self.assertEqual(entry["protocol"], "HTTP/1.1")
                self.assertGreaterEqual(entry["tries"], 1)
                self.assertLess(entry["duration"], scaled(10))
                if "not_retried" in entry:
                    self.assertIsInstance(entry["not_retried"], str)

        gets = [e for e in entries if e["method"] == "GET" and e["listener"] == "web"]
        self.assertEqual(len(gets), 4)
        for entry in gets:
            self.assertEqual(entry["target"], "/?q=%22quoted%22")
            self.assertEqual((entry["status"], entry["backend"], entry["cluster"]),
                             (200, worker.address, "compute"))
            self.assertEqual(entry["bytes_sent"], len(b"hello from w1\n"))
        retried = [e for e in entries if e["tries"] >= 2]
        self.assertTrue(retried, entries)
        for entry in retried:
            self.assertIn("UF", entry["flags"].split(","), entry)
        clean = [e for e in gets if e["tries"] == 1]
        for entry in clean:
            self.assertEqual(entry["flags"], "-")
        (post,) = [e for e in entries if e["method"] == "POST"]
        self.assertEqual((post["target"], post["bytes_received"], post["status"]),
                         ("/sink", 777, 200))
        (dead,) = [e for e in entries if e["listener"] == "dead"]
        self.assertEqual((dead["cluster"], dead["status"]), ("dead", 502))
        self.assertIn("UF", dead["flags"].split(","), dead)

    def test_log_lines_are_logfmt_with_time_level_component_and_message(self):
        worker = self.start_worker("w1")
        doomed = self.start_worker("doomed")
        tandem = self.start_tandem(make_config([worker.address, doomed.address],
                                               extra=health_table()))
        wait_state(tandem, doomed.address, "up")
        self.assertTrue(tandem.reload(make_config([worker.address, doomed.address],
                                                  extra=health_table())))
        self.assertFalse(tandem.reload("[global]\nthreads = \"many\"\n"))
        self.assertEqual(backend_action(tandem, worker.address, "drain").status, 200)
        self.assertEqual(backend_action(tandem, worker.address, "enable").status, 200)
        doomed.kill()
        wait_state(tandem, doomed.address, "down")
        self.assertEqual(tandem.stop(), 0)

        records = []
        for line in tandem.stderr.lines():
            try:
                pairs = parse_logfmt_strict(line)
            except ValueError as e:
                self.fail("log line is not logfmt: %s" % e)
            keys = [key for key, _ in pairs]
            self.assertEqual(keys[:4], ["time", "level", "component", "msg"], line)
            self.assertEqual(len(keys), len(set(keys)), "a key twice: " + line)
            record = dict(pairs)
            self.assertRegex(record["time"], UTC_MILLIS)
            self.assertIn(record["level"], ("debug", "info", "warn", "error"), line)
            self.assertRegex(record["component"], r"^[a-z]+$", line)
            self.assertTrue(record["msg"], line)
            records.append(record)

        def find(msg, **fields):
            return [r for r in records if r["msg"] == msg and
                    all(r.get(k) == v for k, v in fields.items())]
        self.assertTrue(find("tandem started"))
        self.assertTrue(find("listener ready", listener="web"))
        self.assertTrue(find("config reloaded", trigger="SIGHUP"))
        rejected = [r for r in records if r["msg"].startswith("reload rejected")]
        self.assertTrue(rejected)
        self.assertEqual({r["level"] for r in rejected}, {"error"})
        self.assertTrue([r for r in records if r["msg"].startswith(tandem.config_path + ":")],
                        "the rejected file's error is not logged")
        self.assertTrue(find("backend action", backend=worker.address, action="drain"))
        down = find("backend state changed", backend=doomed.address, to="down")
        self.assertEqual(len(down), 1, records)
        self.assertEqual(down[0]["from"], "up")
        self.assertEqual(down[0]["level"], "warn")
        self.assertEqual(down[0]["component"], "health")
        self.assertRegex(down[0]["reason"], r"^3 consecutive HTTP checks failed: ")
        self.assertTrue(find("backend state changed", backend=worker.address, to="draining",
                             reason="drained by admin"))
        self.assertTrue(find("tandem stopped"))


if __name__ == "__main__":
    unittest.main()
