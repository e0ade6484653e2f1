#!/usr/bin/env python3
"""Helpers of tls_bench.sh: waiting for and checking an HTTPS listener, summing
`openssl s_time` results, and the report. Standard library only; process CPU
and free ports come from benchlib.py."""

import re
import socket
import ssl
import statistics
import sys
import time

from benchlib import command_parser, read_runs, run_common


def https_get(port, ca_file=None, version=None, server_name="localhost", request=None,
              timeout=2.0):
    """One request on a new TLS connection; returns (status line, TLS version,
    cipher, ALPN). `version` "1.2" or "1.3" pins the protocol."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        context.load_verify_locations(ca_file)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if version:
        pinned = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        context.minimum_version = context.maximum_version = pinned
    context.set_alpn_protocols(["http/1.1"])
    request = request or ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" %
                          server_name).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(request)
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            status = data.split(b"\r\n", 1)[0].decode("latin-1")
            return status, tls.version(), tls.cipher()[0], tls.selected_alpn_protocol()


def wait_https(port, timeout):
    """True once GET / over TLS answers 200, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, *_ = https_get(port, timeout=1.0)
            if status.split(" ")[1:2] == ["200"]:
                return True
        except (OSError, ssl.SSLError, IndexError):
            pass
        time.sleep(0.1)
    return False


def check(args):
    """What a proxy negotiates and answers; non-zero exit when anything is off.

    The request `openssl s_time -www /` sends (HTTP/1.0, no Host) must be
    answered 200 too, or the handshake runs would time errors."""
    ok = True
    for version in ("1.3", "1.2"):
        status, negotiated, cipher, alpn = https_get(args.port, args.ca, version)
        print("%s: %s %s alpn=%s -> %s" % (args.proxy, negotiated, cipher, alpn, status))
        ok &= status.startswith("HTTP/1.1 200") and negotiated == "TLSv" + version
    status, *_ = https_get(args.port, args.ca, request=b"GET / HTTP/1.0\r\n\r\n")
    print("%s: s_time's request (HTTP/1.0, no Host) -> %s" % (args.proxy, status))
    ok &= status.split(" ")[1:2] == ["200"]
    return 0 if ok else 1


def s_time_sum(args):
    """Sums the connections and bytes of several `openssl s_time -new` outputs.

    Prints "CONNECTIONS BYTES_PER_CONNECTION"; s_time's own "connections in
    N real seconds" is rounded to whole seconds, so the caller times the run.
    """
    total = 0
    total_bytes = 0
    for path in args.outputs:
        with open(path) as f:
            text = f.read()
        match = re.search(r"^(\d+) connections in [\d.]+s; [\d.inf]+ connections/user sec, "
                          r"bytes read (\d+)$", text, re.M)
        if not match:
            print("no s_time result in %s: %s" % (path, text[-300:]), file=sys.stderr)
            return 1
        total += int(match.group(1))
        total_bytes += int(match.group(2))
    print(total, total_bytes // total if total else 0)
    return 0


def report(args):
    runs = read_runs(args.runs)
    proxies = args.proxies.split()
    tests = []
    for run in runs:
        if run["test"] not in tests:
            tests.append(run["test"])

    def median(proxy, test, field):
        if field == "per_core":
            cpu = median(proxy, test, "cpu_us_per_op")
            return 1e6 / cpu if cpu else None
        values = [float(r[field]) for r in runs if r["proxy"] == proxy and r["test"] == test
                  and r[field] not in ("", "-")]
        return statistics.median(values) if values else None

    def fmt(value, digits=0):
        if value is None:
            return "-"
        return "{:,.{}f}".format(value, digits)

    def ratio(a, b):
        return "%.2f" % (a / b) if a is not None and b else "-"

    def label(test):
        if test.startswith("hs-"):
            return "full handshakes/s, TLS %s (%s s_time -new clients)" % (
                test[3:], args.clients)
        return "keep-alive requests/s over TLS, wrk -c%s" % test.split("-c")[1]

    base, others = proxies[0], proxies[1:]
    header = "| measure (median of %s runs) | %s | %s |" % (
        args.reps, " | ".join(proxies), " | ".join("%s / %s" % (base, o) for o in others))
    lines = [header, "|" + "---|" * (1 + len(proxies) + len(others))]
    for test in tests:
        rows = [(label(test), "rate", 0, True)]
        if test.startswith("hs-"):
            rows.append(("  proxy CPU µs per handshake", "cpu_us_per_op", 0, False))
            rows.append(("  handshakes/s one busy core would do (10⁶ / CPU µs)", "per_core", 0,
                         True))
        else:
            rows.append(("  p50 / p99 latency, µs", None, 0, False))
            rows.append(("  proxy CPU µs per request", "cpu_us_per_op", 1, False))
        for name, field, digits, _ in rows:
            if field is None:
                cells = ["%s / %s" % (fmt(median(p, test, "p50_us")), fmt(median(p, test, "p99_us")))
                         for p in proxies]
                ratios = ["%s / %s" % (ratio(median(base, test, "p50_us"), median(o, test, "p50_us")),
                                       ratio(median(base, test, "p99_us"), median(o, test, "p99_us")))
                          for o in others]
            else:
                cells = [fmt(median(p, test, field), digits) for p in proxies]
                ratios = [ratio(median(base, test, field), median(o, test, field)) for o in others]
            lines.append("| %s | %s | %s |" % (name, " | ".join(cells), " | ".join(ratios)))
    errors = [r for r in runs if r["errors"] not in ("0", "")]
    lines.append("")
    if errors:
        lines.append("Runs with errors: " + "; ".join(
            "%s %s rep %s: %s (%s)" % (r["proxy"], r["test"], r["rep"], r["errors"], r["detail"])
            for r in errors))
    else:
        lines.append("No run had an error (s_time aborted connection, wrk socket error or non-2xx).")
    sizes = {p: median(p, t, "bytes_per_conn") for p in proxies for t in tests if t.startswith("hs-")}
    if sizes:
        lines.append("Bytes read per s_time connection (the response): " +
                     ", ".join("%s %s" % (p, fmt(v)) for p, v in sizes.items()) + ".")
    print("\n".join(lines))
    return 0


def main():
    parser, sub = command_parser(__doc__, "free-port", "cpu")
    p = sub.add_parser("wait-https")
    p.add_argument("port", type=int)
    p.add_argument("timeout", type=float)
    p = sub.add_parser("check")
    p.add_argument("--proxy", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p = sub.add_parser("s-time-sum")
    p.add_argument("outputs", nargs="+")
    p = sub.add_parser("report")
    p.add_argument("--runs", required=True)
    p.add_argument("--proxies", required=True)
    p.add_argument("--reps", required=True)
    p.add_argument("--clients", required=True)
    args = parser.parse_args()
    if run_common(args):
        return 0
    if args.command == "wait-https":
        return 0 if wait_https(args.port, args.timeout) else 1
    if args.command == "check":
        return check(args)
    if args.command == "s-time-sum":
        return s_time_sum(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
