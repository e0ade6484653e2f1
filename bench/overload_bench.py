#!/usr/bin/python3
"""Overload benchmark (issue 15): tandem, HAProxy and nginx in front of the
same fixed-capacity workers, driven by an open-loop (constant-rate, wrk2-style)
load generator written here in Python, at fractions and multiples of the
workers' capacity. Reports per scenario and load: offered and sent rate,
goodput (2xx/s), admitted (2xx) p50/p99 latency measured from each request's
*scheduled* send time (coordinated-omission correct), the rejected share
(non-2xx or failed) per priority, the status mix and the proxy's CPU. Then a
rate-limit accuracy run per proxy at 10x the limit.

The workers: WORKERS Python processes (asyncio HTTP/1.1 with keep-alive), each
with SLOTS concurrent slots (an asyncio.Semaphore) and SERVICE_MS of service
time per request held in a slot; requests beyond the slots wait inside the
worker, as in a real compute worker's queue. Capacity = WORKERS x SLOTS x
1000 / SERVICE_MS requests/s.

The generator: one asyncio process; request i is due at start + i/rate and is
written at once on an idle keep-alive connection, or on a new one (up to
MAX_CONNS; past it the request counts as failed, "unsent"). A request written
more than 5 ms after its due time counts as late (reported as "late %": when
it is high, the generator did not keep its schedule). No answer within
TIMEOUT s is a failure. Each request carries x-priority: high (10 %), normal
(60 %) or low (30 %) by default (PRIORITY_MIX), drawn from a seeded random
generator.

Scenarios (SCENARIOS, in this order):
  tandem-adaptive  concurrency = "adaptive", priority_header, queue_size/queue_timeout
  tandem-fixed     max_requests = WORKERS x SLOTS, same queue and priorities
  haproxy          server maxconn SLOTS, "timeout queue", set-priority-class
  nginx            limit_conn WORKERS x SLOTS (nginx OSS has no upstream queue
                   and no priorities: max_conns+queue is nginx Plus)

Environment (defaults in brackets):
  SCENARIOS   ["tandem-adaptive tandem-fixed haproxy nginx"]
  LOADS       multiples of capacity ["0.25 1 3 10"]; the smallest is the
              "unloaded" p99 the 3x goal compares with
  WORKERS [2]  SLOTS [4]  SERVICE_MS [25]
  QUEUE_SIZE  tandem queue_size [WORKERS x SLOTS]
  PRIORITY_MIX  percent high/normal/low ["10/60/30"]; at 10x load, high must
              stay under capacity (e.g. "5/55/40") for its goal to be reachable
  QUEUE_TIMEOUT_MS  tandem queue_timeout and HAProxy "timeout queue" [100]
  ADAPTIVE_SAMPLE  tandem-adaptive's [clusters.X.adaptive] sample, e.g. "p90"
              [tandem's default, p50]
  DURATION    measured seconds per run [15]    WARMUP  seconds before [2]
  TIMEOUT     per-request timeout, s [5]       MAX_CONNS generator connections [6000]
  RATE_LIMIT  the rate-limit runs' limit, req/s [100] (offered 10x; "0" skips)
  RL_PROXIES  ["tandem haproxy nginx"]
  PROXY_CPUS  taskset CPUs for the proxy, e.g. "0" [none]
  LOAD_CPUS   taskset CPUs for the generator and the workers, e.g. "1" [none]
  TANDEM      binary [<repo>/build/tandem]
  RESULTS_DIR also write runs.csv and report.md there
Subcommands "worker" and "gen" are the script's own helpers. See bench/README.md.
"""

import asyncio
import csv
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (cpu_ticks, free_port, nginx_dir, nginx_temp_paths, pinned,  # noqa: E402
                      tandem_bench_head, wait_port)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ.get
