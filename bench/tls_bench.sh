#!/usr/bin/env bash
# tandem and HAProxy terminating TLS with the same certificate and cipher
# settings in front of the same tandem-worker backends: full handshakes per
# second and keep-alive requests per second, in one run; see bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/tls_bench.sh [--check-config] [--help]

Makes a test CA and a server certificate with openssl, runs tandem and HAProxy
(one thread each) as TLS-terminating reverse proxies in front of the same
tandem-worker backends, and prints the medians of
  - full TLS handshakes per second: parallel `openssl s_time -new` clients,
    a new connection, a full handshake and one GET per connection, for each
    TLS version in HS_VERSIONS, with the proxy's CPU time per handshake;
  - keep-alive requests per second over TLS: wrk against https://, for each
    count in CONNS, with p50/p99 latency and proxy CPU time per request;
and the ratios of tandem to HAProxy, measured in the same run.

  --check-config  only write both configs and validate them (haproxy -c,
                  tandem --check), then exit
  --help          print this

Environment (defaults in brackets):
  PROXIES       proxies to run, in this order ["tandem haproxy"]
  TANDEM        the tandem binary [<repo>/build/tandem]
  WORKER        the tandem-worker binary [<repo>/build/tandem-worker, else
                <repo>/build-worker/tandem-worker]
  KEY           server key: rsa2048, rsa3072 or ec256 [rsa2048]
  HS_VERSIONS   TLS versions of the handshake runs ["1.3 1.2"]
  HS_CLIENTS    parallel s_time processes (each one connection at a time) [4]
  HS_SECONDS    seconds per handshake run [10]
  CONNS         wrk connection counts ["100"]
  DURATION      seconds per wrk run [10]
  THREADS       wrk threads [2]
  REPS          repetitions of every (proxy, test) pair [3]
  WARMUP        seconds of wrk per proxy before measuring [2]
  BACKENDS      tandem-worker processes, one thread each [3]
  IDLE_CONNS    idle TLS keep-alive connections for the memory test, 0 skips
                it [5000]
  PROXY_CPUS    pin the proxies to these CPUs with taskset, e.g. "0" [no pinning]
  LOAD_CPUS     pin the clients and the backends to these CPUs, e.g. "1" [no pinning]
  RESULTS_DIR   also copy runs.csv and report.md there
  KEEP          1 keeps the temporary directory (certificates, configs, logs)
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
BENCH=tls_bench
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
readonly TOOL="$REPO/bench/tls_bench.py"
PROXIES="${PROXIES:-tandem haproxy}"
KEY="${KEY:-rsa2048}"
HS_VERSIONS="${HS_VERSIONS:-1.3 1.2}"
HS_CLIENTS="${HS_CLIENTS:-4}"
HS_SECONDS="${HS_SECONDS:-10}"
CONNS="${CONNS:-100}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
WARMUP="${WARMUP:-2}"
BACKENDS="${BACKENDS:-3}"
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
  case "$proxy" in tandem | haproxy) ;; *) die "unknown proxy $proxy (tandem or haproxy)" ;; esac
done
for value in "$HS_CLIENTS" "$HS_SECONDS" "$DURATION" "$THREADS" "$REPS" "$WARMUP" "$BACKENDS" $CONNS; do
  is_uint "$value" || die "not a count: $value"
done
for version in $HS_VERSIONS; do
  case "$version" in 1.2 | 1.3) ;; *) die "HS_VERSIONS: $version is not 1.2 or 1.3" ;; esac
done
case "$KEY" in rsa2048 | rsa3072 | ec256) ;; *) die "KEY must be rsa2048, rsa3072 or ec256" ;; esac
((BACKENDS >= 1 && BACKENDS <= 16)) || die "BACKENDS must be 1..16"
((REPS >= 1 && REPS <= 100)) || die "REPS must be 1..100"
((HS_CLIENTS >= 1 && HS_CLIENTS <= 64)) || die "HS_CLIENTS must be 1..64"
for c in $CONNS; do ((c >= THREADS)) || die "$c connections are fewer than $THREADS wrk threads"; done

