#!/usr/bin/env bash
# Failover side by side: the same crash (kill -9) and freeze (kill -STOP) of
# one of three tandem-worker backends, under the same load, behind tandem,
# HAProxy and nginx in one run; see bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/fault_bench.sh [--check-config] [--help]

For each scenario (kill -9, kill -STOP of one of three backends) and each
proxy, starts three fresh tandem-worker backends and the proxy, sends GETs on
CONNS keep-alive connections for DURATION seconds, injects the fault at
FAULT_AT seconds, and prints a markdown table: requests, failed requests,
detection time (tandem: its /status transition; HAProxy: its stats socket;
nginx: "passive", it has no active checks), p99 and max latency.

  --check-config  only write each proxy's config and validate it, then exit
  --help          print this

Environment (defaults in brackets):
  PROXIES     proxies to run, in this order ["tandem haproxy nginx"]
  SCENARIOS   faults to inject ["kill freeze"]
  TANDEM      the tandem binary [<repo>/build/tandem]
  WORKER      the tandem-worker binary [<repo>/build/tandem-worker]
  DURATION    seconds of load per run [10]
  FAULT_AT    seconds into the run when the fault comes [3]
  CONNS       client connections [8]
  RESULTS_DIR also copy results.jsonl and report.md there
  KEEP        1 keeps the temporary directory (configs, logs)
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
BENCH=fault_bench
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
readonly TOOL="$REPO/bench/fault_bench.py"
PROXIES="${PROXIES:-tandem haproxy nginx}"
SCENARIOS="${SCENARIOS:-kill freeze}"
DURATION="${DURATION:-10}"
FAULT_AT="${FAULT_AT:-3}"
CONNS="${CONNS:-8}"
RESULTS_DIR="${RESULTS_DIR:-}"
KEEP="${KEEP:-0}"
TANDEM="${TANDEM:-$REPO/build/tandem}"
WORKER="${WORKER:-$REPO/build/tandem-worker}"

# Health checks and timeouts, the same for all three where they have them.
readonly CHECK_INTERVAL_MS=500 CHECK_FAST_MS=125 CHECK_TIMEOUT_MS=250 RISE=2 FALL=2
readonly CONNECT_TIMEOUT_MS=500 TRY_TIMEOUT_MS=300 RETRIES=2

CHECK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --check-config) CHECK_ONLY=1 ;;
    --help | -h) usage; exit 0 ;;
    *) echo "fault_bench: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done


for proxy in $PROXIES; do
  case "$proxy" in tandem | haproxy | nginx) ;; *) die "unknown proxy $proxy" ;; esac
done
for scenario in $SCENARIOS; do
  case "$scenario" in kill | freeze) ;; *) die "unknown scenario $scenario" ;; esac
done
for value in "$DURATION" "$FAULT_AT" "$CONNS"; do is_uint "$value" || die "not a count: $value"; done
((FAULT_AT < DURATION)) || die "FAULT_AT must come before the end of DURATION"
((CONNS >= 1 && CONNS <= 256)) || die "CONNS must be 1..256"

need python3
[[ " $PROXIES " == *" haproxy "* ]] && need haproxy
[[ " $PROXIES " == *" nginx "* ]] && need nginx
[[ -x "$WORKER" ]] || die "no tandem-worker at $WORKER (build it, or set WORKER)"
[[ " $PROXIES " != *" tandem "* || -x "$TANDEM" ]] || die "no tandem at $TANDEM (or set TANDEM)"

