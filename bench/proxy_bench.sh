#!/usr/bin/env bash
# tandem, HAProxy and nginx as reverse proxies over the same tandem-worker
# backends, measured with wrk in one run; see bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/proxy_bench.sh [--check-config] [--help]

Runs tandem, HAProxy and nginx (one worker thread or process each) in front of
the same tandem-worker backends and prints, per connection count, the median
requests/s, p50 and p99 latency and proxy CPU microseconds per request, the
memory per idle keep-alive connection, and the ratios of tandem to the others.
With tandem2 among the proxies (tandem with two loop threads) it also prints
the scaling ratio: tandem2's CPU per request over tandem's.

  --check-config  only write each proxy's config and validate it (haproxy -c,
                  nginx -t, tandem --check or a TOML shape check), then exit
  --help          print this

Environment (defaults in brackets):
  PROXIES       proxies to run, in this order ["tandem haproxy nginx"];
                tandem2 is tandem with two loop threads (same pinning)
  TANDEM        the tandem binary [<repo>/build/tandem]
  WORKER        the tandem-worker binary [<repo>/build/tandem-worker, else
                <repo>/build-worker/tandem-worker]
  CONNS         wrk connection counts ["10 100 1000"]
  URL_PATH      what wrk asks for [/]; /bytes?n=1048576 gives 1 MiB bodies,
                and the report then adds MB/s and CPU per MB
  DURATION      seconds per wrk run [10]
  THREADS       wrk threads [2]
  REPS          repetitions of every (proxy, conns) pair [3]
  WARMUP        seconds of wrk per proxy before measuring [2]
  BACKENDS      tandem-worker processes, one thread each [3]
  IDLE_CONNS    idle keep-alive connections for the memory test, 0 skips it [10000]
  PROXY_CPUS    pin the proxies to these CPUs with taskset, e.g. "0" [no pinning]
  LOAD_CPUS     pin wrk and the backends to these CPUs, e.g. "1" [no pinning]
  RESULTS_DIR   copy runs.csv, memory.jsonl, report.md and machine.txt
                there [bench/results/<date>-proxy_bench-<commit>]; none: don't
  KEEP          1 keeps the temporary directory (configs, logs, wrk output)
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
BENCH=proxy_bench
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
readonly TOOL="$REPO/bench/proxy_bench.py"
PROXIES="${PROXIES:-tandem haproxy nginx}"
CONNS="${CONNS:-10 100 1000}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
WARMUP="${WARMUP:-2}"
BACKENDS="${BACKENDS:-3}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
PROXY_CPUS="${PROXY_CPUS:-}"
LOAD_CPUS="${LOAD_CPUS:-}"
RESULTS_DIR="${RESULTS_DIR:-}"
KEEP="${KEEP:-0}"
TANDEM="${TANDEM:-$REPO/build/tandem}"
if [[ -z "${WORKER:-}" ]]; then
  WORKER="$REPO/build/tandem-worker"
  [[ -x "$WORKER" ]] || WORKER="$REPO/build-worker/tandem-worker"
fi

parse_options "$@"

for proxy in $PROXIES; do
  case "$proxy" in tandem | tandem2 | haproxy | nginx) ;; *) die "unknown proxy $proxy" ;; esac
done
for value in "$DURATION" "$THREADS" "$REPS" "$WARMUP" "$BACKENDS" "$IDLE_CONNS" $CONNS; do
  is_uint "$value" || die "not a count: $value"
done
((BACKENDS >= 1 && BACKENDS <= 16)) || die "BACKENDS must be 1..16"
((REPS >= 1 && REPS <= 100)) || die "REPS must be 1..100"
for c in $CONNS; do ((c >= THREADS)) || die "$c connections are fewer than $THREADS wrk threads"; done

need python3
need curl
need_proxies
((CHECK_ONLY)) || need wrk
[[ -x "$WORKER" ]] || die "no tandem-worker at $WORKER (build it, or set WORKER)"

