"""Hot reload, as issue 5 and DESIGN.md's "Signals" state it: SIGHUP,
POST /admin/reload and a change of the file (in place, by rename, by a
ConfigMap's `..data` swap) all reload; a bad file is rejected and the old
config keeps serving; a good one is swapped in without a failed request,
backends that stay keep their state and history, listeners come and go, and
requests in flight finish."""

import calendar
import collections
import os
import re
import signal
import tempfile
import time
import unittest

from harness import (Client, http_request, IncompleteMessage, make_config, refuses_connections,
                     scaled, TandemTestCase, toml_table, wait_until, write_file)
from ops import (ConfigMapDir, LoadClient, TandemAt, admin_post, answered_by,
                 backend_status, edit_by_rename, edit_in_place, free_port, health_table,
                 reload_lines, scrape, start_sleep, wait_reload, wait_reload_by, wait_serving,
                 wait_state)


def config(backends, listeners=(), health=True, global_opts=None):
    """make_config() with fast health checks and extra listeners
    (name, port) in front of the same cluster."""
    extra = health_table() if health else ""
    for name, port in listeners:
        extra += toml_table("listeners." + name,
                            {"listen": "127.0.0.1:%d" % port, "cluster": "compute"})
    return make_config(backends, global_opts=global_opts, extra=extra)




def set_health(worker, status):
    response = http_request(worker.port, "POST", "/control/health?status=%d" % status)
    assert response.status == 200, response


class ReloadUnderLoadTest(TandemTestCase):

    def test_fifty_reloads_under_continuous_load_fail_no_request(self):
        w1, w2, w3 = (self.start_worker(name) for name in ("w1", "w2", "w3"))
        extra_port = free_port()
        # A: two equal backends. B: other weights, one backend more, and a
        # listener in front of a cluster of its own (no checks: it serves at once).
        config_a = config([w1.address, w2.address])
        config_b = config([(w1.address, {"weight": 3}), w2.address, w3.address])
        config_b += toml_table("listeners.extra", {"listen": "127.0.0.1:%d" % extra_port,
                                                   "cluster": "batch"})
        config_b += toml_table("clusters.batch", {})
        config_b += toml_table("[clusters.batch.backends]", {"address": w3.address})
        tandem = self.start_tandem(config_a)
        wait_state(tandem, w1.address, "up")
        wait_state(tandem, w2.address, "up")
        before = scrape(tandem).value("tandem_config_reloads_total", result="success")

        load = LoadClient(tandem.port, keepalive=2, fresh=2).start()
        self.addCleanup(load.stop)
        load.wait_requests(20)
        reloads = 50
        for i in range(reloads):
            text = config_b if i % 2 == 0 else config_a
            start = tandem.stderr.count()
            trigger = ("SIGHUP", "admin", "file change")[i % 3]
            if trigger == "SIGHUP":
                write_file(tandem.config_path, text)
                tandem.send_signal(signal.SIGHUP)
            elif trigger == "admin":
                write_file(tandem.config_path, text)
                response = admin_post(tandem, "/admin/reload")
                self.assertEqual(response.status, 200, response.body)
            else:
                edit_by_rename(tandem.config_path, text)
            # The watch may see the new file before the signal or the admin
            # call arrives (a loaded machine): then both reload, in that order.
            _, ok, _ = wait_reload_by(tandem, start, trigger)
            self.assertTrue(ok, "reload %d rejected:\n%s" % (i, tandem.stderr.text()[-3000:]))
            if text is config_b:
                response = http_request(extra_port)
                self.assertEqual((response.status, response.header("x-worker")), (200, "w3"),
                                 "the added listener and cluster, reload %d" % i)
            else:
                wait_until(lambda: refuses_connections(extra_port), scaled(5),
                           "the removed listener to close, reload %d" % i)
            load.wait_requests(20)
        load.wait_requests(50)
        load.stop()

        triggers = collections.Counter(f["trigger"] for f in reload_lines(tandem))
        done = sum(triggers.values())
        print("\nreload under load: requests=%d reloads=%d (%s) failures=%d answered_by=%s" %
              (load.requests, done, dict(triggers), len(load.failures), dict(load.workers)))
        self.assertEqual(load.failures, [], "%d of %d requests failed across %d reloads; "
                         "first: %s" % (len(load.failures), load.requests, done,
                                        load.failures[:10]))
        self.assertGreaterEqual(load.requests, 20 * reloads)
        self.assertEqual((triggers["SIGHUP"], triggers["admin"]), (17, 17))
        self.assertGreaterEqual(triggers["file change"], 16)
        self.assertEqual(len([f for f in reload_lines(tandem)
                              if f["msg"] == "config reloaded"]), done)
        metrics = scrape(tandem)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="success"),
                         before + done)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="failure"), 0)
        self.assertEqual(metrics.value("tandem_config_last_reload_success"), 1)
        self.assertEqual(set(load.workers) - {"w1", "w2", "w3"}, set())
        # The last config (A) serves, on the same port.
        self.assertEqual(set(answered_by(tandem.port, 6)), {"w1", "w2"})