# Processes of the current run, stopped by PID (SIGCONT first: a frozen one
# would not act on SIGTERM), and on any exit.
declare -a RUN_PIDS=()
FOREGROUND=""
WORK=""
stop_run() {
  local i pid
  for pid in "${RUN_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
  for ((i = ${#RUN_PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${RUN_PIDS[i]}" 2>/dev/null || true; done
  for ((i = ${#RUN_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${RUN_PIDS[i]}"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  RUN_PIDS=()
}
cleanup() {
  local status=$?
  if [[ -n "$FOREGROUND" ]]; then RUN_PIDS+=("$FOREGROUND"); fi
  stop_run
  if [[ -n "$WORK" ]]; then
    if [[ "$KEEP" == 1 || ($status -ne 0 && $status -ne 130 && $status -ne 143) ]]; then
      echo "fault_bench: kept $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /tmp/fault-bench.XXXXXX)"
chmod 755 "$WORK"  # nginx workers run as nobody
mkdir -p "$WORK/logs"

# Runs a command in the background and waits for it, so that a signal is
# handled at once and the cleanup can stop it.
run_waited() {
  local status=0
  "$@" &
  FOREGROUND=$!
  wait "$FOREGROUND" || status=$?
  FOREGROUND=""
  return "$status"
}


# --- backends ---------------------------------------------------------------
declare -a BACKEND_PORTS=() BACKEND_PIDS=()
start_backends() {  # TAG
  local i pid file
  BACKEND_PORTS=()
  BACKEND_PIDS=()
  for i in 1 2 3; do
    file="$WORK/$1-b$i.port"
    "$WORKER" --listen 127.0.0.1:0 --name "b$i" --threads 1 --port-file "$file" \
      >"$WORK/logs/$1-b$i.log" 2>&1 &
    pid=$!
    # Out of the job table: bash would report the SIGKILL the fault sends.
    # It still reaps the process; stop_run finds it by PID.
    disown "$pid"
    RUN_PIDS+=("$pid")
    wait_file "$file" || die "backend b$i did not start: $(tail -3 "$WORK/logs/$1-b$i.log")"
    BACKEND_PORTS+=("$(cat "$file")")
    BACKEND_PIDS+=("$pid")
  done
}

# --- configs ----------------------------------------------------------------
write_haproxy_config() {  # PORT
  local i
  {
    cat <<EOF
global
    nbthread 1
    stats socket $WORK/haproxy.sock mode 600 level admin

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect ${CONNECT_TIMEOUT_MS}ms
    timeout client 30s
    timeout server ${TRY_TIMEOUT_MS}ms
    timeout http-request 10s
    timeout http-keep-alive 30s
    timeout check ${CHECK_TIMEOUT_MS}ms
    retries $RETRIES
    option redispatch 1
    retry-on all-retryable-errors

frontend bench
    bind 127.0.0.1:$1
    default_backend workers

backend workers
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter ${CHECK_INTERVAL_MS}ms fastinter ${CHECK_FAST_MS}ms downinter ${CHECK_INTERVAL_MS}ms rise $RISE fall $FALL
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

events {
    worker_connections 4096;
}

http {
    access_log off;
    keepalive_timeout 30s;
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    upstream workers {
EOF
    # No active checks in nginx open source: FALL failures on real traffic
    # take a backend out for 10 s.
    for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
      echo "        server 127.0.0.1:${BACKEND_PORTS[i]} max_fails=$FALL fail_timeout=10s;"
    done
    cat <<EOF
        keepalive 64;
    }

    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout ${CONNECT_TIMEOUT_MS}ms;
            proxy_read_timeout ${TRY_TIMEOUT_MS}ms;
            proxy_send_timeout ${TRY_TIMEOUT_MS}ms;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries $((RETRIES + 1));
        }
    }
}
EOF
  } >"$dir/nginx.conf"
}

write_tandem_config() {  # PORT ADMIN_PORT ACCESS_LOG
  local i
  {
    cat <<EOF
# fault_bench.sh: tandem with one event-loop thread over three backends; the
# access log says why a failed request was not retried.
[global]
threads = 1
access_log = "$3"
grace_period = "1s"

[admin]
listen = "127.0.0.1:$2"
token = "fault-bench"

[listeners.bench]
listen = "127.0.0.1:$1"
cluster = "workers"

[clusters.workers]
algorithm = "round-robin"
retries = $RETRIES
connect_timeout = "${CONNECT_TIMEOUT_MS}ms"
try_timeout = "${TRY_TIMEOUT_MS}ms"
request_timeout = "5s"

[clusters.workers.health]
kind = "http"
path = "/healthz"
interval = "${CHECK_INTERVAL_MS}ms"
fast_interval = "${CHECK_FAST_MS}ms"
timeout = "${CHECK_TIMEOUT_MS}ms"
rise = $RISE
fall = $FALL
EOF
    for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
      printf '\n[[clusters.workers.backends]]\naddress = "127.0.0.1:%s"\n' "${BACKEND_PORTS[i]}"
    done
  } >"$WORK/tandem.toml"
}

check_config() {  # PROXY
  local out="$WORK/logs/$1-check.log"
  case "$1" in
    haproxy) haproxy -c -f "$WORK/haproxy.cfg" >"$out" 2>&1 ;;
    nginx) nginx -t -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$out" 2>&1 ;;
    tandem) "$TANDEM" -c "$WORK/tandem.toml" --check >"$out" 2>&1 ;;
  esac
}

# --- proxies ----------------------------------------------------------------
PROXY_PORT="" KIND_SPEC="" FAULTY=""
start_proxy() {  # PROXY TAG
  local proxy="$1" admin pid
  PROXY_PORT="$(python3 "$TOOL" free-port)"
  case "$proxy" in
    haproxy)
      write_haproxy_config "$PROXY_PORT"
      rm -f "$WORK/haproxy.sock"
      KIND_SPEC="$WORK/haproxy.sock"
      FAULTY="b1"
      ;;
    nginx)
      write_nginx_config "$PROXY_PORT"
      KIND_SPEC=""
      FAULTY="b1"
      ;;
    tandem)
      admin="$(python3 "$TOOL" free-port)"
      write_tandem_config "$PROXY_PORT" "$admin" "$WORK/logs/$2-access.log"
      KIND_SPEC="$admin"
      FAULTY="127.0.0.1:${BACKEND_PORTS[0]}"
      ;;
  esac
  check_config "$proxy" || die "$proxy config rejected: $(tail -5 "$WORK/logs/$proxy-check.log")"
  case "$proxy" in
    haproxy) haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/logs/$2-haproxy.log" 2>&1 & ;;
    nginx) nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
      >"$WORK/logs/$2-nginx.log" 2>&1 & ;;
    tandem) "$TANDEM" -c "$WORK/tandem.toml" >"$WORK/logs/$2-tandem.log" 2>&1 & ;;
  esac
  pid=$!
  RUN_PIDS+=("$pid")
  python3 "$TOOL" wait-ready --port "$PROXY_PORT" --kind "$proxy" --spec "$KIND_SPEC" --timeout 15 ||
    die "$proxy did not serve with every backend up within 15 s: $(tail -5 "$WORK/logs/$2-$proxy.log")"
}