need python3
need openssl
need_proxies
((CHECK_ONLY)) || need wrk
[[ -x "$WORKER" ]] || die "no tandem-worker at $WORKER (build it, or set WORKER)"
if [[ " $PROXIES " == *" tandem "* && ! -x "$TANDEM" ]]; then
  die "no tandem at $TANDEM (build it, or set TANDEM)"
fi

make_work_dir tls-bench
mkdir -p "$WORK/runs" "$WORK/logs" "$WORK/pki"

IDLE_CONNS="${IDLE_CONNS:-5000}"
is_uint "$IDLE_CONNS" || die "IDLE_CONNS must be a number"
raise_fd_limit
if ((IDLE_CONNS > 0 && FD_LIMIT < IDLE_CONNS + 1000)); then
  die "open-file limit $FD_LIMIT is too low for IDLE_CONNS=$IDLE_CONNS"
fi
# See write_haproxy_bench_config in lib.sh; HAProxy also stops pooling server
# connections when a fifth of its descriptors are in use.
HAPROXY_MAXCONN=$((IDLE_CONNS + 2000 > 12000 ? IDLE_CONNS + 2000 : 12000))
pin_cpus

# --- certificate --------------------------------------------------------------
# A CA and a server certificate for localhost and 127.0.0.1, as a real
# deployment has (a chain of two); both proxies serve the same files.
make_certificate() {
  local pki="$WORK/pki" keyopts
  case "$KEY" in
    rsa2048) keyopts=(-algorithm RSA -pkeyopt rsa_keygen_bits:2048) ;;
    rsa3072) keyopts=(-algorithm RSA -pkeyopt rsa_keygen_bits:3072) ;;
    ec256) keyopts=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256) ;;
  esac
  {
    openssl genpkey "${keyopts[@]}" -out "$pki/ca.key" &&
      openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 2 -subj "/CN=tls_bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -out "$pki/ca.pem" &&
      openssl genpkey "${keyopts[@]}" -out "$pki/server.key" &&
      openssl req -new -key "$pki/server.key" -subj "/CN=localhost" -out "$pki/server.csr" &&
      printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$pki/server.ext" &&
      openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
        -set_serial 1 -sha256 -days 2 -extfile "$pki/server.ext" -out "$pki/leaf.pem" &&
      cat "$pki/leaf.pem" "$pki/ca.pem" >"$pki/server.pem" &&
      cat "$pki/server.pem" "$pki/server.key" >"$pki/haproxy.pem"
  } >"$WORK/logs/pki.log" 2>&1 || die "openssl could not make the certificate: $(tail -3 "$WORK/logs/pki.log")"
  log "certificate: $KEY, chain of two, for localhost and 127.0.0.1"
}

# --- configs ----------------------------------------------------------------
# The same TLS settings for both: TLS 1.2 and 1.3 only; TLS 1.2 suites =
# tandem's default (Mozilla intermediate: ECDHE/DHE with AES-GCM or
# ChaCha20-Poly1305), written out for both; TLS 1.3 suites and key-exchange
# groups = OpenSSL's defaults, in OpenSSL's order (HAProxy would otherwise
# offer only P-256 for ECDHE); the server's preference wins; ALPN http/1.1;
# session tickets and a session cache on (the defaults of both).
readonly CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
readonly CIPHERSUITES="TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
readonly CURVES="X25519:P-256:X448:P-521:P-384"

write_config() {  # PROXY PORT
  case "$1" in
    haproxy)
      write_haproxy_bench_config "$2" "ssl crt $WORK/pki/haproxy.pem alpn http/1.1" \
        "ssl-default-bind-ciphers $CIPHERS" "ssl-default-bind-ciphersuites $CIPHERSUITES" \
        "ssl-default-bind-curves $CURVES" "ssl-default-bind-options ssl-min-ver TLSv1.2"
      ;;
    tandem)
      write_tandem_bench_config "$2" "terminating TLS" "tls_cert = \"$WORK/pki/server.pem\"" \
        "tls_key = \"$WORK/pki/server.key\"" 'tls_min_version = "1.2"' "tls_ciphers = \"$CIPHERS\""
      ;;
  esac
}