SCENARIOS = ENV("SCENARIOS", "tandem-adaptive tandem-fixed haproxy nginx").split()
LOADS = [float(x) for x in ENV("LOADS", "0.25 1 3 10").split()]
WORKERS = int(ENV("WORKERS", "2"))
SLOTS = int(ENV("SLOTS", "4"))
SERVICE_MS = float(ENV("SERVICE_MS", "25"))
QUEUE_SIZE = int(ENV("QUEUE_SIZE", str(WORKERS * SLOTS)))
QUEUE_TIMEOUT_MS = int(ENV("QUEUE_TIMEOUT_MS", "100"))
ADAPTIVE_SAMPLE = ENV("ADAPTIVE_SAMPLE", "")  # [clusters.X.adaptive] sample
DURATION = float(ENV("DURATION", "15"))
WARMUP = float(ENV("WARMUP", "2"))
TIMEOUT = float(ENV("TIMEOUT", "5"))
MAX_CONNS = int(ENV("MAX_CONNS", "6000"))
# Shares of high/normal/low priority requests, in percent.
MIX = [float(x) for x in ENV("PRIORITY_MIX", "10/60/30").split("/")]
if len(MIX) != 3 or abs(sum(MIX) - 100) > 1e-6:
    sys.exit("overload_bench: PRIORITY_MIX must be three shares adding up to 100, e.g. 10/60/30")
RATE_LIMIT = float(ENV("RATE_LIMIT", "100"))
RL_PROXIES = ENV("RL_PROXIES", "tandem haproxy nginx").split()
PROXY_CPUS = ENV("PROXY_CPUS", "")
LOAD_CPUS = ENV("LOAD_CPUS", "")
TANDEM = ENV("TANDEM", os.path.join(REPO, "build", "tandem"))
RESULTS_DIR = ENV("RESULTS_DIR", "")
CAPACITY = WORKERS * SLOTS * 1000.0 / SERVICE_MS
PRIORITIES = ("high", "normal", "low")
LATE_S = 0.005


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


# ---- the fixed-capacity worker ---------------------------------------------

class WorkerConn(asyncio.Protocol):
    def __init__(self, slots, service_s):
        self.slots, self.service_s = slots, service_s
        self.buf = b""
        self.pending = []
        self.task = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            close = b"connection: close" in head.lower()
            self.pending.append(close)  # GETs only: no request bodies
        if self.pending and self.task is None:
            self.task = asyncio.ensure_future(self.serve())

    async def serve(self):
        while self.pending:
            close = self.pending.pop(0)
            async with self.slots:
                await asyncio.sleep(self.service_s)
            if self.transport.is_closing():
                break
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 3\r\n" +
                                 (b"Connection: close\r\n" if close else b"") +
                                 b"\r\nok\n")
            if close:
                self.transport.close()
                break
        self.task = None

    def connection_lost(self, exc):
        self.pending.clear()


async def worker_main(port, slots, service_ms):
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(slots)
    server = await loop.create_server(lambda: WorkerConn(sem, service_ms / 1000.0),
                                      "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


# ---- the open-loop generator -----------------------------------------------

class GenConn(asyncio.Protocol):
    """One keep-alive client connection carrying one request at a time."""

    def __init__(self, gen):
        self.gen = gen
        self.transport = None
        self.buf = b""
        self.req = None      # index of the request in flight
        self.dead = False

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, i):
        self.req = i
        self.buf = b""
        self.transport.write(self.gen.requests[self.gen.prio[i]])
        self.gen.sent_at(i)

    def data_received(self, data):
        if self.req is None:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").lower().split("\r\n")
        try:
            status = int(head[0].split()[1])
        except (IndexError, ValueError):
            status = 0
        length, chunked, close = 0, False, head[0].startswith("http/1.0")
        for line in head[1:]:
            name, _, value = line.partition(":")
            value = value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection":
                close = "close" in value
        body = self.buf[end + 4:]
        if chunked:
            if not body.endswith(b"0\r\n\r\n"):
                return
        elif len(body) < length:
            return
        i, self.req = self.req, None
        self.gen.done(i, status)
        if close:
            self.dead = True
            self.transport.close()
        else:
            self.gen.idle.append(self)

    def connection_lost(self, exc):
        self.dead = True
        self.gen.conns.discard(self)
        if self.req is not None:
            i, self.req = self.req, None
            self.gen.done(i, 0)


