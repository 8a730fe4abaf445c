# Sourced by the bench/*.sh scripts: paths, knobs, tool checks, and a temp dir whose
# processes (their PIDs in PIDS) are ended, and which is removed, when the script exits.
# Usage: . "$(dirname "$0")/lib.sh" NAME
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-3}"
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "bench: nginx not found (apt-get install nginx-light)" >&2; exit 1; }

TMP="$(mktemp -d "/tmp/berth-bench-${1:-run}.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_ports() {  # each 127.0.0.1 port in "$@" accepts a connection (10 s each at most)
  local port
  for port in "$@"; do
    for _ in $(seq 100); do
      "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && break
      sleep 0.1
    done
  done
}

measure() {  # $1 url, $2 threads, $3 connections -> "rps p50 p99" (wrk's output in TMP/wrk.log)
  wrk -t"$2" -c"$3" -d"${WARMUP}s" "$1" >/dev/null
  wrk -t"$2" -c"$3" -d"${DURATION}s" --latency "$1" | tee -a "$TMP/wrk.log" | "$PY" "$ROOT/bench/parse_wrk.py"
}