check_config() {  # PROXY
  local out="$WORK/logs/$1-check.log"
  case "$1" in
    haproxy) haproxy -c -f "$WORK/haproxy.cfg" >"$out" 2>&1 ;;
    tandem) "$TANDEM" -c "$WORK/tandem.toml" --check >"$out" 2>&1 ;;
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
  if ! python3 "$TOOL" wait-https "$port" 10; then
    die "$proxy did not answer over TLS on 127.0.0.1:$port within 10 s: $(tail -5 "$WORK/logs/$proxy.log")"
  fi
  alive "$pid" || die "$proxy exited: $(tail -5 "$WORK/logs/$proxy.log")"
  python3 "$TOOL" check --proxy "$proxy" --port "$port" --ca "$WORK/pki/ca.pem" \
    >"$WORK/logs/$proxy-negotiated.log" 2>&1 ||
    die "$proxy answered a check wrongly: $(cat "$WORK/logs/$proxy-negotiated.log")"
  PROXY_PORT[$proxy]="$port"
  PROXY_PID[$proxy]="$pid"
  log "$proxy (pid $pid) on 127.0.0.1:$port"
  sed 's/^/    /' "$WORK/logs/$proxy-negotiated.log" >&2
}

# --- measuring ----------------------------------------------------------------
readonly WRK_SCHEME=https
write_wrk_script

RUNS_CSV="$WORK/runs.csv"
echo "proxy,test,rep,count,seconds,rate,cpu_ticks,cpu_us_per_op,p50_us,p99_us,errors,bytes_per_conn,detail" >"$RUNS_CSV"

# Appends a row; the rate and CPU per operation are computed here.
add_row() {  # PROXY TEST REP COUNT SECONDS TICKS P50 P99 ERRORS BYTES DETAIL
  python3 - "$@" >>"$RUNS_CSV" <<'EOF'
import os, sys
proxy, test, rep, count, seconds, ticks, p50, p99, errors, size, detail = sys.argv[1:]
cpu_us = int(ticks) * 1e6 / os.sysconf("SC_CLK_TCK")
count, seconds = int(count), float(seconds)
print(f"{proxy},{test},{rep},{count},{seconds:.3f},{count / seconds:.1f},{ticks},"
      f"{cpu_us / max(count, 1):.1f},{p50},{p99},{errors},{size},{detail}")
EOF
  log "$(tail -1 "$RUNS_CSV")"
}

# Full handshakes: HS_CLIENTS `openssl s_time -new` processes at once, each a
# loop of connect, full handshake (never a resumed session), GET / over
# HTTP/1.0, read until the proxy closes. The run is timed here, as s_time
# rounds its own wall time to whole seconds.
measure_handshakes() {  # PROXY VERSION REP
  local proxy="$1" version="$2" rep="$3"
  local port="${PROXY_PORT[$proxy]}" pid="${PROXY_PID[$proxy]}"
  local cpu_before cpu_after start end i status=0 outputs=() sum
  cpu_before="$(python3 "$TOOL" cpu "$pid")"
  start="$(date +%s.%N)"
  FOREGROUND=()
  for ((i = 1; i <= HS_CLIENTS; i++)); do
    outputs+=("$WORK/runs/$proxy-hs$version-r$rep-$i.txt")
    "${LOAD_PIN[@]}" timeout "$((HS_SECONDS + 30))" openssl s_time -new -connect "127.0.0.1:$port" \
      -www / -time "$HS_SECONDS" "-tls${version/./_}" >"${outputs[-1]}" 2>&1 &
    FOREGROUND+=($!)
  done
  for i in "${FOREGROUND[@]}"; do wait "$i" || status=$?; done
  FOREGROUND=()
  end="$(date +%s.%N)"
  cpu_after="$(python3 "$TOOL" cpu "$pid")"
  alive "$pid" || die "$proxy died during the run: $(tail -5 "$WORK/logs/$proxy.log")"
  sum="$(python3 "$TOOL" s-time-sum "${outputs[@]}")" ||
    die "s_time failed against $proxy (status $status): $(tail -3 "${outputs[0]}")"
  local count bytes errors=0 detail="-"
  read -r count bytes <<<"$sum"
  # s_time stops at the first connection that fails.
  if ((status != 0)) || grep -qi "error" "${outputs[@]}"; then
    errors=1
    detail="s_time exit $status"
  fi
  ((bytes > 0)) || die "$proxy sent s_time no response: $(tail -3 "${outputs[0]}")"
  add_row "$proxy" "hs-$version" "$rep" "$count" "$(python3 -c "print($end - $start)")" \
    "$((cpu_after - cpu_before))" - - "$errors" "$bytes" "$detail"
}