class Generator:
    def __init__(self, port, rate, warmup, duration, timeout, max_conns, seed):
        self.port, self.rate = port, rate
        self.warmup, self.duration, self.timeout = warmup, duration, timeout
        self.max_conns = max_conns
        rnd = random.Random(seed)
        self.n = int(rate * (warmup + duration))
        high, normal = MIX[0] / 100, (MIX[0] + MIX[1]) / 100
        self.prio = [0 if r < high else (1 if r < normal else 2)
                     for r in (rnd.random() for _ in range(self.n))]
        self.requests = [("GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: overload\r\n"
                          "x-priority: %s\r\n\r\n" % p).encode() for p in PRIORITIES]
        self.status = [None] * self.n
        self.latency = [0.0] * self.n
        self.late = [False] * self.n
        self.idle = []
        self.conns = set()
        self.connecting = 0
        self.outstanding = 0
        self.t0 = 0.0
        self.peak_conns = 0
        self.unsent = 0

    def due(self, i):
        return self.t0 + i / self.rate

    def sent_at(self, i):
        self.late[i] = time.monotonic() - self.due(i) > LATE_S

    def done(self, i, status):
        if self.status[i] is not None:
            return
        self.status[i] = status
        self.latency[i] = time.monotonic() - self.due(i)
        self.outstanding -= 1

    async def connect_and_send(self, i):
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: GenConn(self), "127.0.0.1", self.port),
                self.timeout)
        except (OSError, asyncio.TimeoutError):
            self.done(i, 0)
            return
        finally:
            self.connecting -= 1
        self.conns.add(conn)
        self.peak_conns = max(self.peak_conns, len(self.conns))
        if self.status[i] is not None:  # timed out while connecting
            self.idle.append(conn)
        else:
            conn.send(i)

    def dispatch(self, i):
        self.outstanding += 1
        while self.idle:
            conn = self.idle.pop()
            if not conn.dead:
                conn.send(i)
                return
        if len(self.conns) + self.connecting >= self.max_conns:
            self.unsent += 1
            self.done(i, -1)
            return
        asyncio.ensure_future(self.connect_and_send(i))

    async def sweep(self):
        while True:
            await asyncio.sleep(0.05)
            limit = time.monotonic() - self.timeout
            for conn in list(self.conns):
                if conn.req is not None and self.due(conn.req) < limit:
                    i, conn.req = conn.req, None
                    self.done(i, 0)
                    conn.dead = True
                    conn.transport.close()

    async def run(self):
        sweeper = asyncio.ensure_future(self.sweep())
        self.t0 = time.monotonic() + 0.05
        i = 0
        while i < self.n:
            now = time.monotonic()
            while i < self.n and self.due(i) <= now:
                self.dispatch(i)
                i += 1
            if i < self.n:
                await asyncio.sleep(max(0.0, self.due(i) - time.monotonic()))
        end = time.monotonic() + self.timeout + 1
        while self.outstanding > 0 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        sweeper.cancel()
        for conn in list(self.conns):
            conn.transport.close()

    def summary(self):
        first = int(self.rate * self.warmup)
        window = range(first, self.n)
        out = {"requests": len(window), "late": sum(self.late[i] for i in window),
               "unsent": self.unsent, "peak_conns": self.peak_conns, "statuses": {},
               "ok_latency_ms": [], "by_prio": {p: [0, 0] for p in PRIORITIES}}
        for i in window:
            s = self.status[i] if self.status[i] is not None else 0
            key = str(s) if s > 0 else ("unsent" if s < 0 else "failed")
            out["statuses"][key] = out["statuses"].get(key, 0) + 1
            p = PRIORITIES[self.prio[i]]
            out["by_prio"][p][0] += 1
            if 200 <= s < 300:
                out["ok_latency_ms"].append(round(self.latency[i] * 1000, 3))
            else:
                out["by_prio"][p][1] += 1
        return out


