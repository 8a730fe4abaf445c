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

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nginx_conf() {  # $1 name, $2 its http {} body (server blocks), $3 CPU list to pin it to (optional)
  # Starts nginx (1 worker, under TMP/$1) and adds its PID to PIDS.
  mkdir -p "$TMP/$1"
  cat >"$TMP/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/$1/body;
  proxy_temp_path $TMP/$1/proxy;
  fastcgi_temp_path $TMP/$1/fastcgi;
  uwsgi_temp_path $TMP/$1/uwsgi;
  scgi_temp_path $TMP/$1/scgi;
  keepalive_requests 1000000;
  $2
}
CONF
  ${3:+taskset -c "$3"} "$NGINX" -p "$TMP/$1" -c "$TMP/$1/nginx.conf" &
  PIDS+=($!)
}

measure() {  # $1 url, $2 threads, $3 connections -> "rps p50 p99" (wrk's output in TMP/wrk.log)
  # WRK_CPUS: the CPU list wrk is pinned to (unset: not pinned).
  ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t"$2" -c"$3" -d"${WARMUP}s" "$1" >/dev/null
  ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t"$2" -c"$3" -d"${DURATION}s" --latency "$1" |
    tee -a "$TMP/wrk.log" | "$PY" "$ROOT/bench/parse_wrk.py"
}
