#!/usr/bin/env bash
# Issue 4's benchmark: does probing 100 replicas every second disturb the proxy?
# berth's proxy (over two nginx backends) on one trio loop, measured with wrk -t2 -c64
# twice in one run: with no probes, then while the same loop probes 100 replica ports
# (one nginx listening on 100 ports, GET /health) every second with berthd's probe code.
#
#   bench/health.sh            # 10 s per measurement
#   DURATION=3 bench/health.sh
#
# Every process it starts runs under a private temp prefix and is ended by its PID.
set -euo pipefail

. "$(dirname "$0")/lib.sh" health
REPLICAS="${REPLICAS:-100}"

ports=$("$PY" - "$((REPLICAS + 3))" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
read -r -a P <<<"$ports"
B1=${P[0]}; B2=${P[1]}; BP=${P[2]}; PROBE_PORTS=("${P[@]:3}")

listens=""
for p in "${PROBE_PORTS[@]}"; do listens+="listen 127.0.0.1:$p; "; done
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi; uwsgi_temp_path $TMP/nginx/uwsgi; scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; location / { default_type text/plain; return 200 'hello\n'; } }
  server { $listens location /health { default_type text/plain; return 200 'ok\n'; } }
}
CONF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
PIDS+=($!)
sleep 0.5

run() {  # $@: extra probe_load args -> prints "rps p50 p99" and the probe count
  (cd "$ROOT" && exec "$PY" bench/probe_load.py --listen "127.0.0.1:$BP" \
     --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" "$@" >"$TMP/probe.out" 2>&1) &
  local pid=$!
  for _ in $(seq 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$BP),0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  wrk -t2 -c64 -d"${WARMUP}s" "http://127.0.0.1:$BP/" >/dev/null
  wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$BP/" | "$PY" "$ROOT/bench/parse_wrk.py"
  kill -TERM "$pid"; wait "$pid" || true
  cat "$TMP/probe.out" >&2
}

probe_args=()
for p in "${PROBE_PORTS[@]}"; do probe_args+=(--probe-port "$p"); done
echo "berth probe-load benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr), wrk -t2 -c64 -d${DURATION}s"
run >"$TMP/base.txt"
run "${probe_args[@]}" --period 1 >"$TMP/probed.txt"
read -r A_RPS A_P50 A_P99 <"$TMP/base.txt"
read -r B_RPS B_P50 B_P99 <"$TMP/probed.txt"
printf '%-40s %10s %10s %10s\n' "berth proxy" "req/s" "p50 us" "p99 us"
printf '%-40s %10s %10s %10s\n' "no probes" "$A_RPS" "$A_P50" "$A_P99"
printf '%-40s %10s %10s %10s\n' "$REPLICAS replicas probed every second" "$B_RPS" "$B_P50" "$B_P99"
