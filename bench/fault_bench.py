#!/usr/bin/env python3
"""Helpers of fault_bench.sh: the load client that injects the fault, the
readiness and detection probes for each proxy, and the report. Standard
library only; everything on 127.0.0.1."""

import calendar
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time

from benchlib import command_parser, run_common

# ---- readiness -------------------------------------------------------------------


def get(port, path, timeout=1.0):
    """(status, body) of GET path on 127.0.0.1:port, or (None, b"") on error."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body
    except (OSError, http.client.HTTPException):
        return None, b""


def haproxy_command(sock_path, command, timeout=1.0):
    """One command on HAProxy's stats socket; the answer as text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def haproxy_states(sock_path):
    """{server name: status} of every server of backend "workers"."""
    text = haproxy_command(sock_path, "show stat")
    lines = text.lstrip("# ").splitlines()
    header = lines[0].split(",")
    states = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "workers" and row.get("svname") not in ("BACKEND", "FRONTEND"):
            states[row["svname"]] = row.get("status", "")
    return states


def tandem_backends(admin_port):
    status, body = get(admin_port, "/status")
    if status != 200:
        return None
    return json.loads(body)["clusters"][0]["backends"]


def all_up(kind, spec):
    """True when every backend is in service as the proxy sees it."""
    try:
        if kind == "haproxy":
            states = haproxy_states(spec)
            return bool(states) and all(s.startswith("UP") for s in states.values())
        if kind == "tandem":
            backends = tandem_backends(int(spec))
            return bool(backends) and all(b["state"] == "up" for b in backends)
    except (OSError, ValueError, KeyError, IndexError):
        return False
    return True  # nginx: no active checks, nothing to wait for


def wait_ready(args):
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if get(args.port, "/")[0] == 200 and all_up(args.kind, args.spec):
            return True
        time.sleep(0.05)
    return False


# ---- the load and the fault -----------------------------------------------------


def parse_utc(text):
    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", text)
    parts = [int(p) for p in match.groups()[:6]]
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    return calendar.timegm(tuple(parts) + (0, 0, 0)) + fraction


class Load:
    """`conns` keep-alive connections sending GET / back to back."""

    def __init__(self, port, conns, seconds, timeout):
        self.port = port
        self.timeout = timeout
        self.begin = time.monotonic()
        self.end = self.begin + seconds
        self.seconds = seconds
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.kinds = {}
        self.latencies = []
        self.done_at = []  # seconds into the run each successful answer came
        self.failed_at = []
        self.fault_at = None  # wall clock, once the fault is injected
        self.faulty_after = 0  # answers from b1 after the fault
        self.answers_after = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(conns)]

    def note_failure(self, kind, at):
        with self.lock:
            self.failed += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.failed_at.append(at)

    def run(self):
        conn = None
        while time.monotonic() < self.end:
            started = time.monotonic()
            at = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=self.timeout)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                ok = 200 <= response.status < 300
                if ok and self.fault_at is not None and at >= self.fault_at:
                    with self.lock:
                        self.answers_after += 1
                        if response.getheader("X-Worker") == "b1":
                            self.faulty_after += 1
                if response.will_close:
                    conn.close()
                    conn = None
                if not ok:
                    self.note_failure("status %d" % response.status, at)
                else:
                    with self.lock:
                        self.done_at.append(time.monotonic() - self.begin)
            except (OSError, http.client.HTTPException) as e:
                self.note_failure(type(e).__name__, at)
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.requests += 1
                self.latencies.append(time.monotonic() - started)
        if conn is not None:
            conn.close()

    def start(self):
        for thread in self.threads:
            thread.start()

    def join(self):
        for thread in self.threads:
            thread.join(self.timeout + 5)