write_config() {  # PROXY PORT
  case "$1" in
    haproxy) write_haproxy_config "$2" ;;
    nginx) write_nginx_config "$2" ;;
    tandem) write_tandem_config "$2" "$(python3 "$TOOL" free-port)" "off" ;;
  esac
}

# --- main -------------------------------------------------------------------
if ((CHECK_ONLY)); then
  start_backends check
  check_configs_and_exit
fi

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for scenario in $SCENARIOS; do
  for proxy in $PROXIES; do
    tag="$scenario-$proxy"
    start_backends "$tag"
    start_proxy "$proxy" "$tag"
    log "$scenario behind $proxy: ${DURATION}s of load, fault at ${FAULT_AT}s on backend b1 (pid ${BACKEND_PIDS[0]})"
    run_waited timeout "$((DURATION + 30))" python3 "$TOOL" load --scenario "$scenario" \
      --proxy "$proxy" --port "$PROXY_PORT" --kind "$proxy" --spec "$KIND_SPEC" \
      --backend "$FAULTY" --pid "${BACKEND_PIDS[0]}" --fault "$scenario" \
      --fault-at "$FAULT_AT" --duration "$DURATION" --conns "$CONNS" >>"$RESULTS" ||
      die "the load against $proxy failed"
    log "$(tail -1 "$RESULTS")"
    if [[ "$proxy" == tandem ]]; then
      # Why tandem's failed requests were not retried, from its access log.
      grep -v ' 200 ' "$WORK/logs/$tag-access.log" | head -5 >&2 || true
    fi
    stop_run
  done
done

python3 "$TOOL" report "$RESULTS" | tee "$WORK/report.md"
{
  echo
  echo "Host: $(nproc) CPUs, $(uname -r); $CONNS client connections, ${DURATION}s per run," \
    "fault at ${FAULT_AT}s; checks every ${CHECK_INTERVAL_MS}ms (fast ${CHECK_FAST_MS}ms)," \
    "timeout ${CHECK_TIMEOUT_MS}ms, fall $FALL, rise $RISE; try timeout ${TRY_TIMEOUT_MS}ms," \
    "$RETRIES retries; $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3);" \
    "$(nginx -v 2>&1 | cut -d' ' -f3)"
} | tee -a "$WORK/report.md"
if [[ -n "$RESULTS_DIR" ]]; then
  mkdir -p "$RESULTS_DIR"
  cp "$RESULTS" "$WORK/report.md" "$RESULTS_DIR/"
  log "results copied to $RESULTS_DIR"
fi
