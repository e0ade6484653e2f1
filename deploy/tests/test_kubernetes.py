"""deploy/kubernetes/: the manifests parsed with PyYAML (Debian's python3-yaml),
their probes, ports, resources and volume checked against the tandem config
the ConfigMap embeds (which `tandem --check` must accept), the shutdown timing
(drain_delay, grace_period, the app's preStop, terminationGracePeriodSeconds),
and that shutdown sequence played with real processes: tandem on the embedded
config in a ConfigMap-shaped directory, the application behind it, load and a
long request while the kubelet's SIGTERM and preStop hook run.
"""

import glob
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from deploy_common import (DEPLOY, TANDEM_WORKER, Proc, TandemProc, check_config,
                           global_timing, http_get, load_toml, main, scaled, wait_until,
                           with_loopback_ports)

try:
    import yaml
except ImportError:  # reported by the tests, which then skip
    yaml = None

MANIFESTS = os.path.join(DEPLOY, "kubernetes")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
SHUTDOWN_MARGIN = 5  # seconds terminationGracePeriodSeconds keeps beyond tandem's drain


def load_manifests():
    documents = []
    for path in sorted(glob.glob(os.path.join(MANIFESTS, "*.yaml"))):
        with open(path) as f:
            documents.extend((os.path.basename(path), d) for d in yaml.safe_load_all(f) if d)
    return documents


def cpu_cores(quantity):
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def port_of(reference, container):
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(reference, int):
        return reference
    for port in container.get("ports", []):
        if port.get("name") == reference:
            return port["containerPort"]
    raise AssertionError("container %s has no port named %r" % (container["name"], reference))


def listen_port(address):
    return int(address.rsplit(":", 1)[1])


class ConfigMapDir:
    """A directory laid out as the kubelet writes a ConfigMap volume: NAME ->
    ..data/NAME, ..data -> a timestamped directory; update() swaps ..data."""

    def __init__(self, directory, files):
        self.directory = directory
        self.generation = 0
        self.current = self._write(files)
        os.symlink(self.current, os.path.join(directory, "..data"))
        for name in files:
            os.symlink(os.path.join("..data", name), os.path.join(directory, name))

    def _write(self, files):
        self.generation += 1
        stamp = "..2026_01_01_00_00_00.%d" % self.generation
        os.mkdir(os.path.join(self.directory, stamp))
        for name, text in files.items():
            with open(os.path.join(self.directory, stamp, name), "w") as f:
                f.write(text)
        return stamp

    def update(self, files):
        previous, self.current = self.current, self._write(files)
        os.symlink(self.current, os.path.join(self.directory, "..data_tmp"))
        os.rename(os.path.join(self.directory, "..data_tmp"),
                  os.path.join(self.directory, "..data"))
        shutil.rmtree(os.path.join(self.directory, previous))


class Pod:
    """The manifests, read once: the Deployment's pod, its tandem container
    (the one running tandem -c FILE), the ConfigMap behind FILE and the config
    it embeds."""

    def __init__(self):
        self.documents = load_manifests()
        self.kinds = {}
        for _, document in self.documents:
            self.kinds.setdefault(document["kind"], []).append(document)
        self.deployment = self.kinds["Deployment"][0]
        self.pod = self.deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for container in self.pod["containers"] + self.pod.get("initContainers", []):
            args = container.get("command", []) + container.get("args", [])
            if "-c" in args and container.get("image", "").startswith("tandem"):
                self.tandem = container
                self.config_path = args[args.index("-c") + 1]
        self.mount = next(m for m in self.tandem["volumeMounts"]
                          if self.config_path.startswith(m["mountPath"].rstrip("/") + "/"))
        name = volumes[self.mount["name"]]["configMap"]["name"]
        self.config_map = next(c for c in self.kinds["ConfigMap"]
                               if c["metadata"]["name"] == name)
        self.config_key = os.path.relpath(self.config_path, self.mount["mountPath"])
        self.config_text = self.config_map["data"][self.config_key]
        self.config = load_toml(self.config_text)
        self.drain_delay, self.grace_period = global_timing(self.config)
        self.apps = [c for c in self.pod["containers"] if c is not self.tandem]


_pod = None


