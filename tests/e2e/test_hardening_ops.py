"""Operations hardening: with the descriptor limit reached tandem pauses
accepting instead of spinning on accept(), and takes connections again once
descriptors free up; every config key either follows a reload or the reload
names it as needing a restart (the admin listener and the access log follow);
/metrics shows the descriptor budget (client and backend connections open,
accept pauses)."""

import json
import os
import re
import resource
import shutil
import socket
import tempfile
import time
import unittest

from harness import (Client, cpu_seconds, http_request, make_config, open_descriptors,
                     parse_logfmt, refuses_connections, scaled, TandemTestCase, toml_table,
                     wait_until, write_file)
from ops import (admin_post, free_port, reload_lines, scrape, wait_metric, wait_reload,
                 wait_reload_by)








def accept_lines(tandem, start=0):
    """Log lines about accepting, from line index `start` on."""
    return [line for line in tandem.stderr.lines()[start:] if "accept" in line]


class AcceptPauseTest(TandemTestCase):
    """nginx (ngx_event_accept.c: on EMFILE/ENFILE it disables accept events
    and retries after accept_mutex_delay) and HAProxy (limit_listener, resumed
    when a connection closes) both stop accepting while descriptors are
    short; a level-triggered listener left enabled fires again at once."""

    def test_accepting_pauses_at_the_descriptor_limit_and_resumes_when_descriptors_free_up(self):
        worker = self.start_worker("w1")
        # Long client timeouts: the connections held open below must not be
        # closed by tandem while the test watches it.
        tandem = self.start_tandem(make_config(
            [worker.address],
            listener_opts={"client_header_timeout": "60s", "idle_timeout": "60s"}))
        kept_alive = self.client(tandem.port)
        self.assertEqual(kept_alive.get("/").status, 200)  # pools a backend connection

        # A few descriptors left, then more connections than that.
        limit = open_descriptors(tandem.pid) + 6
        _, hard = resource.prlimit(tandem.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(tandem.pid, resource.RLIMIT_NOFILE, (limit, hard))
        start = tandem.stderr.count()
        flood = []
        self.addCleanup(lambda: [s.close() for s in flood])
        for _ in range(30):
            flood.append(socket.create_connection(("127.0.0.1", tandem.port),
                                                  timeout=scaled(5)))
        tandem.stderr.wait_for(r"accept", scaled(5), start)

        # Out of descriptors with connections waiting: no spinning, few lines.
        cpu_before = cpu_seconds(tandem.pid)
        lines_before = len(accept_lines(tandem, start))
        time.sleep(2)
        cpu_used = cpu_seconds(tandem.pid) - cpu_before
        logged = accept_lines(tandem, start)
        self.assertLess(cpu_used, 0.3, "tandem used %.2fs of CPU in 2s while out of "
                        "descriptors; %d accept log lines" % (cpu_used, len(logged)))
        self.assertLessEqual(len(logged) - lines_before, 4, "\n".join(logged[-10:]))
        self.assertLessEqual(len(logged), 6, "\n".join(logged[-10:]))
        fields = parse_logfmt(logged[0])
        self.assertEqual((fields.get("msg"), fields.get("error")),
                         ("accepting paused", "Too many open files"), logged[0])

        # A connection accepted before keeps being served.
        response = kept_alive.get("/")
        self.assertEqual((response.status, response.header("x-worker")), (200, "w1"))

        # Descriptors free up: the connections waiting and new ones are served.
        for s in flood:
            s.close()
        flood.clear()
        response = http_request(tandem.port, timeout=scaled(5))
        self.assertEqual(response.status, 200)
        metrics = scrape(tandem)
        self.assertGreaterEqual(metrics.value("tandem_accept_pauses_total", reason="emfile"), 1)
        self.assertEqual(metrics.value("tandem_listener_accept_paused", listener="web"), 0)


class AdminAcceptPauseTest(TandemTestCase):
    """The admin listener pauses accepting when descriptors run out, as the
    data listeners do, instead of spinning on EMFILE."""

    def test_the_admin_listener_does_not_spin_out_of_descriptors(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address]))
        limit = open_descriptors(tandem.pid) + 3
        _, hard = resource.prlimit(tandem.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(tandem.pid, resource.RLIMIT_NOFILE, (limit, hard))
        flood = []
        self.addCleanup(lambda: [s.close() for s in flood])
        for _ in range(10):
            flood.append(socket.create_connection(("127.0.0.1", tandem.admin_port),
                                                  timeout=scaled(5)))
        time.sleep(0.5)
        cpu_before = cpu_seconds(tandem.pid)
        time.sleep(2)
        cpu_used = cpu_seconds(tandem.pid) - cpu_before
        self.assertLess(cpu_used, 0.3, "tandem used %.2fs of CPU in 2s with admin "
                        "connections waiting and no descriptor left" % cpu_used)
        warnings = [line for line in tandem.stderr.lines() if "accept" in line]
        self.assertLessEqual(len(warnings), 6, "\n".join(warnings[-10:]))
        for s in flood:
            s.close()
        flood.clear()
        resource.prlimit(tandem.pid, resource.RLIMIT_NOFILE, (hard, hard))
        wait_until(lambda: tandem.admin("/healthz").status == 200, scaled(5),
                   "the admin listener to accept again")


class AdminReloadTest(TandemTestCase):
    """The admin listener follows a reload: moved, removed, added back."""

    def setUp(self):
        self.worker = self.start_worker("w1")

    def config(self, admin_port=None):
        """make_config() with the admin listener on `admin_port`, or none."""
        if admin_port is None:
            return make_config([self.worker.address], admin=False)
        return make_config([self.worker.address], admin=False, extra=toml_table(
            "admin", {"listen": "127.0.0.1:%d" % admin_port, "token": "secret"}))

    def admin_ready_port(self, tandem, start):
        _, match = tandem.stderr.wait_for(
            r'msg="admin listener ready" address=127\.0\.0\.1:(\d+)', scaled(5), start)
        return int(match.group(1))

    def test_a_reload_moves_the_admin_listener(self):
        tandem = self.start_tandem(self.config(0))
        old_port = tandem.admin_port
        new_port = free_port()
        start = tandem.stderr.count()
        write_file(tandem.config_path, self.config(new_port))
        # Asked on the listener that the reload moves away.
        try:
            response = admin_post(tandem, "/admin/reload")
            self.assertEqual((response.status, response.body), (200, b"reloaded\n"))
            _, ok, _ = wait_reload_by(tandem, start, "admin")
        except ConnectionRefusedError:  # the file watch was quicker
            _, ok, _ = wait_reload(tandem, start)
        self.assertTrue(ok, tandem.stderr.text())
        self.assertEqual(self.admin_ready_port(tandem, start), new_port)
        wait_until(lambda: refuses_connections(old_port), scaled(5),
                   "the old admin port to close")
        tandem.admin_port = new_port
        self.assertEqual(tandem.admin("/healthz").status, 200)
        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertEqual((last_reload["ok"], last_reload["restart_required"]), (True, []))
        # The token goes with it.
        self.assertEqual(admin_post(tandem, "/admin/reload", headers={}).status, 401)
        self.assertEqual(admin_post(tandem, "/admin/reload").status, 200)
        self.assertEqual(http_request(tandem.port).status, 200)

    def test_the_admin_listener_removed_by_a_reload_closes_and_one_added_opens(self):
        tandem = self.start_tandem(self.config(0))
        old_port = tandem.admin_port
        self.assertTrue(tandem.reload(self.config(None)), tandem.stderr.text())
        wait_until(lambda: refuses_connections(old_port), scaled(5),
                   "the removed admin listener to close")
        self.assertEqual(http_request(tandem.port).status, 200)

        new_port = free_port()
        start = tandem.stderr.count()
        self.assertTrue(tandem.reload(self.config(new_port)), tandem.stderr.text())
        self.assertEqual(self.admin_ready_port(tandem, start), new_port)
        tandem.admin_port = new_port
        self.assertEqual(tandem.admin("/readyz").status, 200)
        self.assertIs(tandem.status_json()["config"]["last_reload"]["ok"], True)
        self.assertEqual(admin_post(tandem, "/admin/reload").status, 200)

    def test_an_admin_listener_that_cannot_bind_rejects_the_reload(self):
        tandem = self.start_tandem(self.config(0))
        taken = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(taken.close)
        self.assertFalse(tandem.reload(self.config(taken.getsockname()[1])))
        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertIs(last_reload["ok"], False)
        self.assertIn("admin", last_reload["errors"][0])
        self.assertEqual(http_request(tandem.port).status, 200)


class AccessLogReloadTest(TandemTestCase):
    """The access log follows a reload: another file, another format, off."""

    def setUp(self):
        self.worker = self.start_worker("w1")
        self.dir = tempfile.mkdtemp(prefix="tandem-e2e-access-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def config(self, access_log, access_log_format="text"):
        return make_config([self.worker.address],
                           global_opts={"access_log": access_log,
                                        "access_log_format": access_log_format})

    def lines(self, path, marker):
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [line for line in f if marker in line]

    def test_the_access_log_follows_a_reload_to_another_file_format_and_off(self):
        first = os.path.join(self.dir, "first.log")
        second = os.path.join(self.dir, "second.log")
        tandem = self.start_tandem(self.config(first))
        kept_alive = self.client(tandem.port)
        self.assertEqual(kept_alive.get("/?n=1").status, 200)
        wait_until(lambda: self.lines(first, "/?n=1"), scaled(5), "line 1 in the first file")

        self.assertTrue(tandem.reload(self.config(second, "json")), tandem.stderr.text())
        self.assertEqual(http_request(tandem.port, "GET", "/?n=2").status, 200)
        self.assertEqual(kept_alive.get("/?n=3").status, 200)
        (line2,) = wait_until(lambda: self.lines(second, "/?n=2"), scaled(5),
                              "line 2 in the second file")
        self.assertEqual(json.loads(line2)["target"], "/?n=2")
        wait_until(lambda: self.lines(second, "/?n=3"), scaled(5), "line 3 in the second file")

        self.assertTrue(tandem.reload(self.config("off")), tandem.stderr.text())
        self.assertEqual(http_request(tandem.port, "GET", "/?n=4").status, 200)
        self.assertTrue(tandem.reload(self.config("stdout")), tandem.stderr.text())
        self.assertEqual(http_request(tandem.port, "GET", "/?n=5").status, 200)
        tandem.wait_access_line(r"/\?n=5")
        # Each line went where the config of its moment said, and only there.
        self.assertEqual(len(self.lines(first, "/?n=")), 1)
        self.assertEqual([json.loads(l)["target"] for l in self.lines(second, "/?n=")],
                         ["/?n=2", "/?n=3"])
        self.assertEqual([l for l in tandem.access_lines() if "/?n=" in l and "/?n=5" not in l],
                         [])


class RestartRequiredTest(TandemTestCase):

    def test_a_key_a_reload_cannot_apply_is_named_in_last_reload_and_the_log(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address]))
        self.assertEqual(tandem.status_json()["config"]["last_reload"]["restart_required"], [])
        start = tandem.stderr.count()
        self.assertTrue(tandem.reload(make_config([worker.address],
                                                  global_opts={"threads": 2,
                                                               "grace_period": "4s"})))
        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertEqual((last_reload["ok"], last_reload["errors"],
                          last_reload["restart_required"]), (True, [], ["global.threads"]))
        _, match = tandem.stderr.wait_for(r'msg="some changes take effect at the next restart"'
                                          r'.* keys=(\S+)', scaled(5), start)
        self.assertEqual(match.group(1), "global.threads")
        self.assertEqual(scrape(tandem).value("tandem_config_restart_required"), 1)
        self.assertEqual(http_request(tandem.port).status, 200)
        # Still pending after another reload that keeps the new value.
        self.assertTrue(tandem.reload(make_config([worker.address], global_opts={"threads": 2})))
        self.assertEqual(tandem.status_json()["config"]["last_reload"]["restart_required"],
                         ["global.threads"])
        # Back to the running value: nothing waits for a restart.
        self.assertTrue(tandem.reload(make_config([worker.address])))
        self.assertEqual(tandem.status_json()["config"]["last_reload"]["restart_required"], [])
        self.assertEqual(scrape(tandem).value("tandem_config_restart_required"), 0)
        self.assertEqual(len(reload_lines(tandem)), 3)


