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

from harness import (Client, TandemTestCase, http_request, make_config, parse_logfmt, scaled,
                     toml_table, wait_until, write_file)
from ops import (admin_post, free_port, reload_lines, scrape, wait_metric, wait_reload,
                 wait_reload_by)


def refuses_connections(port):
    """True when a connect to 127.0.0.1:port is refused."""
    try:
        client = Client(port, timeout=scaled(2))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    client.close()
    return False


def cpu_seconds(pid):
    """User plus system CPU time of process `pid` so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        # The command name may hold spaces: the fields after it start past ")".
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


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