class Detector:
    """Polls the proxy every 20 ms from the fault on and keeps the first time
    it reports the faulty backend out of service (HAProxy's stats socket; for
    tandem the /status transition time, which is exact)."""

    def __init__(self, kind, spec, backend):
        self.kind, self.spec, self.backend = kind, spec, backend
        self.detected_at = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.fault_at = None

    def run(self):
        while not self.stop.is_set() and self.detected_at is None:
            try:
                if self.kind == "haproxy":
                    state = haproxy_states(self.spec).get(self.backend, "")
                    if state and not state.startswith("UP"):
                        self.detected_at = time.time()
                elif self.kind == "tandem":
                    for backend in tandem_backends(int(self.spec)) or []:
                        if backend["address"] != self.backend:
                            continue
                        for t in backend["transitions"]:
                            at = parse_utc(t["at"])
                            if t["to"] in ("down", "ejected") and at >= self.fault_at - 0.002:
                                self.detected_at = at
                                break
            except (OSError, ValueError, KeyError):
                pass
            self.stop.wait(0.02)

    def start(self, fault_at):
        self.fault_at = fault_at
        if self.kind in ("haproxy", "tandem"):
            self.thread.start()

    def finish(self):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        if self.kind not in ("haproxy", "tandem"):
            return None
        return None if self.detected_at is None else self.detected_at - self.fault_at