class ReloadTriggerTest(TandemTestCase):
    """Every way to ask for a reload works, and says which it was."""

    @classmethod
    def setUpClass(cls):
        cls.w1 = cls.start_class_worker("w1")
        cls.w2 = cls.start_class_worker("w2")

    def start(self):
        tandem = self.start_tandem(config([self.w1.address]))
        wait_state(tandem, self.w1.address, "up")
        wait_serving(tandem.port, "w1")
        self.assertEqual(answered_by(tandem.port, 3), {"w1": 3})
        return tandem

    def assert_reloaded_to_w2(self, tandem, start, trigger):
        _, ok, fields = wait_reload_by(tandem, start, trigger)
        self.assertTrue(ok, tandem.stderr.text())
        wait_state(tandem, self.w2.address, "up")
        wait_serving(tandem.port, "w2")
        self.assertEqual(answered_by(tandem.port, 3), {"w2": 3})
        status = tandem.status_json()
        self.assertTrue(status["config"]["last_reload"]["ok"])
        self.assertEqual([b["address"] for b in status["clusters"][0]["backends"]],
                         [self.w2.address])

    def test_sighup_reloads_the_file(self):
        tandem = self.start()
        start = tandem.stderr.count()
        write_file(tandem.config_path, config([self.w2.address]))
        tandem.send_signal(signal.SIGHUP)
        self.assert_reloaded_to_w2(tandem, start, "SIGHUP")

    def test_post_admin_reload_reloads_the_file(self):
        tandem = self.start()
        start = tandem.stderr.count()
        write_file(tandem.config_path, config([self.w2.address]))
        response = admin_post(tandem, "/admin/reload")
        self.assertEqual(response.status, 200, response.body)
        self.assertIn(b"reloaded", response.body)
        self.assert_reloaded_to_w2(tandem, start, "admin")

    def test_an_in_place_edit_of_the_file_is_picked_up(self):
        tandem = self.start()
        start = tandem.stderr.count()
        inode = os.stat(tandem.config_path).st_ino
        edit_in_place(tandem.config_path, config([self.w2.address]))
        self.assertEqual(os.stat(tandem.config_path).st_ino, inode)
        self.assert_reloaded_to_w2(tandem, start, "file change")

    def test_an_editor_write_to_a_temporary_file_and_rename_is_picked_up(self):
        tandem = self.start()
        start = tandem.stderr.count()
        inode = os.stat(tandem.config_path).st_ino
        edit_by_rename(tandem.config_path, config([self.w2.address]))
        self.assertNotEqual(os.stat(tandem.config_path).st_ino, inode)
        self.assert_reloaded_to_w2(tandem, start, "file change")

    def test_a_configmap_data_symlink_swap_is_picked_up_each_time(self):
        directory = tempfile.mkdtemp(prefix="tandem-e2e-configmap-")
        volume = ConfigMapDir(directory, "tandem.toml", config([self.w1.address]))
        tandem = TandemAt(volume.path, directory)
        self.addCleanup(tandem.close)
        self.assertTrue(os.path.islink(volume.path))
        self.assertEqual(tandem.status_json()["config"]["path"], volume.path)
        wait_state(tandem, self.w1.address, "up")
        wait_serving(tandem.port, "w1")
        self.assertEqual(answered_by(tandem.port, 3), {"w1": 3})

        start = tandem.stderr.count()
        volume.update(config([self.w2.address]))
        self.assert_reloaded_to_w2(tandem, start, "file change")
        # The old data directory is gone; the next swap is seen as well.
        start = tandem.stderr.count()
        volume.update(config([self.w1.address]))
        _, ok, fields = wait_reload(tandem, start)
        self.assertTrue(ok, tandem.stderr.text())
        self.assertEqual(fields.get("trigger"), "file change")
        wait_state(tandem, self.w1.address, "up")
        wait_serving(tandem.port, "w1")
        self.assertEqual(answered_by(tandem.port, 3), {"w1": 3})
        self.assertEqual(len(reload_lines(tandem)), 2, tandem.stderr.text())

    def test_a_symlinked_file_edited_where_it_lives_is_picked_up(self):
        directory = tempfile.mkdtemp(prefix="tandem-e2e-symlink-")
        real_dir = os.path.join(directory, "real")
        os.mkdir(real_dir)
        real = os.path.join(real_dir, "tandem.toml")
        write_file(real, config([self.w1.address]))
        link = os.path.join(directory, "tandem.toml")
        os.symlink(real, link)
        tandem = TandemAt(link, directory)
        self.addCleanup(tandem.close)
        wait_state(tandem, self.w1.address, "up")
        start = tandem.stderr.count()
        edit_in_place(real, config([self.w2.address]))
        self.assert_reloaded_to_w2(tandem, start, "file change")