def pod_model():
    global _pod
    if yaml is None:
        raise AssertionError("PyYAML is missing (Debian package python3-yaml; "
                             "scripts/build --test installs it)")
    if _pod is None:
        _pod = Pod()
    return _pod


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = pod_model()

    def test_the_manifests_hold_a_configmap_a_deployment_and_a_service(self):
        for kind in ("ConfigMap", "Deployment", "Service"):
            self.assertIn(kind, self.m.kinds)
        for _, document in self.m.documents:
            self.assertIn("apiVersion", document)
            self.assertIn("name", document["metadata"])
        self.assertTrue(self.m.apps, "an application container next to tandem")

    def test_the_embedded_config_passes_tandem_check(self):
        directory = tempfile.mkdtemp(prefix="tandem-deploy-k8s-")
        try:
            path = os.path.join(directory, "tandem.toml")
            with open(path, "w") as f:
                f.write(self.m.config_text)
            result = check_config(path)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def test_the_config_is_mounted_as_a_whole_directory_so_updates_arrive(self):
        self.assertNotIn("subPath", self.m.mount, "a subPath mount never sees ConfigMap updates")
        self.assertNotIn("subPathExpr", self.m.mount)
        self.assertTrue(self.m.mount.get("readOnly"))
        self.assertEqual(os.path.dirname(self.m.config_path), self.m.mount["mountPath"].rstrip("/"))

    def test_tandem_declares_its_listener_and_admin_ports(self):
        declared = {p["containerPort"] for p in self.m.tandem["ports"]}
        for name, listener in self.m.config["listeners"].items():
            self.assertTrue(listener["listen"].startswith("0.0.0.0:"),
                            "listener %s must accept on the pod IP" % name)
            self.assertIn(listen_port(listener["listen"]), declared)
        admin = self.m.config["admin"]
        self.assertIn(listen_port(admin["listen"]), declared)
        self.assertFalse(admin["listen"].startswith("127."),
                         "the kubelet probes the pod IP, not the pod's loopback")
        self.assertIn("token", admin, "tandem requires a token on a non-loopback admin listener")
        annotations = self.m.deployment["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            self.assertEqual(int(annotations["prometheus.io/port"]), listen_port(admin["listen"]))

    def test_readiness_asks_readyz_and_liveness_asks_healthz_on_the_admin_port(self):
        admin_port = listen_port(self.m.config["admin"]["listen"])
        readiness = self.m.tandem["readinessProbe"]["httpGet"]
        liveness = self.m.tandem["livenessProbe"]["httpGet"]
        self.assertEqual(readiness["path"], "/readyz")
        self.assertEqual(liveness["path"], "/healthz",
                         "liveness on /readyz would kill tandem while it drains")
        self.assertEqual(port_of(readiness["port"], self.m.tandem), admin_port)
        self.assertEqual(port_of(liveness["port"], self.m.tandem), admin_port)

    def test_every_container_has_resource_requests_and_limits(self):
        for container in self.m.pod["containers"] + self.m.pod.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    self.assertIn(resource, resources.get(kind, {}),
                                  "%s: %s.%s" % (container["name"], kind, resource))

    def test_tandem_runs_as_many_event_loops_as_its_cpu_limit(self):
        threads = self.m.config.get("global", {}).get("threads", 0)
        limit = cpu_cores(self.m.tandem["resources"]["limits"]["cpu"])
        self.assertGreaterEqual(threads, 1, "threads = 0 means the node's cores, not the limit")
        self.assertLessEqual(threads, max(1, math.ceil(limit)))

    def test_the_grace_period_covers_drain_delay_and_grace_period(self):
        self.assertGreater(self.m.drain_delay, 0, "drain_delay lets the endpoint leave first")
        termination = self.m.pod["terminationGracePeriodSeconds"]
        self.assertGreaterEqual(termination,
                                self.m.drain_delay + self.m.grace_period + SHUTDOWN_MARGIN)
        print("\ndrain_delay %gs + grace_period %gs <= terminationGracePeriodSeconds %ds - %ds" %
              (self.m.drain_delay, self.m.grace_period, termination, SHUTDOWN_MARGIN))

    def test_readiness_fails_within_drain_delay(self):
        # /readyz fails at SIGTERM; the kubelet marks the pod unready after
        # failureThreshold probes, which must happen while tandem still serves.
        probe = self.m.tandem["readinessProbe"]
        period = probe.get("periodSeconds", 10)
        failures = probe.get("failureThreshold", 3)
        self.assertLessEqual(period * failures, self.m.drain_delay)

    def test_the_application_outlives_tandem_on_shutdown(self):
        admin_port = listen_port(self.m.config["admin"]["listen"])
        termination = self.m.pod["terminationGracePeriodSeconds"]
        for app in self.m.apps:
            script = app["lifecycle"]["preStop"]["exec"]["command"][-1]
            self.assertIn("127.0.0.1/%d" % admin_port, script,
                          "%s's preStop waits on tandem's admin port" % app["name"])
            cap = int(re.search(r"seq (\d+)", script).group(1))
            self.assertGreaterEqual(cap, self.m.drain_delay + self.m.grace_period)
            self.assertLess(cap, termination, "the kubelet would kill the preStop hook")

    def test_the_service_and_the_selector_reach_tandems_listener(self):
        labels = self.m.deployment["spec"]["template"]["metadata"]["labels"]
        selector = self.m.deployment["spec"]["selector"]["matchLabels"]
        self.assertTrue(set(selector.items()) <= set(labels.items()))
        listener_ports = {listen_port(l["listen"]) for l in self.m.config["listeners"].values()}
        for service in self.m.kinds["Service"]:
            self.assertTrue(set(service["spec"]["selector"].items()) <= set(labels.items()))
            for port in service["spec"]["ports"]:
                target = port_of(port.get("targetPort", port["port"]), self.m.tandem)
                self.assertIn(target, listener_ports)

    def test_the_pod_runs_as_the_images_non_root_user_without_privileges(self):
        security = self.m.pod.get("securityContext", {})
        self.assertTrue(security.get("runAsNonRoot"))
        with open(DOCKERFILE) as f:
            image_user = re.findall(r"^USER\s+(\d+)", f.read(), re.M)[-1]
        self.assertEqual(str(security.get("runAsUser")), image_user)
        for container in self.m.pod["containers"]:
            context = container.get("securityContext", {})
            self.assertIs(context.get("allowPrivilegeEscalation"), False, container["name"])
            self.assertIs(context.get("readOnlyRootFilesystem"), True, container["name"])
            self.assertIn("ALL", context.get("capabilities", {}).get("drop", []))


class PodShutdownTest(unittest.TestCase):
    """The pod's life on one machine: tandem on the embedded config (ports on
    loopback, the backend pointed at a real application process), hot reload
    through a ConfigMap swap, then the kubelet's termination: SIGTERM to
    tandem and the application's preStop hook at the same moment, load that
    stops when the endpoint would have left the Service, and a long request
    in flight."""

    def setUp(self):
        self.m = pod_model()
        self.dir = tempfile.mkdtemp(prefix="tandem-deploy-pod-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def local_config(self, app_port, extra=""):
        text = with_loopback_ports(self.m.config_text)
        # The application container: the one backend of the listener's cluster.
        cluster = next(iter(self.m.config["listeners"].values()))["cluster"]
        backends = self.m.config["clusters"][cluster]["backends"]
        self.assertEqual(len(backends), 1)
        return text.replace('"%s"' % backends[0]["address"], '"127.0.0.1:%d"' % app_port) + extra

    def test_a_terminating_pod_drops_no_request_and_the_app_outlives_tandem(self):
        app = Proc([TANDEM_WORKER, "--listen", "127.0.0.1:0", "--name", "app"], name="app")
        self.addCleanup(app.stop)
        _, match = app.wait_for(r"listening on 127\.0\.0\.1:(\d+)", scaled(15), stream="stdout")
        app_port = int(match.group(1))
        volume = ConfigMapDir(self.dir, {self.m.config_key: self.local_config(app_port)})
        tandem = TandemProc(os.path.join(self.dir, self.m.config_key), cwd=self.dir)
        self.addCleanup(tandem.kill)
        port = tandem.ports["web"]
        wait_until(lambda: http_get(port, "/")[0] == 200, scaled(15), "the app behind tandem")

        # A ConfigMap update reloads tandem.
        start = len(tandem.lines())
        volume.update({self.m.config_key: self.local_config(app_port, "\n# edited\n")})
        tandem.wait_for(r'msg="config reloaded"', scaled(10), start)

        # The application's exec readiness probe passes against it.
        backend_port = listen_port(next(iter(
            self.m.config["clusters"].values()))["backends"][0]["address"])
        probe = self.m.apps[0]["readinessProbe"]["exec"]["command"]
        probe = probe[:-1] + [probe[-1].replace("127.0.0.1/%d" % backend_port,
                                                "127.0.0.1/%d" % app_port)]
        self.assertNotEqual(probe, self.m.apps[0]["readinessProbe"]["exec"]["command"])
        ran = subprocess.run(probe, capture_output=True, text=True, timeout=scaled(10))
        self.assertEqual(ran.returncode, 0, ran.stderr)

        script = self.m.apps[0]["lifecycle"]["preStop"]["exec"]["command"]
        admin = "127.0.0.1/%d" % listen_port(self.m.config["admin"]["listen"])
        pre_stop = script[:-1] + [script[-1].replace(admin, "127.0.0.1/%d" % tandem.admin_port)]

        failures, served = [], [0]
        stop_load = threading.Event()

        def load():
            while not stop_load.is_set():
                try:
                    status, _ = http_get(port, "/", timeout=5)
                    if status != 200:
                        failures.append(status)
                    served[0] += 1
                except OSError as e:
                    failures.append(repr(e))
                time.sleep(0.01)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        wait_until(lambda: served[0] >= 10, scaled(5), "requests before the shutdown")

        # The kubelet: SIGTERM to tandem and the app's preStop at once.
        ended = {}

        def record_end(name, wait, then=None):
            wait()
            ended[name] = time.monotonic()
            if then:
                then()

        began = time.monotonic()
        served_before = served[0]
        tandem.signal(signal.SIGTERM)
        hook = subprocess.Popen(pre_stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: hook.poll() is None and hook.kill())
        waiters = [threading.Thread(target=record_end, args=("tandem", tandem.proc.wait),
                                    daemon=True),
                   # The kubelet sends SIGTERM to a container once its preStop hook returned.
                   threading.Thread(target=record_end, daemon=True,
                                    args=("hook", hook.wait, lambda: app.signal(signal.SIGTERM)))]
        for waiter in waiters:
            waiter.start()
        wait_until(lambda: http_get(tandem.admin_port, "/readyz")[0] == 503, scaled(2),
                   "/readyz answering 503")

        # A long request just before the listeners close: grace_period lets it finish.
        long_result = {}

        def long_request():
            try:
                long_result["status"] = http_get(port, "/sleep?ms=3000", timeout=20)[0]
            except OSError as e:
                long_result["status"] = repr(e)

        time.sleep(max(0.0, self.m.drain_delay - 1.0 - (time.monotonic() - began)))
        slow = threading.Thread(target=long_request, daemon=True)
        slow.start()
        # The endpoint has left the Service by now: load stops.
        time.sleep(0.5)
        stop_load.set()
        loader.join(scaled(10))

        self.assertEqual(tandem.wait(scaled(self.m.drain_delay + self.m.grace_period + 5)), 0,
                         tandem.output())
        hook.wait(scaled(5))
        for waiter in waiters:
            waiter.join(scaled(5))
        self.assertEqual(app.wait(scaled(10)), 0)
        slow.join(scaled(10))
        tandem_exit = ended["tandem"] - began
        hook_end = ended["hook"] - began

        termination = self.m.pod["terminationGracePeriodSeconds"]
        print("\nshutdown: %d requests during drain_delay, %d failed; tandem exited at %.1fs, "
              "the app's preStop returned at %.1fs (terminationGracePeriodSeconds %ds)" %
              (served[0] - served_before, len(failures), tandem_exit, hook_end, termination))
        self.assertEqual(failures, [])
        self.assertGreater(served[0], served_before, "requests served after SIGTERM")
        self.assertEqual(long_result.get("status"), 200, "the in-flight request finished")
        self.assertGreaterEqual(tandem_exit, self.m.drain_delay)
        # The hook sees the admin port close, which tandem does as the last thing
        # before its process exits: allow the few milliseconds between the two.
        self.assertGreaterEqual(hook_end, tandem_exit - 0.25, "the app outlived tandem")
        self.assertLess(hook_end - tandem_exit, 2.5, "the preStop hook ends soon after tandem")
        self.assertLess(hook_end, termination)


if __name__ == "__main__":
    main()