measure_keepalive() {  # PROXY CONNS REP
  local proxy="$1" conns="$2" rep="$3"
  measure_wrk "$proxy" "$conns" "$WORK/runs/$proxy-c$conns-r$rep.txt"
  add_row "$proxy" "ka-c$conns" "$rep" "$WRK_REQUESTS" "$(python3 -c "print($WRK_DURATION_US / 1e6)")" \
    "$CPU_TICKS" "$WRK_P50" "$WRK_P99" "$WRK_ERRORS" - "$WRK_ERROR_KINDS"
}

# --- main -------------------------------------------------------------------
# Anything else running on the machine shows in the numbers: the report says
# how busy it was.
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"
make_certificate
start_backends
log "backends on ports ${BACKEND_PORTS[*]}"

((CHECK_ONLY)) && check_configs_and_exit

for proxy in $PROXIES; do start_proxy "$proxy"; done

warm_up_proxies

# Memory first, as in proxy_bench.sh: RSS rise over IDLE_CONNS idle TLS
# keep-alive connections (TLS 1.3, one request each), read 3 s after the last
# one opened.
MEMORY_JSONL="$WORK/memory.jsonl"
if ((IDLE_CONNS > 0)); then
  for proxy in $PROXIES; do
    log "memory: $IDLE_CONNS idle TLS keep-alive connections to $proxy"
    run_waited "${LOAD_PIN[@]}" timeout 600 python3 "$REPO/bench/proxy_bench.py" idle \
      --proxy "$proxy" --port "${PROXY_PORT[$proxy]}" --pid "${PROXY_PID[$proxy]}" \
      --count "$IDLE_CONNS" --settle 3 --tls-ca "$WORK/pki/ca.pem" --timeout 60 \
      >>"$MEMORY_JSONL" || die "idle-connection test of $proxy failed"
    log "$(tail -1 "$MEMORY_JSONL")"
    sleep 2
  done
fi

# Each repetition runs every test once per proxy, the proxies' order rotated
# by one per repetition, so that no proxy always runs first.
for ((rep = 1; rep <= REPS; rep++)); do
  for version in $HS_VERSIONS; do
    for proxy in $(rotated_proxies "$rep"); do
      measure_handshakes "$proxy" "$version" "$rep"
      sleep 1
    done
  done
  for conns in $CONNS; do
    for proxy in $(rotated_proxies "$rep"); do
      measure_keepalive "$proxy" "$conns" "$rep"
      sleep 1
    done
  done
done

python3 "$TOOL" report --runs "$RUNS_CSV" --proxies "$PROXIES" --reps "$REPS" \
  --clients "$HS_CLIENTS" | tee "$WORK/report.md"
if [[ -s "$MEMORY_JSONL" ]]; then
  {
    echo
    echo "| proxy | idle TLS keep-alive conns | RSS before KiB | RSS after KiB | bytes per idle conn |"
    echo "|---|---:|---:|---:|---:|"
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    print("| {proxy} | {connections} | {rss_before_kib:,} | {rss_after_kib:,} | {bytes_per_connection:,} |".format(**m))' "$MEMORY_JSONL"
  } | tee -a "$WORK/report.md"
fi
{
  echo
  echo "Host: $(nproc) CPUs, $(uname -r); $(openssl version | cut -d' ' -f1-2); key $KEY;" \
    "s_time -new x$HS_CLIENTS for ${HS_SECONDS}s; wrk -t$THREADS -d${DURATION}s;" \
    "$BACKENDS backends (tandem-worker --threads 1); $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3);" \
    "pinning: proxies ${PROXY_CPUS:-none}, load ${LOAD_CPUS:-none};" \
    "load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "Negotiated:"
  for proxy in $PROXIES; do sed 's/^/    /' "$WORK/logs/$proxy-negotiated.log"; done
} | tee -a "$WORK/report.md"
copy_results "$RUNS_CSV" "$WORK/report.md"
