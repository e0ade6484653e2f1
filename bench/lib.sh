# shellcheck shell=bash disable=SC2034,SC2153
# Shell helpers shared by the benchmark scripts (sourced, not run). The script
# sets BENCH to its name first, for messages, and defines usage; the variables
# set here are the script's to read, and the other way round.

die() { echo "${BENCH:-bench}: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
need() { command -v "$1" >/dev/null || die "$1 is not installed"; }

# A zombie still answers kill -0; ps tells it apart.
alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

# Waits up to 5 s for FILE to exist and be non-empty.
wait_file() {
  for _ in $(seq 100); do [[ -s "$1" ]] && return 0; sleep 0.05; done
  return 1
}

# The command line of every script: --check-config sets CHECK_ONLY.
parse_options() {  # ARG...
  local arg
  CHECK_ONLY=0
  for arg in "$@"; do
    case "$arg" in
      --check-config) CHECK_ONLY=1 ;;
      --help | -h) usage; exit 0 ;;
      *) echo "$BENCH: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
  done
}

# Needs haproxy and nginx if PROXIES has them.
need_proxies() {
  if [[ " $PROXIES " == *" haproxy "* ]]; then need haproxy; fi
  if [[ " $PROXIES " == *" nginx "* ]]; then need nginx; fi
}

# --- processes and the temporary directory ------------------------------------
# Processes we started, stopped in reverse order by PID on any exit (and by
# fault_bench after each run); FOREGROUND holds the clients being waited for.
declare -a STARTED_PIDS=() FOREGROUND=()
WORK=""

