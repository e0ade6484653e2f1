#!/usr/bin/env bash
# Failover side by side: the same fault of one of three tandem-worker backends
# (crash, freeze, 20x slower, 20 % of answers 503) or of all three (5x slower
# for a while), under the same load, behind tandem (tuned, and with its
# defaults), HAProxy and nginx in one run; see bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/fault_bench.sh [--check-config] [--help]

For each scenario and each proxy, starts three fresh tandem-worker backends
and the proxy, sends GETs on CONNS keep-alive connections for DURATION
seconds, injects the fault at FAULT_AT seconds, and prints a markdown table:
requests, failed requests, detection time (tandem: its /status transition;
HAProxy: its stats socket; nginx: "passive", it has no active checks), p99 and
max latency, and the share of answers from the faulty backend after the fault.

Scenarios: none (no fault: the baseline), kill (kill -9 of b1), freeze (kill -STOP of b1), slow (b1 answers
20 ms late: tandem-worker /control/delay), flaky (b1 answers 503 to 20 % of
requests: /control/fail?percent=20), spike (every backend answers 2 ms late
from the start, 10 ms late for 4 s from FAULT_AT). Proxies: tandem (tuned like
the others: the timeouts and checks below), tandem-defaults (only the backends
and kind = "http" checks: no timeout, algorithm or outlier key chosen),
haproxy and nginx (their documented best settings for the job).

  --check-config  only write each proxy's config and validate it, then exit
  --help          print this

Environment (defaults in brackets):
  PROXIES     proxies to run, in this order ["tandem tandem-defaults haproxy nginx"]
  SCENARIOS   faults to inject ["kill freeze slow flaky spike"]
  TANDEM      the tandem binary [<repo>/build/tandem]
  WORKER      the tandem-worker binary [<repo>/build/tandem-worker]
  DURATION    seconds of load per run [10]
  FAULT_AT    seconds into the run when the fault comes [3]
  CONNS       client connections [8]
  RESULTS_DIR also copy results.jsonl and report.md there
  KEEP        1 keeps the temporary directory (configs, logs)
  DEFAULTS_ALGORITHM  give tandem-defaults this algorithm (to compare
              candidates for the default; the report names it) [none]
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
BENCH=fault_bench
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
readonly TOOL="$REPO/bench/fault_bench.py"
PROXIES="${PROXIES:-tandem tandem-defaults haproxy nginx}"
SCENARIOS="${SCENARIOS:-kill freeze slow flaky spike}"
DURATION="${DURATION:-10}"
FAULT_AT="${FAULT_AT:-3}"
CONNS="${CONNS:-8}"
RESULTS_DIR="${RESULTS_DIR:-}"
KEEP="${KEEP:-0}"
DEFAULTS_ALGORITHM="${DEFAULTS_ALGORITHM:-}"
TANDEM="${TANDEM:-$REPO/build/tandem}"
WORKER="${WORKER:-$REPO/build/tandem-worker}"

# Health checks and timeouts, the same for all three where they have them.
readonly CHECK_INTERVAL_MS=500 CHECK_FAST_MS=125 CHECK_TIMEOUT_MS=250 RISE=2 FALL=2
readonly CONNECT_TIMEOUT_MS=500 TRY_TIMEOUT_MS=300 RETRIES=2
# Three backends, one of them faulted; nothing is pinned to CPUs.
readonly BACKENDS=3

parse_options "$@"

for proxy in $PROXIES; do
  case "$proxy" in tandem | tandem-defaults | haproxy | nginx) ;; *) die "unknown proxy $proxy" ;; esac
done
for scenario in $SCENARIOS; do
  case "$scenario" in none | kill | freeze | slow | flaky | spike) ;; *) die "unknown scenario $scenario" ;; esac
done
for value in "$DURATION" "$FAULT_AT" "$CONNS"; do is_uint "$value" || die "not a count: $value"; done
((FAULT_AT < DURATION)) || die "FAULT_AT must come before the end of DURATION"
((CONNS >= 1 && CONNS <= 256)) || die "CONNS must be 1..256"

need python3
need_proxies
[[ -x "$WORKER" ]] || die "no tandem-worker at $WORKER (build it, or set WORKER)"
[[ " $PROXIES " != *" tandem"* || -x "$TANDEM" ]] || die "no tandem at $TANDEM (or set TANDEM)"

make_work_dir fault-bench
chmod 755 "$WORK"  # nginx workers run as nobody
mkdir -p "$WORK/logs"

# --- configs ----------------------------------------------------------------
write_haproxy_config() {  # PORT
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
    default-server check inter ${CHECK_INTERVAL_MS}ms fastinter ${CHECK_FAST_MS}ms downinter ${CHECK_INTERVAL_MS}ms rise $RISE fall $FALL observe layer7 error-limit 10 on-error mark-down
EOF
    haproxy_servers
  } >"$WORK/haproxy.cfg"
}

