#!/usr/bin/env bash
# Two tandem binaries side by side: proxy_bench.sh with PROXIES=tandem, run for
# each binary in turn, ROUNDS times alternating (A B A B ...), then the median
# requests/s, p99 and CPU per request of each at every connection count, and
# the ratio B / A. For "is this change slower than that commit".
#
#   bench/compare_builds.sh OLD_TANDEM NEW_TANDEM
#   ROUNDS=3 CONNS="10 100 1000" DURATION=8 PROXY_CPUS=0 LOAD_CPUS=1 bench/compare_builds.sh A B
#
# Every other proxy_bench.sh setting passes through (WORKER, BACKENDS, ...).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -eq 2 ]] || { sed -n '2,10p' "$0"; exit 2; }
a=$1 b=$2
rounds=${ROUNDS:-3}
out=$(mktemp -d /tmp/compare-builds.XXXXXX)
export IDLE_CONNS=${IDLE_CONNS:-0} REPS=1 PROXIES=tandem
for ((r = 1; r <= rounds; r++)); do
  for side in a b; do
    bin=$a
    [[ $side == b ]] && bin=$b
    TANDEM=$bin RESULTS_DIR="$out/$side-$r" "$here/proxy_bench.sh" >"$out/$side-$r.log" 2>&1
  done
done
python3 - "$out" "$rounds" <<'PY'
import csv, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rows = {"a": [], "b": []}
for side in rows:
    for r in range(1, rounds + 1):
        with open(out / f"{side}-{r}" / "runs.csv") as f:
            rows[side] += list(csv.DictReader(f))
conns = sorted({int(row["conns"]) for row in rows["a"]})
print("| conns | req/s A | req/s B | B/A | p99 ms A | p99 ms B | CPU µs/req A | CPU µs/req B | B/A |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in conns:
    def med(side, key):
        return statistics.median(float(r[key]) for r in rows[side] if int(r["conns"]) == c)
    ra, rb = med("a", "rps"), med("b", "rps")
    pa, pb = med("a", "p99_us") / 1000, med("b", "p99_us") / 1000
    ca, cb = med("a", "cpu_us_per_req"), med("b", "cpu_us_per_req")
    print(f"| {c} | {ra:,.0f} | {rb:,.0f} | {rb / ra:.2f} | {pa:.2f} | {pb:.2f} | {ca:.1f} | {cb:.1f} | {cb / ca:.2f} |")
print(f"\n(medians of {rounds} alternating rounds; raw runs in {out})")
PY
