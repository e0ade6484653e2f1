#!/usr/bin/python3
"""HTTP/2 front ends side by side: tandem, HAProxy and nginx (one thread or
process each), driven by h2load (nghttp2-client) in alternating rounds, in
three modes:

  h2c   client h2c (prior knowledge) to the proxy, HTTP/1.1 to tandem-worker
        backends
  h2    client TLS with ALPN h2 to the proxy, HTTP/1.1 to the same backends
  h2h2  client h2c to the proxy and HTTP/2 (h2c, prior knowledge) from the
        proxy to nginx backends that answer GET / as tandem-worker does
        (tandem: cluster protocol = "h2c"; HAProxy: server ... proto h2;
        nginx: grpc_pass, its only HTTP/2 upstream, which carries one request
        per upstream connection at a time)

Prints per mode the median requests/s, p99, proxy CPU microseconds per request
and backend connections opened per run, and tandem's ratios to the others.

Environment (defaults in brackets):
  PROXIES     proxies, in this order ["tandem haproxy nginx"]
  MODES       any of "h2c", "h2", "h2h2" ["h2c h2 h2h2"]
  CONNS       h2load clients [100]        STREAMS  streams per client [10]
  IDLE        idle backend connections kept: tandem max_idle_connections
              (per backend), nginx keepalive (in all); HAProxy keeps all by
              default [CONNS x STREAMS]
  DURATION    seconds per run [10]        REPS     rounds [3]
  WARMUP      seconds of load before the rounds [2]
  BACKENDS    backends: tandem-worker processes (h2c, h2) and nginx h2c
              processes of one worker each (h2h2) [3]
  WORKERS     the h2c and h2 modes' HTTP/1.1 backends: "tandem-worker", or
              "nginx" (one worker process each, answering as tandem-worker
              does; cheaper per request, so the load core holds out longer)
              [tandem-worker]
  PROXY_CPUS  taskset CPUs for the proxies, e.g. "0" [none]
  LOAD_CPUS   taskset CPUs for h2load and the backends, e.g. "1" [none]
  TANDEM, WORKER  binaries [<repo>/build/tandem, <repo>/build/tandem-worker]
  RESULTS_DIR also write runs.csv and report.md there
See bench/README.md.
"""

import csv
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (backend_connections, busy_percent, cpu_ticks, cpus_busy,  # noqa: E402
                      free_port, nginx_dir, nginx_temp_paths, pinned, tandem_bench_head,
                      wait_port)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ.get
PROXIES = ENV("PROXIES", "tandem haproxy nginx").split()
MODES = ENV("MODES", "h2c h2 h2h2").split()
CONNS = int(ENV("CONNS", "100"))
STREAMS = int(ENV("STREAMS", "10"))
# Idle backend connections tandem (per backend) and nginx (in all) keep;
# HAProxy keeps every one by default. With CONNS x STREAMS requests in flight
# and fewer kept, every burst of answers closes connections the next burst
# opens again.
IDLE = int(ENV("IDLE", str(CONNS * STREAMS)))
DURATION = int(ENV("DURATION", "10"))
REPS = int(ENV("REPS", "3"))
WARMUP = int(ENV("WARMUP", "2"))
BACKENDS = int(ENV("BACKENDS", "3"))
WORKERS = ENV("WORKERS", "tandem-worker")
PROXY_CPUS = ENV("PROXY_CPUS", "")
LOAD_CPUS = ENV("LOAD_CPUS", "")
TANDEM = ENV("TANDEM", os.path.join(REPO, "build", "tandem"))
WORKER = ENV("WORKER", os.path.join(REPO, "build", "tandem-worker"))
RESULTS_DIR = ENV("RESULTS_DIR", "")
ALL_MODES = ("h2c", "h2", "h2h2")


def nginx_prologue(d):
    """The start of every nginx config here, up to inside `http {`: one
    process, keep-alive without a request limit, files under `d`."""
    return f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    {nginx_temp_paths(d)}
