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

  --check-config  only write each proxy's config and validate it (haproxy -c,
                  nginx -t, tandem --check or a TOML shape check), then exit
  --help          print this

Environment (defaults in brackets):
  PROXIES       proxies to run, in this order ["tandem haproxy nginx"]
  TANDEM        the tandem binary [<repo>/build/tandem]
  WORKER        the tandem-worker binary [<repo>/build/tandem-worker, else
                <repo>/build-worker/tandem-worker]
  CONNS         wrk connection counts ["10 100 1000"]
  DURATION      seconds per wrk run [10]
  THREADS       wrk threads [2]
  REPS          repetitions of every (proxy, conns) pair [3]
  WARMUP        seconds of wrk per proxy before measuring [2]
  BACKENDS      tandem-worker processes, one thread each [3]
  IDLE_CONNS    idle keep-alive connections for the memory test, 0 skips it [10000]
  PROXY_CPUS    pin the proxies to these CPUs with taskset, e.g. "0" [no pinning]
  LOAD_CPUS     pin wrk and the backends to these CPUs, e.g. "1" [no pinning]
  RESULTS_DIR   also copy runs.csv, memory.jsonl and report.md there
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

CHECK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --check-config) CHECK_ONLY=1 ;;
    --help | -h) usage; exit 0 ;;
    *) echo "proxy_bench: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done


for proxy in $PROXIES; do
  case "$proxy" in tandem | haproxy | nginx) ;; *) die "unknown proxy $proxy" ;; esac
done
for value in "$DURATION" "$THREADS" "$REPS" "$WARMUP" "$BACKENDS" "$IDLE_CONNS" $CONNS; do
  is_uint "$value" || die "not a count: $value"
done
((BACKENDS >= 1 && BACKENDS <= 16)) || die "BACKENDS must be 1..16"
((REPS >= 1 && REPS <= 100)) || die "REPS must be 1..100"
for c in $CONNS; do ((c >= THREADS)) || die "$c connections are fewer than $THREADS wrk threads"; done

need python3
need curl
[[ " $PROXIES " == *" haproxy "* ]] && need haproxy
[[ " $PROXIES " == *" nginx "* ]] && need nginx
((CHECK_ONLY)) || need wrk
[[ -x "$WORKER" ]] || die "no tandem-worker at $WORKER (build it, or set WORKER)"