# SIGCONT first (a frozen process would not act on SIGTERM), then SIGTERM to
# all, then up to 5 s for each to go before SIGKILL.
stop_started() {
  local i pid
  for pid in "${STARTED_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${STARTED_PIDS[i]}" 2>/dev/null || true; done
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${STARTED_PIDS[i]}"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}

cleanup() {
  local status=$?
  STARTED_PIDS+=("${FOREGROUND[@]}")
  stop_started
  if [[ -n "$WORK" ]]; then
    # A failed run keeps its logs; an interrupted one (130, 143) does not.
    if [[ "$KEEP" == 1 || ($status -ne 0 && $status -ne 130 && $status -ne 143) ]]; then
      echo "$BENCH: kept $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$status"
}

# Sets up the cleanup on exit, SIGINT and SIGTERM, then makes WORK,
# /tmp/NAME.XXXXXX.
make_work_dir() {  # NAME
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
}

# Runs a command in the background and waits for it, so that a signal is
# handled at once (bash defers traps until a foreground command ends) and the
# cleanup can stop it.
run_waited() {
  local status=0
  "$@" &
  FOREGROUND=($!)
  wait "${FOREGROUND[0]}" || status=$?
  FOREGROUND=()
  return "$status"
}

# Raises the soft open-file limit to the hard one (65536 if that is
# unlimited) and sets FD_LIMIT to it.
raise_fd_limit() {
  local hard
  hard="$(ulimit -Hn)"
  if [[ "$hard" == unlimited ]]; then ulimit -Sn 65536; else ulimit -Sn "$hard"; fi
  FD_LIMIT="$(ulimit -Sn)"
}

# Command prefixes that pin to PROXY_CPUS / LOAD_CPUS, set by pin_cpus and
# empty without it. taskset execs the command, so $! after
# "${PIN[@]}" cmd & is the command's own PID.
declare -a PROXY_PIN=() LOAD_PIN=()
pin_cpus() {
  if [[ -n "$PROXY_CPUS" ]]; then need taskset; PROXY_PIN=(taskset -c "$PROXY_CPUS"); fi
  if [[ -n "$LOAD_CPUS" ]]; then need taskset; LOAD_PIN=(taskset -c "$LOAD_CPUS"); fi
}

# --- backends -----------------------------------------------------------------
# Starts BACKENDS tandem-worker processes (one thread each, LOAD_PIN in front)
# on ports they pick: BACKEND_PORTS and BACKEND_PIDS, and the PIDs in
# STARTED_PIDS too. TAG, if given, prefixes their port files and logs.
# shellcheck disable=SC2120
start_backends() {  # [TAG]
  local i pid name
  BACKEND_PORTS=()
  BACKEND_PIDS=()
  for ((i = 1; i <= BACKENDS; i++)); do
    name="${1:+$1-}b$i"
    "${LOAD_PIN[@]}" "$WORKER" --listen 127.0.0.1:0 --name "b$i" --threads 1 \
      --port-file "$WORK/$name.port" >"$WORK/logs/$name.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    BACKEND_PIDS+=("$pid")
    wait_file "$WORK/$name.port" || die "backend b$i did not start: $(tail -3 "$WORK/logs/$name.log")"
    BACKEND_PORTS+=("$(cat "$WORK/$name.port")")
  done
}

# --- configs --------------------------------------------------------------------
# Each script has write_config PROXY PORT and check_config PROXY; these write
# the parts they share.

# HAProxy's server lines for BACKEND_PORTS, named b1, b2, ...
haproxy_servers() {
  local i
  for ((i = 0; i < ${#BACKEND_PORTS[@]}; i++)); do
    echo "    server b$((i + 1)) 127.0.0.1:${BACKEND_PORTS[i]}"
  done
}

# The HAProxy config of proxy_bench and tls_bench, as WORK/haproxy.cfg: one
# thread, keep-alive and connection reuse on both sides, round robin, no
# health checks. BIND_OPTIONS go after the bind address, GLOBAL_LINEs at the
# end of the global section. HAProxy counts two descriptors per connection and
# refuses to start when 2 x HAPROXY_MAXCONN exceeds the open-file limit
# (FD_LIMIT), unless told "no strict-limits"; then it warns.
write_haproxy_bench_config() {  # PORT [BIND_OPTIONS [GLOBAL_LINE...]]
  {
    cat <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    ulimit-n $FD_LIMIT
    no strict-limits
EOF
    if (($# > 2)); then printf '    %s\n' "${@:3}"; fi
    cat <<EOF

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
    bind 127.0.0.1:$1${2:+ $2}
    default_backend workers

backend workers
    balance roundrobin
EOF
    haproxy_servers
  } >"$WORK/haproxy.cfg"
}

# nginx's server lines for BACKEND_PORTS, PARAMETERS after each address.
# shellcheck disable=SC2120
nginx_servers() {  # [PARAMETERS]
  local port
  for port in "${BACKEND_PORTS[@]}"; do
    echo "        server 127.0.0.1:$port${1:+ $1};"
  done
}

# The head of an nginx config, up to "upstream workers {": one worker process
# in the foreground with all its files in WORK/nginx, no access log, and
# keep-alive connections from clients kept for 100,000,000 requests (nginx
# alone closes one after 1000 by default). MAIN_LINEs go before events.
nginx_config_head() {  # WORKER_CONNECTIONS KEEPALIVE_TIMEOUT [MAIN_LINE...]
  local dir="$WORK/nginx"
  cat <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
EOF
  if (($# > 2)); then printf '%s\n' "${@:3}"; fi
  cat <<EOF

events {
    worker_connections $1;
}

http {
    access_log off;
    keepalive_timeout $2;
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    upstream workers {
EOF
}

# tandem's [[clusters.workers.backends]] tables for BACKEND_PORTS.
tandem_backends() {
  local port
  for port in "${BACKEND_PORTS[@]}"; do
    printf '\n[[clusters.workers.backends]]\naddress = "127.0.0.1:%s"\n' "$port"
  done
}

# The tandem config of proxy_bench and tls_bench, as WORK/tandem.toml: one
# event-loop thread, round robin with idle connections kept, no active health
# checks. DESCRIPTION ends the comment on top; LISTENER_LINEs go into the
# listener.
# TANDEM_THREADS loop threads (1) in $WORK/${TANDEM_NAME:-tandem}.toml.
write_tandem_bench_config() {  # PORT DESCRIPTION [LISTENER_LINE...]
  {
    cat <<EOF
# $BENCH.sh: tandem with ${TANDEM_THREADS:-1} event-loop thread(s) $2.
[global]
threads = ${TANDEM_THREADS:-1}
access_log = "off"
grace_period = "1s"

[listeners.bench]
listen = "127.0.0.1:$1"
cluster = "workers"
idle_timeout = "120s"
EOF
    if (($# > 2)); then printf '%s\n' "${@:3}"; fi
    cat <<EOF

[clusters.workers]
policy = "all-active"
algorithm = "round-robin"
max_idle_connections = 64

# As in the other proxies' configs: no active health checks.
[clusters.workers.health]
kind = "none"
EOF
    tandem_backends
  } >"$WORK/${TANDEM_NAME:-tandem}.toml"
}

# --check-config: writes each proxy's config on a free port, has the proxy
# check it, prints the verdicts and exits (1 if any was rejected), keeping WORK.
# Uses the script's write_config PROXY PORT, check_config PROXY, PROXIES, TOOL.
check_configs_and_exit() {
  local proxy status=0
  for proxy in $PROXIES; do
    write_config "$proxy" "$(python3 "$TOOL" free-port)"
    if check_config "$proxy"; then
      echo "$proxy: config OK ($(tail -1 "$WORK/logs/$proxy-check.log"))"
    else
      echo "$proxy: config REJECTED"; sed 's/^/    /' "$WORK/logs/$proxy-check.log"; status=1
    fi
  done
  echo "configs in $WORK (kept)"
  KEEP=1
  exit "$status"
}

# --- proxies --------------------------------------------------------------------
# Has check_config check PROXY's config (written by write_config), then starts
# PROXY on it in the background, PROXY_PIN in front, its output in LOG. Its
# PID goes to STARTED_PIDS and stays in $!.
launch_proxy() {  # PROXY LOG
  check_config "$1" || die "$1 config rejected: $(tail -5 "$WORK/logs/$1-check.log")"
  case "$1" in
    haproxy) "${PROXY_PIN[@]}" haproxy -f "$WORK/haproxy.cfg" -db >"$2" 2>&1 & ;;
    nginx) "${PROXY_PIN[@]}" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
      -e "$WORK/nginx/error.log" >"$2" 2>&1 & ;;
    tandem | tandem2) "${PROXY_PIN[@]}" "$TANDEM" -c "$WORK/$1.toml" >"$2" 2>&1 & ;;
  esac
  STARTED_PIDS+=("$!")
}

# --- wrk ------------------------------------------------------------------------
# The script wrk runs: one machine-readable line after wrk's own report.
write_wrk_script() {
  cat >"$WORK/report.lua" <<'EOF'
-- Prints one machine-readable line after wrk's own report; latencies in µs.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH,%d,%d,%d,%d,%d,%d,connect %d read %d write %d timeout %d status %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status))
end
EOF
}

# wrk with THREADS threads against WRK_SCHEME://127.0.0.1:PORT/URL_PATH
# (URL_PATH defaults to /), LOAD_PIN in front, bounded by its own duration
# plus a margin.
run_wrk() {  # PORT CONNS SECONDS OUTFILE
  run_waited "${LOAD_PIN[@]}" timeout "$(($3 + 30))" wrk -t"$THREADS" -c"$2" -d"$3s" --latency \
    -s "$WORK/report.lua" "$WRK_SCHEME://127.0.0.1:$1${URL_PATH:-/}" >"$4" 2>&1
}

# Warms every proxy up with WARMUP seconds of wrk at 10 connections. Uses the
# script's PROXIES and PROXY_PORT.
warm_up_proxies() {
  local proxy
  for proxy in $PROXIES; do
    log "warm-up $proxy (${WARMUP}s)"
    run_wrk "${PROXY_PORT[$proxy]}" 10 "$WARMUP" "$WORK/runs/$proxy-warmup.txt" ||
      die "warm-up of $proxy failed: $(tail -3 "$WORK/runs/$proxy-warmup.txt")"
  done
}

# DURATION seconds of wrk on CONNS connections against PROXY (PROXY_PORT,
# PROXY_PID), its output in OUTFILE. Sets WRK_REQUESTS, WRK_DURATION_US,
# WRK_P50, WRK_P99 (µs), WRK_ERRORS, WRK_BYTES (read by wrk), WRK_ERROR_KINDS,
# CPU_TICKS, the proxy's CPU time during the run, and LOAD_BUSY, how busy the
# LOAD_CPUS were in percent (empty without LOAD_CPUS): near 100, the load
# generator and backends set the pace, not the proxy.
measure_wrk() {  # PROXY CONNS OUTFILE
  local proxy="$1" out="$3" pid="${PROXY_PID[$1]}" cpu_before cpu_after line
  local load_before="" load_after=""
  cpu_before="$(python3 "$TOOL" cpu "$pid")"
  [[ -n "$LOAD_CPUS" ]] && load_before="$(python3 "$TOOL" cpus-busy "$LOAD_CPUS")"
  run_wrk "${PROXY_PORT[$proxy]}" "$2" "$DURATION" "$out" || die "wrk failed against $proxy: $(tail -3 "$out")"
  [[ -n "$LOAD_CPUS" ]] && load_after="$(python3 "$TOOL" cpus-busy "$LOAD_CPUS")"
  cpu_after="$(python3 "$TOOL" cpu "$pid")"
  LOAD_BUSY=""
  # shellcheck disable=SC2086  # two numbers each
  [[ -n "$LOAD_CPUS" ]] && LOAD_BUSY="$(python3 "$TOOL" busy-percent $load_before $load_after)"
  alive "$pid" || die "$proxy died during the run: $(tail -5 "$WORK/logs/$proxy.log")"
  line="$(grep '^BENCH,' "$out")" || die "no result from wrk: $(tail -3 "$out")"
  IFS=, read -r _ WRK_REQUESTS WRK_DURATION_US WRK_P50 WRK_P99 WRK_ERRORS WRK_BYTES WRK_ERROR_KINDS <<<"$line"
  ((WRK_REQUESTS > 0)) || die "$proxy served no request: $(tail -5 "$out")"
  CPU_TICKS=$((cpu_after - cpu_before))
}

# --- main -----------------------------------------------------------------------
# PROXIES rotated left by REP - 1, one a line: the order of repetition REP, so
# that no proxy always runs first.
rotated_proxies() {  # REP
  local list k
  read -r -a list <<<"$PROXIES"
  for ((k = 0; k < ${#list[@]}; k++)); do echo "${list[(k + $1 - 1) % ${#list[@]}]}"; done
}

# Copies FILEs into RESULTS_DIR (RESULTS_DIR=none: nowhere), by default
# bench/results/<UTC date and time>-<BENCH>-<commit>/, with machine.txt: the
# commit, the binaries' versions and the machine's CPU model.
copy_results() {  # FILE...
  [[ "$RESULTS_DIR" == none ]] && return 0
  if [[ -z "$RESULTS_DIR" ]]; then
    RESULTS_DIR="$REPO/bench/results/$(date -u +%Y%m%d-%H%M%S)-$BENCH-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  fi
  mkdir -p "$RESULTS_DIR"
  cp "$@" "$RESULTS_DIR/"
  {
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "kernel: $(uname -r)"
    echo "pinning: proxies ${PROXY_CPUS:-none}, load ${LOAD_CPUS:-none}"
    echo "haproxy: $(haproxy -v 2>/dev/null | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
  } >"$RESULTS_DIR/machine.txt"
  log "results copied to $RESULTS_DIR"
}