class BrokenReloadTest(TandemTestCase):
    """A bad file is rejected, logged, counted, shown in /status, and the old
    config keeps serving."""

    @classmethod
    def setUpClass(cls):
        cls.w1 = cls.start_class_worker("w1")
        cls.w2 = cls.start_class_worker("w2")

    def broken(self):
        """A config moving to w2 whose grace_period is invalid; returns
        (text, line, column) of the bad value."""
        text = config([self.w2.address]).replace('grace_period = "3s"',
                                                 'grace_period = "3 parsecs"')
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("grace_period"):
                return text, number, line.index('"') + 1
        raise AssertionError("no grace_period line")

    def assert_counted(self, tandem, metrics, failures):
        """The failure counter counts every rejection logged: `failures`, plus
        any the watch made of a write before the signal or call that followed."""
        rejected = len([f for f in reload_lines(tandem) if f["msg"] != "config reloaded"])
        self.assertGreaterEqual(rejected, failures)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="failure"),
                         rejected)

    def test_a_broken_file_is_rejected_and_the_old_config_keeps_serving(self):
        tandem = self.start_tandem(config([self.w1.address]))
        wait_state(tandem, self.w1.address, "up")
        wait_serving(tandem.port, "w1")
        path = tandem.config_path
        text, line, column = self.broken()
        before = time.time()

        # SIGHUP
        start = tandem.stderr.count()
        write_file(path, text)
        tandem.send_signal(signal.SIGHUP)
        index, ok, fields = wait_reload_by(tandem, start, "SIGHUP")
        self.assertFalse(ok, tandem.stderr.text())
        self.assertEqual(fields.get("level"), "error")
        # The error itself is logged, with its position.
        position = "%s:%d:%d: global.grace_period: " % (path, line, column)
        tandem.stderr.wait_for(re.escape(position), scaled(5), index)

        self.assertEqual(answered_by(tandem.port, 4), {"w1": 4})
        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertIs(last_reload["ok"], False)
        self.assertGreaterEqual(calendar.timegm(time.strptime(last_reload["at"],
                                                              "%Y-%m-%dT%H:%M:%SZ")),
                                int(before))
        self.assertEqual(len(last_reload["errors"]), 1, last_reload)
        self.assertTrue(last_reload["errors"][0].startswith(position), last_reload)
        self.assertEqual([b["address"] for b in tandem.status_json()["clusters"][0]["backends"]],
                         [self.w1.address])
        metrics = scrape(tandem)
        self.assertEqual(metrics.value("tandem_config_last_reload_success"), 0)
        self.assert_counted(tandem, metrics, failures=1)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="success"), 0)
        self.assertGreaterEqual(metrics.value("tandem_config_last_reload_timestamp_seconds"),
                                int(before))

        # POST /admin/reload answers with the errors.
        start = tandem.stderr.count()
        response = admin_post(tandem, "/admin/reload")
        self.assertEqual(response.status, 422, response.body)
        self.assertIn(position.encode(), response.body)
        _, ok, fields = wait_reload_by(tandem, start, "admin")
        self.assertFalse(ok)
        self.assert_counted(tandem, scrape(tandem), failures=2)

        # A TOML syntax error through a file edit: also rejected, with its position.
        start = tandem.stderr.count()
        edit_by_rename(path, config([self.w2.address]) + "\n[clusters.compute\n")
        _, ok, fields = wait_reload(tandem, start)
        self.assertFalse(ok)
        self.assertEqual(fields.get("trigger"), "file change")
        errors = tandem.status_json()["config"]["last_reload"]["errors"]
        self.assertTrue(errors and re.match(re.escape(path) + r":\d+:\d+: ", errors[0]), errors)
        self.assert_counted(tandem, scrape(tandem), failures=3)
        self.assertEqual(answered_by(tandem.port, 4), {"w1": 4})

        # Fixing the file is enough: the watch reloads it, and says so.
        start = tandem.stderr.count()
        edit_by_rename(path, config([self.w2.address]))
        _, ok, _ = wait_reload(tandem, start)
        self.assertTrue(ok, tandem.stderr.text())
        wait_state(tandem, self.w2.address, "up")
        wait_serving(tandem.port, "w2")
        self.assertEqual(answered_by(tandem.port, 4), {"w2": 4})
        last_reload = tandem.status_json()["config"]["last_reload"]
        self.assertEqual((last_reload["ok"], last_reload["errors"]), (True, []))
        metrics = scrape(tandem)
        self.assertEqual(metrics.value("tandem_config_last_reload_success"), 1)
        self.assertEqual(metrics.value("tandem_config_reloads_total", result="success"), 1)
        self.assert_counted(tandem, metrics, failures=3)