# Processes we started, stopped in reverse order by PID on any exit; FOREGROUND
# is the wrk or client run being waited for.
declare -a STARTED_PIDS=()
FOREGROUND=""
WORK=""
cleanup() {
  local status=$?
  local i pid
  if [[ -n "$FOREGROUND" ]]; then STARTED_PIDS+=("$FOREGROUND"); fi
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${STARTED_PIDS[i]}"
    kill -TERM "$pid" 2>/dev/null || continue
  done
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${STARTED_PIDS[i]}"
    # Up to 5 s for each to go, then SIGKILL.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" ]]; then
    # A failed run keeps its logs; an interrupted one (130, 143) does not.
    if [[ "$KEEP" == 1 || ($status -ne 0 && $status -ne 130 && $status -ne 143) ]]; then
      echo "proxy_bench: kept $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/proxy-bench.XXXXXX)"
chmod 755 "$WORK"  # nginx workers run as nobody
mkdir -p "$WORK/runs" "$WORK/logs"

# 10,000 idle connections need as many descriptors in the proxy and client.
hard_limit="$(ulimit -Hn)"
if [[ "$hard_limit" == unlimited ]]; then ulimit -Sn 65536; else ulimit -Sn "$hard_limit"; fi
FD_LIMIT="$(ulimit -Sn)"
if ((IDLE_CONNS > 0 && FD_LIMIT < IDLE_CONNS + 1000)); then
  die "open-file limit $FD_LIMIT is too low for IDLE_CONNS=$IDLE_CONNS"
fi
# HAProxy counts two descriptors per connection and refuses to start when
# 2 x maxconn exceeds the limit, unless told "no strict-limits"; then it warns.
# It also stops pooling server connections once 20% of 2 x maxconn descriptors
# are in use (tune.pool-low-fd-ratio), so maxconn must not be small either.
HAPROXY_MAXCONN=$((IDLE_CONNS + 2000 > 12000 ? IDLE_CONNS + 2000 : 12000))

# Command prefixes that pin to PROXY_CPUS / LOAD_CPUS. taskset execs the
# command, so $! after "${PIN[@]}" cmd & is the command's own PID.
declare -a PROXY_PIN=() LOAD_PIN=()
if [[ -n "$PROXY_CPUS" ]]; then need taskset; PROXY_PIN=(taskset -c "$PROXY_CPUS"); fi
if [[ -n "$LOAD_CPUS" ]]; then need taskset; LOAD_PIN=(taskset -c "$LOAD_CPUS"); fi

# Runs a command in the background and waits for it, so that a signal is
# handled at once (bash defers traps until a foreground command ends) and the
# cleanup can stop it.
run_waited() {
  local status=0
  "$@" &
  FOREGROUND=$!
  wait "$FOREGROUND" || status=$?
  FOREGROUND=""
  return "$status"
}

# Waits up to 5 s for a file to appear.

# --- backends ---------------------------------------------------------------
declare -a BACKEND_PORTS=()
start_backends() {
  local i pid
  for ((i = 1; i <= BACKENDS; i++)); do
    "${LOAD_PIN[@]}" "$WORKER" --listen 127.0.0.1:0 --name "b$i" --threads 1 \
      --port-file "$WORK/b$i.port" >"$WORK/logs/b$i.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_file "$WORK/b$i.port" || die "backend b$i did not start: $(tail -3 "$WORK/logs/b$i.log")"
    BACKEND_PORTS+=("$(cat "$WORK/b$i.port")")
  done
  log "backends on ports ${BACKEND_PORTS[*]}"
}

# --- configs ----------------------------------------------------------------
write_haproxy_config() {  # PORT
  local i
  {
    cat <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    ulimit-n $FD_LIMIT
    no strict-limits

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    maxconn $HAPROXY_MAXCONN
    timeout connect 1s
    timeout client 120s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 120s

frontend bench
    bind 127.0.0.1:$1
    default_backend workers

backend workers
    balance roundrobin
EOF
    for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
      echo "    server b$((i + 1)) 127.0.0.1:${BACKEND_PORTS[i]}"
    done
  } >"$WORK/haproxy.cfg"
}

write_nginx_config() {  # PORT
  local i dir="$WORK/nginx"
  mkdir -p "$dir"
  {
    cat <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $FD_LIMIT;

events {
    worker_connections $((FD_LIMIT - 100));
}

http {
    access_log off;
    keepalive_timeout 120s;
    # nginx alone closes a keep-alive connection after 1000 requests by
    # default; lifted on both sides so all three proxies keep their connections.
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    upstream workers {
EOF
    for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
      echo "        server 127.0.0.1:${BACKEND_PORTS[i]};"
    done
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
  } >"$dir/nginx.conf"
}

write_tandem_config() {  # PORT
  local i
  {
    cat <<EOF
# proxy_bench.sh: tandem with one event-loop thread over the benchmark backends.
[global]
threads = 1
access_log = "off"
grace_period = "1s"

[listeners.bench]
listen = "127.0.0.1:$1"
cluster = "workers"
idle_timeout = "120s"

[clusters.workers]
policy = "all-active"
algorithm = "round-robin"
max_idle_connections = 64

# As in the HAProxy and nginx configs: no active health checks.
[clusters.workers.health]
kind = "none"
EOF
    for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
      printf '\n[[clusters.workers.backends]]\naddress = "127.0.0.1:%s"\n' "${BACKEND_PORTS[i]}"
    done
  } >"$WORK/tandem.toml"
}

write_config() {  # PROXY PORT
  case "$1" in
    haproxy) write_haproxy_config "$2" ;;
    nginx) write_nginx_config "$2" ;;
    tandem) write_tandem_config "$2" ;;
  esac
}

check_config() {  # PROXY
  local out="$WORK/logs/$1-check.log"
  case "$1" in
    haproxy) haproxy -c -f "$WORK/haproxy.cfg" >"$out" 2>&1 ;;
    nginx) nginx -t -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$out" 2>&1 ;;
    tandem)
      local addresses=() port
      for port in "${BACKEND_PORTS[@]}"; do addresses+=("127.0.0.1:$port"); done
      python3 "$TOOL" check-tandem "$WORK/tandem.toml" "${addresses[@]}" >"$out" 2>&1 || return 1
      if [[ -x "$TANDEM" ]]; then
        "$TANDEM" -c "$WORK/tandem.toml" --check >>"$out" 2>&1
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
  check_config "$proxy" || die "$proxy config rejected: $(tail -5 "$WORK/logs/$proxy-check.log")"
  case "$proxy" in
    haproxy) "${PROXY_PIN[@]}" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/logs/haproxy.log" 2>&1 & ;;
    nginx) "${PROXY_PIN[@]}" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
      -e "$WORK/nginx/error.log" >"$WORK/logs/nginx.log" 2>&1 & ;;
    tandem) "${PROXY_PIN[@]}" "$TANDEM" -c "$WORK/tandem.toml" >"$WORK/logs/tandem.log" 2>&1 & ;;
  esac
  pid=$!
  STARTED_PIDS+=("$pid")
  if ! python3 "$TOOL" wait-http "$port" 10; then
    die "$proxy did not answer on 127.0.0.1:$port within 10 s: $(tail -5 "$WORK/logs/$proxy.log")"
  fi
  alive "$pid" || die "$proxy exited: $(tail -5 "$WORK/logs/$proxy.log")"
  PROXY_PORT[$proxy]="$port"
  PROXY_PID[$proxy]="$pid"
  log "$proxy (pid $pid) on 127.0.0.1:$port"
}