def control(port, path):
    """POST a tandem-worker control (/control/delay?ms=N, /control/fail?...)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, body=b"")
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError("tandem-worker refused %s: %d" % (path, response.status))


SPIKE_BASE_MS, SPIKE_MS, SPIKE_SECONDS = 2, 10, 4


def inject(args, ports):
    """The fault of `args.fault`, on b1 (ports[0]) or, for spike, on all;
    none for "none" (the baseline)."""
    if args.fault == "none":
        return
    if args.fault == "kill":
        os.kill(args.pid, signal.SIGKILL)
    elif args.fault == "freeze":
        os.kill(args.pid, signal.SIGSTOP)
    elif args.fault == "slow":
        control(ports[0], "/control/delay?ms=20")
    elif args.fault == "flaky":
        control(ports[0], "/control/fail?status=503&percent=20")
    elif args.fault == "spike":
        for port in ports:
            control(port, "/control/delay?ms=%d" % SPIKE_MS)
        timer = threading.Timer(SPIKE_SECONDS, lambda: [
            control(port, "/control/delay?ms=%d" % SPIKE_BASE_MS) for port in ports])
        timer.daemon = True
        timer.start()


def run_load(args):
    ports = [int(p) for p in args.backend_ports.split()]
    if args.fault == "spike":
        for port in ports:
            control(port, "/control/delay?ms=%d" % SPIKE_BASE_MS)
    load = Load(args.port, args.conns, args.duration, args.timeout)
    detector = Detector(args.kind, args.spec, args.backend)
    load.start()
    time.sleep(args.fault_at)
    fault_at = time.time()
    load.fault_at = fault_at
    inject(args, ports)
    detector.start(fault_at)
    load.join()
    detection = detector.finish()
    if args.fault == "freeze":
        os.kill(args.pid, signal.SIGCONT)
    latencies = sorted(load.latencies) or [0.0]

    def quantile(q):
        return round(latencies[max(0, int(len(latencies) * q) - 1)] * 1000, 1)
    # Successful answers per whole second of the run (the last, partial one
    # left out), and the worst second against the median one.
    per_second = [0] * max(1, int(args.duration))
    for t in load.done_at:
        if int(t) < len(per_second):
            per_second[int(t)] += 1
    usual = sorted(per_second)[len(per_second) // 2] or 1
    result = {
        "scenario": args.scenario,
        "proxy": args.proxy,
        "requests": load.requests,
        "failed": load.failed,
        "failure_kinds": load.kinds,
        "failed_window_s": round(max(load.failed_at) - min(load.failed_at), 3)
        if load.failed_at else 0,
        "detection_s": None if detection is None else round(detection, 3),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "p999_ms": quantile(0.999),
        "max_ms": round(latencies[-1] * 1000, 1),
        "per_second": per_second,
        "worst_second": round(min(per_second) / usual, 2),
        "faulty_share": round(load.faulty_after / load.answers_after, 3)
        if load.answers_after else 0,
    }
    if args.kind == "tandem":
        result["retries"] = tandem_retries(int(args.spec))
        result["states"] = tandem_states(int(args.spec))
    print(json.dumps(result))


def tandem_states(admin_port):
    """"b1:up b2:up b3:up" as /status says at the end of the run."""
    return " ".join("b%d:%s" % (i + 1, b["state"])
                    for i, b in enumerate(tandem_backends(admin_port) or []))


def tandem_retries(admin_port):
    status, body = get(admin_port, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("tandem_retries_total"):
            total += float(line.rpartition(" ")[2])
    return int(total)


# ---- report ------------------------------------------------------------------------


def report(args):
    with open(args.results) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    out = ["| scenario | proxy | requests | failed | failed % | detection | p50 ms | p99 ms "
           "| p99.9 ms | max ms | worst second | b1 share after | failures |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    names = {"none": "no fault", "kill": "kill -9 one of 3", "freeze": "kill -STOP one of 3",
             "slow": "one of 3 20 ms slower", "flaky": "one of 3: 20 % 503",
             "spike": "all 3: 2 ms, 10 ms for 4 s"}
    for run in runs:
        if run["proxy"] == "nginx":
            detection = "passive"
        elif run["detection_s"] is None:
            detection = "not detected"
        else:
            detection = "%.2f s" % run["detection_s"]
        kinds = ", ".join("%s ×%d" % kv for kv in sorted(run["failure_kinds"].items())) or "-"
        share = 100.0 * run["failed"] / run["requests"] if run["requests"] else 0.0
        out.append("| %s | %s | %d | %d | %.2f | %s | %s | %.1f | %s | %.1f | %s | %.3f | %s |" % (
            names.get(run["scenario"], run["scenario"]), run["proxy"], run["requests"],
            run["failed"], share, detection, run.get("p50_ms", "-"), run["p99_ms"],
            run.get("p999_ms", "-"), run["max_ms"], run.get("worst_second", "-"),
            run.get("faulty_share", 0), kinds))
    print("\n".join(out))
    print("\n\"worst second\": the fewest answers in one second of the run over the median "
          "second's. Answers per second:\n")
    for run in runs:
        if "per_second" in run:
            print("- %s, %s: %s" % (names.get(run["scenario"], run["scenario"]), run["proxy"],
                                    " ".join(str(n) for n in run["per_second"])))
    by = {(r["scenario"], r["proxy"]): r for r in runs}
    verdicts = []
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        tandem = by.get((scenario, "tandem")) or by.get((scenario, "tandem-defaults"))
        others = [by[(scenario, p)] for p in ("haproxy", "nginx") if (scenario, p) in by]
        if tandem is None or not others:
            continue
        # GETs only: a retry is always allowed, so tandem must lose none.
        ok = tandem["failed"] == 0 and all(o["failed"] >= tandem["failed"] for o in others)
        verdicts.append("%s: tandem %d, %s: %s" % (
            names.get(scenario, scenario), tandem["failed"],
            ", ".join("%s %d" % (o["proxy"], o["failed"]) for o in others),
            "PASS" if ok else "FAIL"))
    if verdicts:
        print("\nBar: tandem loses fewer requests than both, and none, as every request "
              "is a retriable GET.")
        for verdict in verdicts:
            print("- " + verdict)


def main():
    parser, sub = command_parser(__doc__, "free-port")
    p = sub.add_parser("wait-ready")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kind", choices=("tandem", "haproxy", "nginx"), required=True)
    p.add_argument("--spec", default="", help="tandem: admin port; haproxy: stats socket")
    p.add_argument("--timeout", type=float, default=15)
    p = sub.add_parser("load")
    p.add_argument("--scenario", required=True)
    p.add_argument("--proxy", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kind", choices=("tandem", "haproxy", "nginx"), required=True)
    p.add_argument("--spec", default="")
    p.add_argument("--backend", required=True,
                   help="the faulty backend: tandem address or HAProxy server name")
    p.add_argument("--pid", type=int, required=True, help="the backend process to fault")
    p.add_argument("--fault", choices=("none", "kill", "freeze", "slow", "flaky", "spike"),
                   required=True)
    p.add_argument("--backend-ports", default="", help="the backends' ports, b1 first")
    p.add_argument("--fault-at", type=float, default=3)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--timeout", type=float, default=5)
    p = sub.add_parser("report")
    p.add_argument("results")
    args = parser.parse_args()

    if run_common(args):
        return
    if args.command == "wait-ready":
        sys.exit(0 if wait_ready(args) else 1)
    elif args.command == "load":
        run_load(args)
    elif args.command == "report":
        report(args)


if __name__ == "__main__":
    main()