def gen_main(port, rate, warmup, duration, timeout, max_conns, seed):
    raise_nofile()
    gen = Generator(port, rate, warmup, duration, timeout, max_conns, seed)
    asyncio.run(gen.run())
    json.dump(gen.summary(), sys.stdout)


# ---- the orchestration ----------------------------------------------------

def log(message):
    print("overload_bench: " + message, file=sys.stderr, flush=True)


def quantile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, int(len(sorted_values) * q + 0.5) - 1))]


class Bench:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="overload-bench-")
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody
        self.procs = []
        self.workers = []
        self.fd_limit = raise_nofile()

    def start(self, argv, name, cpus):
        logf = open(os.path.join(self.dir, name + ".log"), "w")
        proc = subprocess.Popen(pinned(cpus, argv), stdout=logf, stderr=subprocess.STDOUT,
                                cwd=self.dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.procs.remove(proc)

    def start_workers(self):
        me = os.path.abspath(__file__)
        for i in range(WORKERS):
            port = free_port()
            self.start([sys.executable, me, "worker", str(port), str(SLOTS), str(SERVICE_MS)],
                       "worker%d" % i, LOAD_CPUS)
            wait_port(port)
            self.workers.append(port)

    # ---- configs -----------------------------------------------------------

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def tandem(self, port, kind):
        lines = tandem_bench_head(port)
        if kind == "ratelimit":
            lines += ["", "[listeners.bench.rate_limit]", "rate = %g" % RATE_LIMIT,
                      'key = "global"']
        lines += ["", "[clusters.workers]", 'algorithm = "round-robin"',
                  "max_idle_connections = 256"]
        if kind in ("adaptive", "fixed"):
            lines += ['priority_header = "x-priority"', "queue_size = %d" % QUEUE_SIZE,
                      'queue_timeout = "%dms"' % QUEUE_TIMEOUT_MS]
        if kind == "fixed":
            lines += ["max_requests = %d" % (WORKERS * SLOTS)]
        if kind == "adaptive":
            lines += ['concurrency = "adaptive"']
        lines += ["[clusters.workers.health]", 'kind = "none"']
        if kind == "adaptive" and ADAPTIVE_SAMPLE:
            lines += ["[clusters.workers.adaptive]", 'sample = "%s"' % ADAPTIVE_SAMPLE]
        for b in self.workers:
            lines += ["[[clusters.workers.backends]]", 'address = "127.0.0.1:%d"' % b]
        path = self.write("tandem-%s.toml" % kind, "\n".join(lines) + "\n")
        return [TANDEM, "-c", path]

    def haproxy(self, port, kind):
        maxconn = " maxconn %d" % SLOTS if kind == "overload" else ""
        servers = "\n".join("    server w%d 127.0.0.1:%d%s" % (i, b, maxconn)
                            for i, b in enumerate(self.workers))
        if kind == "overload":
            rules = """    http-request set-priority-class int(-1) if { req.hdr(x-priority) -m str high }
    http-request set-priority-class int(1) if { req.hdr(x-priority) -m str low }
"""
        else:
            rules = """    stick-table type string len 8 size 16 expire 10s store http_req_rate(1s)
    http-request track-sc0 str(global)
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt %d }
""" % RATE_LIMIT
        text = f"""global
    nbthread 1
    maxconn 16000
    ulimit-n {self.fd_limit}
    no strict-limits
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    maxconn 16000
    timeout connect 1s
    timeout client 120s
    timeout server 30s
    timeout queue {QUEUE_TIMEOUT_MS}ms
    timeout http-request 10s
    timeout http-keep-alive 120s
frontend bench
    bind 127.0.0.1:{port}
{rules}    default_backend workers
backend workers
    balance roundrobin
{servers}
"""
        return ["haproxy", "-f", self.write("haproxy-%s.cfg" % kind, text)]

    def nginx(self, port, kind):
        d = nginx_dir(self.dir, "nginx-%s" % kind)
        servers = "\n".join("        server 127.0.0.1:%d;" % b for b in self.workers)
        if kind == "overload":
            zone = "limit_conn_zone $binary_remote_addr zone=slots:1m;"
            limit = "limit_conn slots %d;\n            limit_conn_status 503;" % (WORKERS * SLOTS)
        else:
            zone = "limit_req_zone $binary_remote_addr zone=rl:1m rate=%dr/s;" % RATE_LIMIT
            limit = "limit_req zone=rl burst=%d nodelay;\n            limit_req_status 429;" % (
                max(1, RATE_LIMIT // 10))
        text = f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile {self.fd_limit};
events {{ worker_connections 16000; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    {nginx_temp_paths(d)}
    {zone}
    upstream workers {{
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            {limit}
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(text)
        return ["nginx", "-p", d + "/", "-c", path, "-e", os.path.join(d, "error.log")]

    def start_proxy(self, scenario):
        port = free_port()
        proxy, kind = {"tandem-adaptive": ("tandem", "adaptive"),
                       "tandem-fixed": ("tandem", "fixed"),
                       "haproxy": ("haproxy", "overload"),
                       "nginx": ("nginx", "overload"),
                       "tandem-ratelimit": ("tandem", "ratelimit"),
                       "haproxy-ratelimit": ("haproxy", "ratelimit"),
                       "nginx-ratelimit": ("nginx", "ratelimit")}[scenario]
        argv = getattr(self, proxy)(port, kind)
        proc = self.start(argv, scenario, PROXY_CPUS)
        try:
            wait_port(port)
        except RuntimeError:
            raise RuntimeError("%s did not start: %s" % (
                scenario, open(os.path.join(self.dir, scenario + ".log")).read()[-2000:])) from None
        return port, proc

    # ---- one run -----------------------------------------------------------

    def run(self, scenario, port, proc, rate, seed):
        argv = [sys.executable, os.path.abspath(__file__), "gen", str(port), str(rate),
                str(WARMUP), str(DURATION), str(TIMEOUT), str(MAX_CONNS), str(seed)]
        gen = subprocess.Popen(pinned(LOAD_CPUS, argv), stdout=subprocess.PIPE, text=True)
        time.sleep(WARMUP + 0.3)
        before, t_before = cpu_ticks(proc.pid), time.monotonic()
        time.sleep(DURATION)
        ticks, elapsed = cpu_ticks(proc.pid) - before, time.monotonic() - t_before
        out, _ = gen.communicate(timeout=DURATION + WARMUP + TIMEOUT + 120)
        res = json.loads(out)
        lat = sorted(res["ok_latency_ms"])
        ok = len(lat)
        row = {"scenario": scenario, "rate": round(rate, 1),
               "sent_rps": round(res["requests"] / DURATION, 1),
               "goodput_rps": round(ok / DURATION, 1),
               "p50_ms": round(quantile(lat, 0.50), 1), "p99_ms": round(quantile(lat, 0.99), 1),
               "late_pct": round(100.0 * res["late"] / max(1, res["requests"]), 2),
               "peak_conns": res["peak_conns"],
               "proxy_cpu_pct": round(100.0 * ticks / os.sysconf("SC_CLK_TCK") / elapsed, 1)}
        for p in PRIORITIES:
            n, rejected = res["by_prio"][p]
            row["rej_%s_pct" % p] = round(100.0 * rejected / max(1, n), 2)
        row["statuses"] = " ".join("%s:%d" % kv for kv in sorted(res["statuses"].items()))
        return row

    def close(self):
        for proc in list(self.procs):
            self.stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def fmt_table(rows):
    lines = ["| scenario | load | offered/s | sent/s | goodput/s | p50 ms | p99 ms | "
             "rej high % | rej normal % | rej low % | statuses | late % | conns | proxy CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %s | %.0f | %.0f | %.0f | %.1f | %.1f | %.2f | %.2f | %.2f | %s | "
                     "%.2f | %d | %.1f |" % (
                         r["scenario"], r.get("load", ""), r["rate"], r["sent_rps"],
                         r["goodput_rps"], r["p50_ms"], r["p99_ms"], r["rej_high_pct"],
                         r["rej_normal_pct"], r["rej_low_pct"], r["statuses"], r["late_pct"],
                         r["peak_conns"], r["proxy_cpu_pct"]))
    return "\n".join(lines)


def goals(rows):
    out = []
    for scenario in SCENARIOS:
        mine = {r["load"]: r for r in rows if r["scenario"] == scenario}
        if not mine:
            continue
        base = mine[min(mine)]
        parts = []
        for load in (3.0, 10.0):
            r = mine.get(load)
            if not r:
                continue
            parts.append("%gx: goodput %.0f%% of capacity (goal >= 90%%), p99 %.1f ms = %.2f x "
                         "unloaded %.1f ms (goal <= 2), high rejected %.2f%% (goal <= 0.1%%), "
                         "low rejected %.2f%%" % (
                             load, 100 * r["goodput_rps"] / CAPACITY, r["p99_ms"],
                             r["p99_ms"] / max(base["p99_ms"], 0.001), base["p99_ms"],
                             r["rej_high_pct"], r["rej_low_pct"]))
        out.append("- %s: %s" % (scenario, "; ".join(parts)))
    for r in rows:
        if r["scenario"].endswith("-ratelimit"):
            out.append("- %s: %.1f allowed/s for a limit of %g/s (%+.1f%%, goal within ±2%%)" % (
                r["scenario"], r["goodput_rps"], RATE_LIMIT,
                100 * (r["goodput_rps"] / RATE_LIMIT - 1)))
    return "\n".join(out)


def main():
    for tool in ["taskset"] * bool(PROXY_CPUS or LOAD_CPUS) + [
            s for s in ("haproxy", "nginx")
            if any(x.startswith(s) for x in SCENARIOS) or (RATE_LIMIT and s in RL_PROXIES)]:
        if not shutil.which(tool):
            sys.exit("overload_bench: %s is not installed" % tool)
    bench = Bench()
    rows = []
    seed = 15
    try:
        bench.start_workers()
        plan = [(s, [(load, load * CAPACITY) for load in LOADS]) for s in SCENARIOS]
        if RATE_LIMIT > 0:
            plan += [(p + "-ratelimit", [(10.0, 10 * RATE_LIMIT)]) for p in RL_PROXIES]
        for scenario, loads in plan:
            port, proc = bench.start_proxy(scenario)
            for load, rate in loads:
                seed += 1
                row = bench.run(scenario, port, proc, rate, seed)
                row["load"] = load
                log(json.dumps(row))
                rows.append(row)
                if proc.poll() is not None:
                    raise RuntimeError("%s exited (%s)" % (scenario, proc.returncode))
            bench.stop(proc)
    finally:
        bench.close()
    header = ("overload_bench: %d workers x %d slots x %g ms = capacity %.0f req/s; "
              "queue %d, queue timeout %d ms; %g s measured after %g s warm-up; timeout %g s; "
              "priorities %s %% high/normal/low; proxy on CPUs %s, generator and workers "
              "on %s" % (WORKERS, SLOTS, SERVICE_MS, CAPACITY, QUEUE_SIZE, QUEUE_TIMEOUT_MS,
                         DURATION, WARMUP, TIMEOUT, "/".join("%g" % m for m in MIX),
                         PROXY_CPUS or "-", LOAD_CPUS or "-"))
    text = header + "\n\n" + fmt_table(rows) + "\n\n" + goals(rows)
    print(text)
    if RESULTS_DIR:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        fields = ["scenario", "load"] + [k for k in rows[0] if k not in ("scenario", "load")]
        with open(os.path.join(RESULTS_DIR, "runs.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(RESULTS_DIR, "report.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        asyncio.run(worker_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "gen":
        a = sys.argv[2:]
        gen_main(int(a[0]), float(a[1]), float(a[2]), float(a[3]), float(a[4]), int(a[5]),
                 int(a[6]))
    elif len(sys.argv) > 1:
        sys.exit(__doc__)
    else:
        main()
