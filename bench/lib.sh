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