class StateAcrossReloadTest(TandemTestCase):
    """Backends present in both configs keep their health state and history;
    new ones start unknown and take traffic only after a passing check."""

    def test_backends_kept_across_a_reload_keep_their_state_and_history(self):
        w1 = self.start_worker("w1")
        sick = self.start_worker("sick")
        set_health(sick, 503)
        w3 = self.start_worker("w3")
        tandem = self.start_tandem(config([w1.address, sick.address]))
        up = wait_state(tandem, w1.address, "up")
        down = wait_state(tandem, sick.address, "down")
        self.assertEqual(down["transitions"][0]["from"], "unknown")
        metrics = scrape(tandem)
        checks_failed = metrics.value("tandem_health_checks_total", backend=sick.address,
                                      result="failed")

        load = LoadClient(tandem.port, keepalive=1, fresh=1).start()
        self.addCleanup(load.stop)
        load.wait_requests(20)
        start = tandem.stderr.count()
        write_file(tandem.config_path,
                   config([(w1.address, {"weight": 2}), sick.address, w3.address]))
        tandem.send_signal(signal.SIGHUP)
        self.assertTrue(wait_reload_by(tandem, start, "SIGHUP")[1], tandem.stderr.text())
        wait_state(tandem, w3.address, "up")
        # The sick backend is checked again after the reload; still down.
        wait_until(lambda: scrape(tandem).value("tandem_health_checks_total",
                                                backend=sick.address, result="failed")
                   > checks_failed, scaled(5), "a check of the sick backend after the reload")
        load.wait_requests(50)
        load.stop()

        status = tandem.status_json()
        kept_up = backend_status(status, w1.address)
        kept_down = backend_status(status, sick.address)
        self.assertEqual(kept_up["state"], "up")
        self.assertEqual(kept_up["weight"], 2)
        self.assertEqual(kept_up["transitions"], up["transitions"])
        self.assertEqual(kept_down["state"], "down")
        self.assertEqual(kept_down["transitions"], down["transitions"])
        self.assertFalse(kept_down["active"])
        metrics = scrape(tandem)
        self.assertEqual(metrics.value("tandem_backend_transitions_total", backend=w1.address,
                                       state="up"), 1)
        self.assertEqual(metrics.value("tandem_backend_transitions_total", backend=sick.address,
                                       state="down"), 1)
        self.assertEqual(load.failures, [])
        self.assertNotIn("sick", load.workers, "a down backend took traffic across the reload")

    def test_a_new_backend_starts_unknown_and_takes_traffic_only_after_a_passing_check(self):
        w1 = self.start_worker("w1")
        new = self.start_worker("new")
        set_health(new, 503)
        tandem = self.start_tandem(config([w1.address]))
        wait_state(tandem, w1.address, "up")

        load = LoadClient(tandem.port, keepalive=1, fresh=1).start()
        self.addCleanup(load.stop)
        load.wait_requests(20)
        start = tandem.stderr.count()
        write_file(tandem.config_path, config([w1.address, new.address]))
        tandem.send_signal(signal.SIGHUP)
        self.assertTrue(wait_reload_by(tandem, start, "SIGHUP")[1], tandem.stderr.text())
        down = wait_state(tandem, new.address, "down")
        self.assertEqual(down["transitions"][0]["from"], "unknown", down)
        self.assertIn("HTTP check failed", down["transitions"][0]["reason"])
        load.wait_requests(100)
        self.assertNotIn("new", load.workers,
                         "a new backend took traffic before any check passed")

        set_health(new, 200)
        wait_state(tandem, new.address, "up")
        wait_until(lambda: load.workers["new"] > 0, scaled(10),
                   "the new backend to take traffic once up")
        load.stop()
        self.assertEqual(load.failures, [])


