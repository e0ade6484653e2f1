#!/usr/bin/env python3
"""Helpers of proxy_bench.sh: the idle keep-alive client, config checks and
the report; process CPU and RSS and free ports come from benchlib.py.
Standard library only."""

import asyncio
import json
import os
import resource
import ssl
import statistics
import sys
import time
import tomllib
import urllib.request

from benchlib import backend_connections, command_parser, read_runs, rss_kib, run_common


def wait_http(port, timeout):
    """True once GET / on the port answers 200, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


async def open_idle(port, count, concurrency, timeout, ssl_context=None):
    """Opens `count` connections, each after one answered request (over TLS
    when `ssl_context` is given)."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    gate = asyncio.Semaphore(concurrency)
    opened, failures = [], []

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ssl_context,
                                            server_hostname="localhost" if ssl_context else None),
                    timeout)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await asyncio.wait_for(reader.readexactly(length), timeout)
                if status != 200:
                    raise ValueError(f"status {status}")
                opened.append((reader, writer))
            except (OSError, ValueError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                failures.append(repr(e))

    await asyncio.gather(*(one() for _ in range(count)))
    return opened, failures


def idle_memory(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.count + 100:
        sys.exit(f"open-file limit {hard} is too low for {args.count} connections")

    async def run():
        before = rss_kib(args.pid)
        started = time.monotonic()
        ssl_context = None
        if args.tls_ca:
            ssl_context = ssl.create_default_context(cafile=args.tls_ca)
        opened, failures = await open_idle(args.port, args.count, args.concurrency,
                                           args.timeout, ssl_context)
        open_seconds = time.monotonic() - started
        await asyncio.sleep(args.settle)
        after = rss_kib(args.pid)
        still_open = sum(1 for reader, _ in opened if not reader.at_eof())
        for _, writer in opened:
            writer.close()
        return {
            "proxy": args.proxy,
            "connections": len(opened),
            "still_open": still_open,
            "failed": len(failures),
            "first_failure": failures[0] if failures else "",
            "open_seconds": round(open_seconds, 2),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_connection": round((after - before) * 1024 / len(opened))
            if opened else None,
        }

    print(json.dumps(asyncio.run(run())))


def check_tandem_config(path, backends):
    """The generated file parses as TOML and has the contract's shape."""
    with open(path, "rb") as f:
        config = tomllib.load(f)
    known = {
        "global": {"threads", "grace_period", "drain_delay", "access_log"},
        "listener": {"listen", "cluster", "client_header_timeout", "idle_timeout",
                     "max_header_size", "max_body_size"},
        "cluster": {"policy", "algorithm", "min_active", "retries", "connect_timeout",
                    "try_timeout", "request_timeout", "idle_timeout",
                    "max_idle_connections", "panic_threshold", "slow_start",
                    "health", "backends"},
        "health": {"kind", "path", "interval", "timeout", "rise", "fall"},
        "backend": {"address", "weight", "role", "standby"},
    }
    errors = []

    def keys(kind, table, where):
        errors.extend(f"{where}.{k}: not a contract key" for k in table
                      if k not in known[kind])

    keys("global", config.get("global", {}), "global")
    if config["global"].get("threads") not in (1, 2) or config["global"].get("access_log") != "off":
        errors.append("global: threads must be 1 (2 for tandem2) and access_log \"off\"")
    clusters = config.get("clusters", {})
    for name, listener in config.get("listeners", {}).items():
        keys("listener", listener, f"listeners.{name}")
        if listener.get("cluster") not in clusters:
            errors.append(f"listeners.{name}.cluster: no such cluster")
        if not str(listener.get("listen", "")).startswith("127.0.0.1:"):
            errors.append(f"listeners.{name}.listen: not on 127.0.0.1")
    for name, cluster in clusters.items():
        keys("cluster", cluster, f"clusters.{name}")
        keys("health", cluster.get("health", {}), f"clusters.{name}.health")
        addresses = []
        for i, backend in enumerate(cluster.get("backends", [])):
            keys("backend", backend, f"clusters.{name}.backends[{i}]")
            addresses.append(backend.get("address"))
        if addresses != backends:
            errors.append(f"clusters.{name}.backends: {addresses} != {backends}")
    if not config.get("listeners") or not clusters:
        errors.append("a listener and a cluster are required")
    for error in errors:
        print(f"{path}: {error}", file=sys.stderr)
    return not errors


def report(args):
    runs = read_runs(args.runs)
    memory = []
    if args.memory and os.path.exists(args.memory):
        with open(args.memory) as f:
            memory = [json.loads(line) for line in f if line.strip()]
    proxies = args.proxies.split()
    conns = [int(c) for c in args.conns.split()]

    def median(proxy, c, field):
        values = [float(r[field]) for r in runs
                  if r["proxy"] == proxy and int(r["conns"]) == c and r.get(field)]
        return statistics.median(values) if values else None

    def total(proxy, c, field):
        return sum(int(r[field]) for r in runs
                   if r["proxy"] == proxy and int(r["conns"]) == c)

    def fmt(value, digits=0):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    for r in runs:
        # Bodies: MB/s and proxy CPU per MB (wrk counts every byte it read).
        nbytes = int(r.get("bytes") or 0)
        seconds = int(r["duration_us"]) / 1e6
        r["mb_s"] = f"{nbytes / 1e6 / seconds:.2f}" if nbytes else ""
        cpu_us = float(r["cpu_us_per_req"]) * int(r["requests"])
        r["cpu_us_per_mb"] = f"{cpu_us / (nbytes / 1e6):.1f}" if nbytes else ""
    sizes = [int(r.get("bytes") or 0) / int(r["requests"]) for r in runs]
    large = bool(sizes) and statistics.median(sizes) >= 64 * 1024

    out = []
    reps = max((int(r["rep"]) for r in runs), default=0)
    out.append(f"Medians of {reps} run(s) each; proxies alternate run by run.\n")
    # How busy the load generator's CPUs were (pinned runs): near 100 %,
    # wrk and the backends set the pace and a faster proxy cannot show it.
    load = any(r.get("load_busy_pct") for r in runs)
    extra_head = (" MB/s | proxy CPU µs/MB |" if large else "") + \
        (" load CPU busy % |" if load else "")
    out.append("| conns | proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req "
               "| backend conns opened | errors |" + extra_head)
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if large else "")
               + ("---:|" if load else ""))
    for c in conns:
        for proxy in proxies:
            p50, p99 = median(proxy, c, "p50_us"), median(proxy, c, "p99_us")
            extra = (f" {fmt(median(proxy, c, 'mb_s'), 1)} "
                     f"| {fmt(median(proxy, c, 'cpu_us_per_mb'), 0)} |") if large else ""
            if load:
                extra += f" {fmt(median(proxy, c, 'load_busy_pct'), 1)} |"
            out.append(
                f"| {c} | {proxy} | {fmt(median(proxy, c, 'rps'))} "
                f"| {fmt(p50 and p50 / 1000, 2)} | {fmt(p99 and p99 / 1000, 2)} "
                f"| {fmt(median(proxy, c, 'cpu_us_per_req'), 1)} "
                f"| {fmt(median(proxy, c, 'backend_conns'))} "
                f"| {total(proxy, c, 'errors')} |" + extra)
    if memory:
        out.append("")
        out.append("| proxy | idle keep-alive conns | RSS before KiB | RSS after KiB "
                   "| bytes per idle conn |")
        out.append("|---|---:|---:|---:|---:|")
        for m in memory:
            note = "" if m["still_open"] == m["connections"] else \
                f" ({m['still_open']} still open)"
            out.append(f"| {m['proxy']} | {m['connections']}{note} "
                       f"| {m['rss_before_kib']:,} | {m['rss_after_kib']:,} "
                       f"| {fmt(m['bytes_per_connection'])} |")

    by_proxy = {m["proxy"]: m for m in memory}
    base = "tandem" if "tandem" in proxies else None
    others = [p for p in proxies if p not in (base, "tandem2")] if base else proxies[1:]
    base = base or (proxies[0] if proxies else None)
    if base and others:
        out.append("")
        out.append(f"Ratios {base}/other, same run (req/s: higher is better; "
                   "p99, CPU and memory: lower is better).\n")
        out.append("| conns | ratio | req/s | p99 | CPU/req |" + (" MB/s | CPU/MB |" if large else ""))
        out.append("|---:|---|---:|---:|---:|" + ("---:|---:|" if large else ""))

        def ratio(a, b):
            return "n/a" if a is None or not b else f"{a / b:.2f}"

        for c in conns:
            for other in others:
                out.append(
                    f"| {c} | {base}/{other} "
                    f"| {ratio(median(base, c, 'rps'), median(other, c, 'rps'))} "
                    f"| {ratio(median(base, c, 'p99_us'), median(other, c, 'p99_us'))} "
                    f"| {ratio(median(base, c, 'cpu_us_per_req'), median(other, c, 'cpu_us_per_req'))} |"
                    + (f" {ratio(median(base, c, 'mb_s'), median(other, c, 'mb_s'))} "
                       f"| {ratio(median(base, c, 'cpu_us_per_mb'), median(other, c, 'cpu_us_per_mb'))} |"
                       if large else ""))
        for other in others:
            if base in by_proxy and other in by_proxy:
                a = by_proxy[base]["bytes_per_connection"]
                b = by_proxy[other]["bytes_per_connection"]
                out.append(f"\nMemory per idle connection {base}/{other}: {ratio(a, b)}")
        if base == "tandem" and "haproxy" in proxies and 100 in conns:
            rps = ratio(median("tandem", 100, "rps"), median("haproxy", 100, "rps"))
            p99 = ratio(median("tandem", 100, "p99_us"), median("haproxy", 100, "p99_us"))
            ok = rps != "n/a" and p99 != "n/a" and float(rps) >= 0.8 and float(p99) <= 1.5
            out.append(f"\nBar at 100 connections (req/s >= 0.8 x HAProxy, p99 <= 1.5 x "
                       f"HAProxy): req/s {rps}, p99 {p99}: {'PASS' if ok else 'FAIL'}")
    if "tandem" in proxies and "tandem2" in proxies:
        out.append("\nScaling: CPU per request with two loop threads over one "
                   "(goal: at most 1.10).\n")
        out.append("| conns | tandem2/tandem CPU/req | req/s |")
        out.append("|---:|---:|---:|")
        for c in conns:
            a, b = median("tandem2", c, "cpu_us_per_req"), median("tandem", c, "cpu_us_per_req")
            ra, rb = median("tandem2", c, "rps"), median("tandem", c, "rps")
            out.append(f"| {c} | {'n/a' if a is None or not b else f'{a / b:.2f}'} "
                       f"| {'n/a' if ra is None or not rb else f'{ra / rb:.2f}'} |")
    print("\n".join(out))


def main():
    parser, sub = command_parser(__doc__, "free-port", "cpu", "rss")
    p = sub.add_parser("wait-http")
    p.add_argument("port", type=int)
    p.add_argument("timeout", type=float)
    p = sub.add_parser("backend-conns")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("idle")
    p.add_argument("--proxy", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--settle", type=float, default=1)
    p.add_argument("--tls-ca", help="connect over TLS, trusting this CA file")
    p = sub.add_parser("check-tandem")
    p.add_argument("path")
    p.add_argument("backends", nargs="+")
    p = sub.add_parser("report")
    p.add_argument("--runs", required=True)
    p.add_argument("--memory")
    p.add_argument("--proxies", required=True)
    p.add_argument("--conns", required=True)
    args = parser.parse_args()

    if run_common(args):
        return
    if args.command == "wait-http":
        sys.exit(0 if wait_http(args.port, args.timeout) else 1)
    elif args.command == "backend-conns":
        print(backend_connections(args.ports))
    elif args.command == "idle":
        idle_memory(args)
    elif args.command == "check-tandem":
        sys.exit(0 if check_tandem_config(args.path, args.backends) else 1)
    elif args.command == "report":
        report(args)


if __name__ == "__main__":
    main()
