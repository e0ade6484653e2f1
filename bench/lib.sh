# Shell helpers shared by the benchmark scripts (sourced, not run). The script
# sets BENCH to its name first, for messages.

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

# --check: writes each proxy's config on a free port, has the proxy check it,
# prints the verdicts and exits (1 if any was rejected), keeping WORK. Uses the
# script's write_config PROXY PORT, check_config PROXY, PROXIES, TOOL and WORK.
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

# Warms every proxy up with WARMUP seconds of wrk at 10 connections. Uses the
# script's run_wrk PORT CONNS SECONDS OUT, PROXIES and PROXY_PORT.
warm_up_proxies() {
  local proxy
  for proxy in $PROXIES; do
    log "warm-up $proxy (${WARMUP}s)"
    run_wrk "${PROXY_PORT[$proxy]}" 10 "$WARMUP" "$WORK/runs/$proxy-warmup.txt" ||
      die "warm-up of $proxy failed: $(tail -3 "$WORK/runs/$proxy-warmup.txt")"
  done
}