make_work_dir proxy-bench
chmod 755 "$WORK"  # nginx workers run as nobody
mkdir -p "$WORK/runs" "$WORK/logs"

# 10,000 idle connections need as many descriptors in the proxy and client.
raise_fd_limit
if ((IDLE_CONNS > 0 && FD_LIMIT < IDLE_CONNS + 1000)); then
  die "open-file limit $FD_LIMIT is too low for IDLE_CONNS=$IDLE_CONNS"
fi
# HAProxy stops pooling server connections once 20% of 2 x maxconn descriptors
# are in use (tune.pool-low-fd-ratio), so maxconn must not be small.
HAPROXY_MAXCONN=$((IDLE_CONNS + 2000 > 12000 ? IDLE_CONNS + 2000 : 12000))
pin_cpus

# --- configs ----------------------------------------------------------------
write_nginx_config() {  # PORT
  mkdir -p "$WORK/nginx"
  {
    nginx_config_head "$((FD_LIMIT - 100))" 120s "worker_rlimit_nofile $FD_LIMIT;"
    nginx_servers
    # keepalive_requests lifted here too, so that all three proxies keep their
    # connections to the backends.
    cat <<EOF
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  } >"$WORK/nginx/nginx.conf"
}

write_config() {  # PROXY PORT
  case "$1" in
    haproxy) write_haproxy_bench_config "$2" ;;
    nginx) write_nginx_config "$2" ;;
    tandem) write_tandem_bench_config "$2" "over the benchmark backends" ;;
    tandem2) TANDEM_THREADS=2 TANDEM_NAME=tandem2 write_tandem_bench_config "$2" "over the benchmark backends" ;;
  esac
}

check_config() {  # PROXY
  local out="$WORK/logs/$1-check.log"
  case "$1" in
    haproxy) haproxy -c -f "$WORK/haproxy.cfg" >"$out" 2>&1 ;;
    nginx) nginx -t -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$out" 2>&1 ;;
    tandem | tandem2)
      local addresses=() port
      for port in "${BACKEND_PORTS[@]}"; do addresses+=("127.0.0.1:$port"); done
      python3 "$TOOL" check-tandem "$WORK/$1.toml" "${addresses[@]}" >"$out" 2>&1 || return 1
      if [[ -x "$TANDEM" ]]; then
        "$TANDEM" -c "$WORK/$1.toml" --check >>"$out" 2>&1
      else
        echo "(no tandem binary at $TANDEM: checked the TOML shape only)" >>"$out"
      fi
      ;;
  esac
}

# --- proxies ----------------------------------------------------------------
declare -A PROXY_PORT=() PROXY_PID=()
start_proxy() {  # PROXY
  local proxy="$1" port pid
  port="$(python3 "$TOOL" free-port)"
  write_config "$proxy" "$port"
  launch_proxy "$proxy" "$WORK/logs/$proxy.log"
  pid=$!
  if ! python3 "$TOOL" wait-http "$port" 10; then
    die "$proxy did not answer on 127.0.0.1:$port within 10 s: $(tail -5 "$WORK/logs/$proxy.log")"
  fi
  alive "$pid" || die "$proxy exited: $(tail -5 "$WORK/logs/$proxy.log")"
  PROXY_PORT[$proxy]="$port"
  PROXY_PID[$proxy]="$pid"
  log "$proxy (pid $pid) on 127.0.0.1:$port"
}

# --- measuring ----------------------------------------------------------------
readonly WRK_SCHEME=http
write_wrk_script

RUNS_CSV="$WORK/runs.csv"
MEMORY_JSONL="$WORK/memory.jsonl"
echo "proxy,conns,rep,requests,duration_us,rps,p50_us,p99_us,errors,cpu_ticks,cpu_us_per_req,backend_conns,bytes,error_kinds,load_busy_pct" >"$RUNS_CSV"
: >"$MEMORY_JSONL"