"""
NGINX_H2H2_NOTE = ("h2h2: nginx forwards with grpc_pass (ngx_http_grpc_module, its only HTTP/2 "
                   "upstream): each request takes an upstream connection of its own until it "
                   "is answered, kept alive afterwards (keepalive IDLE), so its backend "
                   "connections column counts the connections that churned")


def log(message):
    print("h2_bench: " + message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="h2-bench-")
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody
        self.procs = []
        self.backends = []      # tandem-worker or nginx ports (HTTP/1.1)
        self.stats = []         # nginx's stub_status ports for them
        self.h2_backends = []   # nginx h2c ports
        self.h2_stats = []      # their stub_status ports (HTTP/1.1)
        self.backend_procs = []
        self.h2_backend_procs = []
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(os.path.join(self.dir, "combined.pem"), "w") as out:
            out.write(open(self.cert).read() + open(self.key).read())

    def start(self, argv, name, cpus):
        logf = open(os.path.join(self.dir, name + ".log"), "w")
        proc = subprocess.Popen(pinned(cpus, argv), stdout=logf, stderr=subprocess.STDOUT,
                                cwd=self.dir)
        self.procs.append(proc)
        return proc

    def backend_ticks(self, mode):
        """CPU ticks the mode's backend processes used so far."""
        procs = self.h2_backend_procs if mode == "h2h2" else self.backend_procs
        return sum(cpu_ticks(p.pid) for p in procs)

    def start_backends(self):
        if WORKERS == "nginx":
            self.backends, self.stats, self.backend_procs = self.start_nginx_backends(False)
            return
        for i in range(BACKENDS):
            port = free_port()
            self.backend_procs.append(
                self.start([WORKER, "--listen", "127.0.0.1:%d" % port, "--name", "w%d" % i],
                           "worker%d" % i, LOAD_CPUS))
            wait_port(port)
            self.backends.append(port)

    def start_h2_backends(self):
        self.h2_backends, self.h2_stats, self.h2_backend_procs = self.start_nginx_backends(True)

    def start_nginx_backends(self, http2):
        """nginx processes of one worker each, speaking h2c (prior knowledge)
        when `http2`, else HTTP/1.1, and answering GET / as tandem-worker does
        (same status, body, X-Worker and Content-Type; nginx adds Server and
        Date). keepalive_requests is lifted, else nginx ends a connection after
        1000 requests; a second, HTTP/1.1 port serves stub_status for the
        accepted-connection count. Returns the ports, the stats ports and the
        processes."""
        ports, stats_ports, procs = [], [], []
        for i in range(BACKENDS):
            port, stats = free_port(), free_port()
            name = "backend-%s-%d" % ("h2" if http2 else "h1", i)
            d = nginx_dir(self.dir, name)
            text = nginx_prologue(d) + f"""    server {{
        listen 127.0.0.1:{port}{" http2" if http2 else ""};
        default_type "text/plain; charset=utf-8";
        location / {{
            add_header X-Worker w{i};
            return 200 "hello from w{i}\\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{stats};
        location = /stats {{ stub_status; }}
    }}
}}
"""
            path = os.path.join(d, "nginx.conf")
            open(path, "w").write(text)
            procs.append(self.start(["nginx", "-p", d + "/", "-c", path, "-e",
                                     os.path.join(d, "error.log")], name, LOAD_CPUS))
            wait_port(port)
            wait_port(stats)
            ports.append(port)
            stats_ports.append(stats)
        return ports, stats_ports, procs

    def backend_connections(self, mode):
        """Connections the mode's backends accepted so far, the one each
        backend accepted for this reading included."""
        if mode != "h2h2" and not self.stats:
            return backend_connections(self.backends)
        total = 0
        for port in (self.h2_stats if mode == "h2h2" else self.stats):
            with urllib.request.urlopen("http://127.0.0.1:%d/stats" % port, timeout=2) as r:
                # "Active connections: N\nserver accepts handled requests\n A H R\n..."
                total += int(r.read().decode().split("\n")[2].split()[0])
        return total

    # ---- configs ---------------------------------------------------------

    def tandem(self, port, mode):
        lines = tandem_bench_head(port)
        if mode == "h2":
            lines += ['tls_cert = "%s"' % self.cert, 'tls_key = "%s"' % self.key]
        lines += ["", "[clusters.workers]", 'algorithm = "round-robin"',
                  "max_idle_connections = %d" % IDLE]
        if mode == "h2h2":
            lines += ['protocol = "h2c"']
        lines += ["[clusters.workers.health]", 'kind = "none"']
        for b in self.backends_for(mode):
            lines += ["[[clusters.workers.backends]]", 'address = "127.0.0.1:%d"' % b]
        path = os.path.join(self.dir, "tandem-%d.toml" % port)
        open(path, "w").write("\n".join(lines) + "\n")
        return [TANDEM, "-c", path]

    def backends_for(self, mode):
        return self.h2_backends if mode == "h2h2" else self.backends

    def haproxy(self, port, mode):
        bind = ("ssl crt %s alpn h2,http/1.1" % os.path.join(self.dir, "combined.pem")
                if mode == "h2" else "proto h2")
        proto = " proto h2" if mode == "h2h2" else ""
        servers = "\n".join("    server w%d 127.0.0.1:%d%s" % (i, b, proto)
                            for i, b in enumerate(self.backends_for(mode)))
        text = f"""global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 1s
    timeout client 120s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 120s
frontend bench
    bind 127.0.0.1:{port} {bind}
    default_backend workers
backend workers
    balance roundrobin
{servers}
"""
        path = os.path.join(self.dir, "haproxy-%d.cfg" % port)
        open(path, "w").write(text)
        return ["haproxy", "-f", path]

    def nginx(self, port, mode):
        d = nginx_dir(self.dir, "nginx-%d" % port)
        servers = "\n".join("        server 127.0.0.1:%d;" % b for b in self.backends_for(mode))
        listen = (f"listen 127.0.0.1:{port} ssl http2;\n        ssl_certificate {self.cert};"
                  f"\n        ssl_certificate_key {self.key};" if mode == "h2"
                  else f"listen 127.0.0.1:{port} http2;")
        if mode == "h2h2":
            forward = "grpc_pass grpc://workers;"
        else:
            forward = """proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
        text = nginx_prologue(d) + f"""    upstream workers {{
{servers}
        keepalive {IDLE};
    }}
    server {{
        {listen}
        location / {{
            {forward}
        }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        open(path, "w").write(text)
        return ["nginx", "-p", d + "/", "-c", path, "-e", os.path.join(d, "error.log")]

    def start_proxy(self, proxy, mode):
        port = free_port()
        argv = getattr(self, proxy)(port, mode)
        name = "%s-%s" % (proxy, mode)
        proc = self.start(argv, name, PROXY_CPUS)
        try:
            wait_port(port)
        except RuntimeError:
            raise RuntimeError("%s did not start: %s" % (
                name, open(os.path.join(self.dir, name + ".log")).read()[-2000:])) from None
        return port, proc

    # ---- one run -----------------------------------------------------------

    def h2load(self, port, mode, duration, log_file=None):
        url = ("https" if mode == "h2" else "http") + "://127.0.0.1:%d/" % port
        argv = ["h2load", "-c", str(CONNS), "-m", str(STREAMS), "-t", "1",
                "-D", str(duration), url]
        if log_file:
            argv += ["--log-file", log_file]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(pinned(LOAD_CPUS, argv), capture_output=True, text=True,
                             timeout=duration + 60).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.client_cpu_s = (after.ru_utime + after.ru_stime
                             - before.ru_utime - before.ru_stime)
        done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored", out)
        if not done:
            raise RuntimeError("h2load said:\n" + out)
        return int(done.group(3)), int(done.group(4)) + int(done.group(5)), out

    def run(self, proxy, mode, port, proc, rep):
        log_file = os.path.join(self.dir, "log-%s-%s-%d.tsv" % (proxy, mode, rep))
        # The backends are shared: connections the previous run left in their
        # accept queues (nginx's grpc_pass opens thousands) must not count here.
        time.sleep(1)
        conns_before = self.backend_connections(mode)
        before = cpu_ticks(proc.pid)
        backends_before = self.backend_ticks(mode)
        load_before = cpus_busy(LOAD_CPUS) if LOAD_CPUS else None
        start = time.monotonic()
        ok, failed, _ = self.h2load(port, mode, DURATION, log_file)
        elapsed = time.monotonic() - start
        ticks = cpu_ticks(proc.pid) - before
        backend_us = (self.backend_ticks(mode) - backends_before) * 1e6 / os.sysconf("SC_CLK_TCK")
        # Near 100 %, h2load and the backends set the pace, not the proxy.
        load_busy = busy_percent(load_before, cpus_busy(LOAD_CPUS)) if LOAD_CPUS else None
        # less the connections of the second reading
        conns = self.backend_connections(mode) - conns_before - BACKENDS
        durations = sorted(int(line.split("\t")[2]) for line in open(log_file)
                           if line.count("\t") >= 2)
        os.unlink(log_file)
        p99 = durations[int(len(durations) * 0.99) - 1] if durations else 0
        cpu_us = ticks * 1e6 / os.sysconf("SC_CLK_TCK")
        return {"proxy": proxy, "mode": mode, "rep": rep, "requests": ok, "failed": failed,
                "rps": round(ok / DURATION, 1), "p99_us": p99,
                "cpu_us_per_req": round(cpu_us / max(ok, 1), 2),
                "client_cpu_us_per_req": round(self.client_cpu_s * 1e6 / max(ok, 1), 2),
                "backend_cpu_us_per_req": round(backend_us / max(ok, 1), 2),
                "backend_conns": conns, "elapsed_s": round(elapsed, 2),
                "load_busy_pct": load_busy}

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def report(rows):
    load = LOAD_CPUS != ""
    lines = ["| mode | proxy | req/s | p99 ms | CPU µs/req | h2load CPU µs/req "
             "| backends CPU µs/req | backend conns opened | failed |"
             + (" load CPU busy % |" if load else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if load else "")]
    med = {}
    for mode in MODES:
        for proxy in PROXIES:
            runs = [r for r in rows if r["proxy"] == proxy and r["mode"] == mode]
            if not runs:
                continue
            m = {k: statistics.median(r[k] for r in runs)
                 for k in ("rps", "p99_us", "cpu_us_per_req", "client_cpu_us_per_req",
                           "backend_cpu_us_per_req", "backend_conns")}
            m["failed"] = sum(r["failed"] for r in runs)
            med[(mode, proxy)] = m
            busy = (" %.1f |" % statistics.median(r["load_busy_pct"] for r in runs)
                    if load else "")
            lines.append(f"| {mode} | {proxy} | {m['rps']:,.0f} | {m['p99_us'] / 1000:.2f} | "
                         f"{m['cpu_us_per_req']:.1f} | {m['client_cpu_us_per_req']:.1f} | "
                         f"{m['backend_cpu_us_per_req']:.1f} | {m['backend_conns']:,.0f} | "
                         f"{m['failed']} |" + busy)
    lines.append("")
    for mode in MODES:
        t = med.get((mode, "tandem"))
        for other in PROXIES:
            o = med.get((mode, other))
            if t and o and other != "tandem":
                lines.append(f"{mode}: tandem / {other}: req/s {t['rps'] / o['rps']:.2f}, "
                             f"p99 {t['p99_us'] / max(o['p99_us'], 1):.2f}, "
                             f"CPU/req {t['cpu_us_per_req'] / o['cpu_us_per_req']:.2f}")
    if "h2h2" in MODES and "nginx" in PROXIES:
        lines += ["", NGINX_H2H2_NOTE]
    return "\n".join(lines)


def main():
    unknown = [m for m in MODES if m not in ALL_MODES]
    if unknown:
        sys.exit("h2_bench: unknown mode %s (modes: %s)" % (" ".join(unknown), " ".join(ALL_MODES)))
    needed = set(p for p in PROXIES if p != "tandem") | {"h2load", "taskset"}
    if WORKERS not in ("tandem-worker", "nginx"):
        sys.exit("h2_bench: WORKERS is tandem-worker or nginx, not %s" % WORKERS)
    if "h2h2" in MODES or WORKERS == "nginx":
        needed.add("nginx")  # the h2c backends, or the HTTP/1.1 ones
    for tool in sorted(needed):
        if not shutil.which(tool):
            sys.exit("h2_bench: %s is not installed" % tool)
    if "h2h2" in MODES and "nginx" in PROXIES:
        log(NGINX_H2H2_NOTE)
    bench = Bench()
    rows = []
    try:
        if set(MODES) & {"h2c", "h2"}:
            bench.start_backends()
        if "h2h2" in MODES:
            bench.start_h2_backends()
        running = {}
        for proxy in PROXIES:
            for mode in MODES:
                running[(proxy, mode)] = bench.start_proxy(proxy, mode)
                port, _ = running[(proxy, mode)]
                bench.h2load(port, mode, WARMUP)
        for rep in range(REPS):
            for mode in MODES:
                for proxy in PROXIES:
                    port, proc = running[(proxy, mode)]
                    row = bench.run(proxy, mode, port, proc, rep)
                    log(str(row))
                    rows.append(row)
    finally:
        bench.close()
    text = report(rows)
    header = ("h2load -c%d -m%d -D%d, %d rounds, proxies pinned to %s, load to %s, "
              "HTTP/1.1 workers: %s" % (CONNS, STREAMS, DURATION, REPS, PROXY_CPUS or "-",
                                       LOAD_CPUS or "-", WORKERS))
    print(header + "\n\n" + text)
    if RESULTS_DIR:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, "runs.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
        open(os.path.join(RESULTS_DIR, "report.md"), "w").write(header + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