# --- measuring ----------------------------------------------------------------
cat >"$WORK/report.lua" <<'EOF'
-- Prints one machine-readable line after wrk's own report; latencies in µs.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH,%d,%d,%d,%d,%d,connect %d read %d write %d timeout %d status %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status,
    e.connect, e.read, e.write, e.timeout, e.status))
end
EOF

# wrk, bounded by its own duration plus a margin.
run_wrk() {  # PORT CONNS SECONDS OUTFILE
  run_waited "${LOAD_PIN[@]}" timeout "$(($3 + 30))" wrk -t"$THREADS" -c"$2" -d"$3s" --latency \
    -s "$WORK/report.lua" "http://127.0.0.1:$1/" >"$4" 2>&1
}

RUNS_CSV="$WORK/runs.csv"
MEMORY_JSONL="$WORK/memory.jsonl"
echo "proxy,conns,rep,requests,duration_us,rps,p50_us,p99_us,errors,cpu_ticks,cpu_us_per_req,backend_conns,error_kinds" >"$RUNS_CSV"
: >"$MEMORY_JSONL"

measure() {  # PROXY CONNS REP
  local proxy="$1" conns="$2" rep="$3"
  local port="${PROXY_PORT[$proxy]}" pid="${PROXY_PID[$proxy]}"
  local out="$WORK/runs/$proxy-c$conns-r$rep.txt"
  local cpu_before cpu_after conns_before conns_after line
  cpu_before="$(python3 "$TOOL" cpu "$pid")"
  conns_before="$(python3 "$TOOL" backend-conns "${BACKEND_PORTS[@]}")"
  run_wrk "$port" "$conns" "$DURATION" "$out" || die "wrk failed against $proxy: $(tail -3 "$out")"
  cpu_after="$(python3 "$TOOL" cpu "$pid")"
  conns_after="$(python3 "$TOOL" backend-conns "${BACKEND_PORTS[@]}")"
  alive "$pid" || die "$proxy died during the run: $(tail -5 "$WORK/logs/$proxy.log")"
  line="$(grep '^BENCH,' "$out")" || die "no result from wrk: $(tail -3 "$out")"
  local requests duration_us p50 p99 errors kinds
  IFS=, read -r _ requests duration_us p50 p99 errors kinds <<<"$line"
  ((requests > 0)) || die "$proxy served no request: $(tail -5 "$out")"
  python3 - "$proxy" "$conns" "$rep" "$requests" "$duration_us" "$p50" "$p99" "$errors" \
    "$((cpu_after - cpu_before))" "$((conns_after - conns_before - BACKENDS))" "$kinds" \
    >>"$RUNS_CSV" <<'EOF'
import os, sys
proxy, conns, rep, requests, duration_us, p50, p99, errors, ticks, backend, kinds = sys.argv[1:]
cpu_us = int(ticks) * 1e6 / os.sysconf("SC_CLK_TCK")
print(f"{proxy},{conns},{rep},{requests},{duration_us},"
      f"{int(requests) / (int(duration_us) / 1e6):.1f},{p50},{p99},{errors},{ticks},"
      f"{cpu_us / int(requests):.2f},{backend},{kinds}")
EOF
  log "$(tail -1 "$RUNS_CSV")"
}

# --- main -------------------------------------------------------------------
start_backends

((CHECK_ONLY)) && check_configs_and_exit

for proxy in $PROXIES; do start_proxy "$proxy"; done

warm_up_proxies

# Memory first, while the proxies have seen only the warm-up: what 10,000 idle
# connections add is then not hidden in memory a 1000-connection run left.
if ((IDLE_CONNS > 0)); then
  for proxy in $PROXIES; do
    log "memory: $IDLE_CONNS idle keep-alive connections to $proxy"
    run_waited "${LOAD_PIN[@]}" timeout 300 python3 "$TOOL" idle --proxy "$proxy" \
      --port "${PROXY_PORT[$proxy]}" --pid "${PROXY_PID[$proxy]}" \
      --count "$IDLE_CONNS" >>"$MEMORY_JSONL" || die "idle-connection test of $proxy failed"
    log "$(tail -1 "$MEMORY_JSONL")"
    sleep 2  # let the proxy close the 10,000 connections
  done
fi

# Every repetition visits each connection count, and within it each proxy, in
# an order rotated by one per repetition, so no proxy always runs first.
read -r -a proxy_list <<<"$PROXIES"
for ((rep = 1; rep <= REPS; rep++)); do
  for conns in $CONNS; do
    for ((k = 0; k < ${#proxy_list[@]}; k++)); do
      proxy="${proxy_list[(k + rep - 1) % ${#proxy_list[@]}]}"
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
    "$(nginx -v 2>&1 | cut -d' ' -f3); pinning: proxies ${PROXY_CPUS:-none}, load ${LOAD_CPUS:-none}"
} | tee -a "$WORK/report.md"
if [[ -n "$RESULTS_DIR" ]]; then
  mkdir -p "$RESULTS_DIR"
  cp "$RUNS_CSV" "$MEMORY_JSONL" "$WORK/report.md" "$RESULTS_DIR/"
  log "results copied to $RESULTS_DIR"
fi