measure() {  # PROXY CONNS REP
  local proxy="$1" conns="$2" rep="$3" conns_before conns_after
  conns_before="$(python3 "$TOOL" backend-conns "${BACKEND_PORTS[@]}")"
  measure_wrk "$proxy" "$conns" "$WORK/runs/$proxy-c$conns-r$rep.txt"
  conns_after="$(python3 "$TOOL" backend-conns "${BACKEND_PORTS[@]}")"
  python3 - "$proxy" "$conns" "$rep" "$WRK_REQUESTS" "$WRK_DURATION_US" "$WRK_P50" "$WRK_P99" \
    "$WRK_ERRORS" "$CPU_TICKS" "$((conns_after - conns_before - BACKENDS))" "$WRK_BYTES" \
    "$WRK_ERROR_KINDS" "$LOAD_BUSY" >>"$RUNS_CSV" <<'EOF'
import os, sys
proxy, conns, rep, requests, duration_us, p50, p99, errors, ticks, backend, nbytes, kinds, \
    load = sys.argv[1:]
cpu_us = int(ticks) * 1e6 / os.sysconf("SC_CLK_TCK")
print(f"{proxy},{conns},{rep},{requests},{duration_us},"
      f"{int(requests) / (int(duration_us) / 1e6):.1f},{p50},{p99},{errors},{ticks},"
      f"{cpu_us / int(requests):.2f},{backend},{nbytes},{kinds},{load}")
EOF
  log "$(tail -1 "$RUNS_CSV")"
}

# --- main -------------------------------------------------------------------
start_backends
log "backends on ports ${BACKEND_PORTS[*]}"

((CHECK_ONLY)) && check_configs_and_exit

for proxy in $PROXIES; do start_proxy "$proxy"; done

warm_up_proxies

# Memory first, while the proxies have seen only the warm-up: what 10,000 idle
# connections add is then not hidden in memory a 1000-connection run left.
# RSS is read 3 s after the last connection opened, for every proxy alike
# (tandem parks a connection after a second without a request).
if ((IDLE_CONNS > 0)); then
  for proxy in $PROXIES; do
    log "memory: $IDLE_CONNS idle keep-alive connections to $proxy"
    run_waited "${LOAD_PIN[@]}" timeout 300 python3 "$TOOL" idle --proxy "$proxy" \
      --port "${PROXY_PORT[$proxy]}" --pid "${PROXY_PID[$proxy]}" \
      --count "$IDLE_CONNS" --settle 3 >>"$MEMORY_JSONL" || die "idle-connection test of $proxy failed"
    log "$(tail -1 "$MEMORY_JSONL")"
    sleep 2  # let the proxy close the 10,000 connections
  done
fi

# Every repetition visits each connection count, and within it each proxy, in
# an order rotated by one per repetition, so no proxy always runs first.
for ((rep = 1; rep <= REPS; rep++)); do
  for conns in $CONNS; do
    for proxy in $(rotated_proxies "$rep"); do
      measure "$proxy" "$conns" "$rep"
      sleep 1
    done
  done
done

python3 "$TOOL" report --runs "$RUNS_CSV" --memory "$MEMORY_JSONL" \
  --proxies "$PROXIES" --conns "$CONNS" | tee "$WORK/report.md"
{
  echo
  echo "Host: $(nproc) CPUs, $(uname -r); wrk -t$THREADS -d${DURATION}s; $BACKENDS backends" \
    "(tandem-worker --threads 1); $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3);" \
    "$(nginx -v 2>&1 | cut -d' ' -f3); pinning: proxies ${PROXY_CPUS:-none}, load ${LOAD_CPUS:-none};" \
    "URL path ${URL_PATH:-/}"
} | tee -a "$WORK/report.md"
copy_results "$RUNS_CSV" "$MEMORY_JSONL" "$WORK/report.md"