class DescriptorBudgetMetricsTest(TandemTestCase):

    def test_open_client_and_backend_connections_show_in_metrics(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address]))
        metrics = scrape(tandem)
        self.assertEqual(metrics.value("tandem_downstream_connections_open", listener="web"), 0)
        self.assertEqual(metrics.value("tandem_upstream_connections_open",
                                       backend=worker.address), 0)
        self.assertEqual(metrics.value("tandem_accept_pauses_total"), 0)
        self.assertEqual(metrics.value("tandem_listener_accept_paused", listener="web"), 0)
        self.assertGreater(metrics.value("tandem_process_open_fds"), 0)
        self.assertGreaterEqual(metrics.value("tandem_process_max_fds"),
                                metrics.value("tandem_process_open_fds"))

        client = self.client(tandem.port)
        self.assertEqual(client.get("/").status, 200)
        wait_metric(tandem, lambda v: v == 1, "tandem_downstream_connections_open",
                    listener="web")
        # The backend connection stays open, idle in the pool.
        wait_metric(tandem, lambda v: v == 1, "tandem_upstream_connections_open",
                    cluster="compute", backend=worker.address)
        self.assertEqual(scrape(tandem).value("tandem_upstream_connections_idle",
                                              backend=worker.address), 1)
        client.close()
        wait_metric(tandem, lambda v: v == 0, "tandem_downstream_connections_open",
                    listener="web")
        self.assertEqual(scrape(tandem).value("tandem_upstream_connections_open",
                                              backend=worker.address), 1)
        # The backend goes away: its pooled connection closes and is counted out.
        worker.stop()
        wait_metric(tandem, lambda v: v == 0, "tandem_upstream_connections_open",
                    backend=worker.address)


if __name__ == "__main__":
    unittest.main()