class ListenerAndInFlightReloadTest(TandemTestCase):

    @classmethod
    def setUpClass(cls):
        cls.w1 = cls.start_class_worker("w1")
        cls.w2 = cls.start_class_worker("w2")

    def reload(self, tandem, text):
        start = tandem.stderr.count()
        write_file(tandem.config_path, text)
        tandem.send_signal(signal.SIGHUP)
        _, ok, _ = wait_reload_by(tandem, start, "SIGHUP")
        self.assertTrue(ok, tandem.stderr.text())
        return start

    def test_a_listener_added_by_a_reload_accepts_and_one_removed_stops_accepting(self):
        port = free_port()
        tandem = self.start_tandem(config([self.w1.address]))
        wait_state(tandem, self.w1.address, "up")
        self.assertTrue(refuses_connections(port))

        start = self.reload(tandem, config([self.w1.address], listeners=[("extra", port)]))
        tandem.stderr.wait_for(r'msg="listener ready" listener=extra address=127\.0\.0\.1:%d'
                               % port, scaled(5), start)
        self.assertEqual(http_request(port).status, 200)
        listeners = {l["name"]: l for l in tandem.status_json()["listeners"]}
        self.assertEqual(listeners["extra"]["address"], "127.0.0.1:%d" % port)
        self.assertEqual(listeners["web"]["address"], "127.0.0.1:%d" % tandem.port)

        # A request in flight on the listener being removed still finishes.
        sleeping = start_sleep(self, tandem, self.w1, 800, port=port)
        self.reload(tandem, config([self.w1.address]))
        wait_until(lambda: refuses_connections(port), scaled(5), "the removed listener to close")
        try:
            response = sleeping.response()
        except IncompleteMessage:
            self.fail("the request in flight on the removed listener was cut\n" +
                      tandem.output()[-3000:])
        self.assertEqual((response.status, response.body), (200, b"slept 800 ms\n"))
        self.assertEqual([l["name"] for l in tandem.status_json()["listeners"]], ["web"])
        self.assertEqual(http_request(tandem.port).status, 200)

    def test_a_listener_added_on_port_0_gets_a_port_of_its_own(self):
        tandem = self.start_tandem(config([self.w1.address]))
        wait_state(tandem, self.w1.address, "up")
        start = self.reload(tandem, config([self.w1.address], listeners=[("extra", 0)]))
        listeners = {l["name"]: l["address"] for l in tandem.status_json()["listeners"]}
        self.assertEqual(listeners["web"], "127.0.0.1:%d" % tandem.port)
        self.assertNotEqual(listeners["extra"], listeners["web"],
                            "two listeners on 127.0.0.1:0 share one socket")
        _, match = tandem.stderr.wait_for(
            r'msg="listener ready" listener=extra address=127\.0\.0\.1:(\d+)', scaled(5), start)
        port = int(match.group(1))
        self.assertEqual(listeners["extra"], "127.0.0.1:%d" % port)
        response = http_request(port)
        self.assertEqual(response.status, 200, "%r\n%s" % (response, tandem.output()[-4000:]))

    def test_requests_in_flight_finish_across_a_reload_that_removes_their_backend(self):
        tandem = self.start_tandem(config([self.w1.address]))
        wait_state(tandem, self.w1.address, "up")
        sleeping = start_sleep(self, tandem, self.w1, 1000)

        self.reload(tandem, config([self.w2.address]))
        wait_state(tandem, self.w2.address, "up")
        wait_serving(tandem.port, "w2")
        self.assertEqual(answered_by(tandem.port, 3), {"w2": 3})
        try:
            response = sleeping.response()
        except IncompleteMessage:
            self.fail("the request in flight was cut by the reload\n" + tandem.output()[-3000:])
        self.assertEqual((response.status, response.header("x-worker"), response.body),
                         (200, "w1", b"slept 1000 ms\n"))

    def test_a_keep_alive_connection_idle_across_a_reload_is_served_by_the_new_config(self):
        for health in (True, False):
            with self.subTest(health_checks=health):
                tandem = self.start_tandem(config([self.w1.address], health=health))
                if health:
                    wait_state(tandem, self.w1.address, "up")
                kept_alive = self.client(tandem.port)
                self.assertEqual(kept_alive.get("/").header("x-worker"), "w1")
                self.reload(tandem, config([self.w2.address], health=health))
                if health:
                    wait_state(tandem, self.w2.address, "up")
                wait_serving(tandem.port, "w2")
                self.assertEqual(answered_by(tandem.port, 2), {"w2": 2})
                # Closing the idle connection is fine (a client reconnects);
                # keeping it, its next request must not fail nor go to the
                # removed backend.
                if kept_alive.closed_by_peer(scaled(0.3)):
                    continue
                after = kept_alive.get("/")
                self.assertEqual((after.status, after.header("x-worker")), (200, "w2"),
                                 "a request on a connection opened before the reload: %r"
                                 % after)


if __name__ == "__main__":
    unittest.main()