write_nginx_config() {  # PORT
  mkdir -p "$WORK/nginx"
  {
    nginx_config_head 4096 30s
    # No active checks in nginx open source: FALL failures on real traffic
    # take a backend out for 10 s.
    nginx_servers "max_fails=$FALL fail_timeout=10s"
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
  } >"$WORK/nginx/nginx.conf"
}

# tandem with one event-loop thread over three backends, the access log
# saying why a failed request was not retried. TUNING "tuned": timeouts and
# checks as the other proxies have them; "defaults": only the checks' kind is
# chosen (try_timeout "auto", hang detection, success-rate outlier detection,
# checks every 2 s).
write_tandem_config() {  # PORT ADMIN_PORT ACCESS_LOG TUNING
  {
    cat <<EOF
# fault_bench.sh: tandem, $4.
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
EOF
    if [[ "$4" == tuned ]]; then
      cat <<EOF
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
    else
      if [[ -n "$DEFAULTS_ALGORITHM" ]]; then
        printf 'algorithm = "%s"\n' "$DEFAULTS_ALGORITHM"
      fi
      printf '\n[clusters.workers.health]\nkind = "http"\n'
    fi
    tandem_backends
  } >"$WORK/tandem.toml"
}

tuning_of() {  # PROXY: tandem's config variant
  [[ "$1" == tandem ]] && echo tuned || echo defaults
}

check_config() {  # PROXY
  local out="$WORK/logs/$1-check.log"
  case "$1" in
    haproxy) haproxy -c -f "$WORK/haproxy.cfg" >"$out" 2>&1 ;;
    nginx) nginx -t -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$out" 2>&1 ;;
    tandem | tandem-defaults) "$TANDEM" -c "$WORK/tandem.toml" --check >"$out" 2>&1 ;;
  esac
}

# --- proxies ----------------------------------------------------------------
PROXY_PORT="" KIND_SPEC="" FAULTY=""
start_proxy() {  # PROXY TAG
  local proxy="$1" admin
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
    tandem | tandem-defaults)
      admin="$(python3 "$TOOL" free-port)"
      write_tandem_config "$PROXY_PORT" "$admin" "$WORK/logs/$2-access.log" \
        "$(tuning_of "$proxy")"
      KIND_SPEC="$admin"
      FAULTY="127.0.0.1:${BACKEND_PORTS[0]}"
      ;;
  esac
  launch_proxy "$(kind_of "$proxy")" "$WORK/logs/$2-$proxy.log"
  python3 "$TOOL" wait-ready --port "$PROXY_PORT" --kind "$(kind_of "$proxy")" --spec "$KIND_SPEC" --timeout 15 ||
    die "$proxy did not serve with every backend up within 15 s: $(tail -5 "$WORK/logs/$2-$proxy.log")"
}

write_config() {  # PROXY PORT
  case "$1" in
    haproxy) write_haproxy_config "$2" ;;
    nginx) write_nginx_config "$2" ;;
    tandem | tandem-defaults)
      write_tandem_config "$2" "$(python3 "$TOOL" free-port)" "off" "$(tuning_of "$1")" ;;
  esac
}

label_of() {  # PROXY: its name in the report
  if [[ "$1" == tandem-defaults && -n "$DEFAULTS_ALGORITHM" ]]; then
    echo "$1/$DEFAULTS_ALGORITHM"
  else
    echo "$1"
  fi
}

kind_of() {  # PROXY: the program it runs, and what the helper probes it as
  echo "${1%-defaults}"
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
    # Out of the job table: bash would report the SIGKILL the fault sends.
    # It still reaps the processes; stop_started finds them by PID.
    for pid in "${BACKEND_PIDS[@]}"; do disown "$pid"; done
    start_proxy "$proxy" "$tag"
    log "$scenario behind $proxy: ${DURATION}s of load, fault at ${FAULT_AT}s on backend b1 (pid ${BACKEND_PIDS[0]})"
    run_waited timeout "$((DURATION + 30))" python3 "$TOOL" load --scenario "$scenario" \
      --proxy "$(label_of "$proxy")" --port "$PROXY_PORT" --kind "$(kind_of "$proxy")" --spec "$KIND_SPEC" \
      --backend "$FAULTY" --pid "${BACKEND_PIDS[0]}" --fault "$scenario" \
      --backend-ports "${BACKEND_PORTS[*]}" \
      --fault-at "$FAULT_AT" --duration "$DURATION" --conns "$CONNS" >>"$RESULTS" ||
      die "the load against $proxy failed"
    log "$(tail -1 "$RESULTS")"
    if [[ "$proxy" == tandem* ]]; then
      # Why tandem's failed requests were not retried, from its access log.
      grep -v ' 200 ' "$WORK/logs/$tag-access.log" | head -5 >&2 || true
    fi
    stop_started
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
copy_results "$RESULTS" "$WORK/report.md"
