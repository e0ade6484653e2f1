"""Helpers shared by the benchmark scripts' python helpers: free ports, waiting
for a port, pinning with taskset, the connections tandem-worker backends
accepted, nginx's directories, process CPU and RSS from /proc, how busy the
load generator's CPUs were, the runs CSV, and the subcommands that print them.
Standard library only."""

import argparse
import csv
import json
import os
import socket
import time
import urllib.request


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus, argv):
    """`argv` run on `cpus` (taskset), or as it is when `cpus` is empty."""
    return (["taskset", "-c", cpus] + argv) if cpus else argv


def wait_port(port, timeout=10):
    """Waits until something accepts on 127.0.0.1:`port`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


def backend_connections(ports):
    """Connections the tandem-worker backends accepted so far, summed (from
    their GET /stats, whose own connection is counted too)."""
    total = 0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as r:
            total += json.load(r)["connections_accepted"]
    return total


def tandem_bench_head(port):
    """The start of a bench's tandem config: one loop thread, no access log,
    a 1 s grace period, and listener "bench" on `port` for cluster
    "workers"; a list of lines the caller extends."""
    return ["[global]", "threads = 1", 'access_log = "off"', 'grace_period = "1s"', "",
            "[listeners.bench]", 'listen = "127.0.0.1:%d"' % port,
            'cluster = "workers"', 'idle_timeout = "120s"']


def nginx_dir(parent, name):
    """A directory for one nginx instance's files, readable by its workers
    (they run as nobody)."""
    d = os.path.join(parent, name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    return d


def nginx_temp_paths(d):
    """nginx's temporary directories, all under `d`: the lines of an http
    block (indented four spaces), so nothing is written outside it."""
    return "\n    ".join("%s_temp_path %s/%s;" % (kind, d, where) for kind, where in (
        ("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
        ("uwsgi", "uwsgi"), ("scgi", "scgi")))


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_tree(root):
    """`root` and every descendant, from the parent ids in /proc/*/stat."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(entry)
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_sum(root, measure):
    """measure(pid) summed over the tree, skipping processes that exited."""
    total = 0
    for pid in process_tree(root):
        try:
            total += measure(pid)
        except OSError:
            continue
    return total


def cpu_ticks(root):
    """utime + stime of the tree, in clock ticks."""
    def ticks(pid):
        fields = stat_fields(pid)
        return int(fields[11]) + int(fields[12])  # utime, stime
    return tree_sum(root, ticks)


def rss_kib(root):
    """VmRSS of the tree, in KiB."""
    def rss(pid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0
    return tree_sum(root, rss)


def cpu_list(cpus):
    """The CPU numbers of a taskset list ("1", "0,2-3")."""
    numbers = []
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return numbers


def cpus_busy(cpus):
    """(busy, total) clock ticks of the CPUs of taskset list `cpus` since
    boot, from /proc/stat (idle and iowait are not busy)."""
    wanted = {"cpu%d" % n for n in cpu_list(cpus)}
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                ticks = [int(v) for v in fields[1:9]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_percent(before, after):
    """How busy CPUs were between two cpus_busy() readings, in percent."""
    total = after[1] - before[1]
    return round(100.0 * (after[0] - before[0]) / total, 1) if total > 0 else 0.0


def read_runs(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def command_parser(description, *common):
    """An argument parser with subcommands, the `common` ones ("free-port",
    "cpu PID", "rss PID") already added; run_common runs those."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in common:
        p = sub.add_parser(name)
        if name in ("cpu", "rss"):
            p.add_argument("pid", type=int)
    p = sub.add_parser("cpus-busy")  # CPUS: "busy total" ticks
    p.add_argument("cpus")
    p = sub.add_parser("busy-percent")  # from two "busy total" readings
    p.add_argument("readings", type=int, nargs=4)
    return parser, sub


def run_common(args):
    """Prints the answer of a common subcommand; False for any other."""
    if args.command == "free-port":
        print(free_port())
    elif args.command == "cpu":
        print(cpu_ticks(args.pid))
    elif args.command == "rss":
        print(rss_kib(args.pid))
    elif args.command == "cpus-busy":
        print("%d %d" % cpus_busy(args.cpus))
    elif args.command == "busy-percent":
        r = args.readings
        print(busy_percent((r[0], r[1]), (r[2], r[3])))
    else:
        return False
    return True
