#!/usr/bin/env bash
# Proxy benchmark on loopback (issue 3): nginx backends, nginx as the reference proxy,
# berth's standalone proxy. Needs nginx (nginx-light) and wrk; Python from .venv.
#
#   bench/proxy.sh            # full run: 10 s per measurement, after a warm-up
#   DURATION=3 bench/proxy.sh # quicker
#
# Every process it starts runs under a private temp prefix and is ended by its PID.
set -euo pipefail

. "$(dirname "$0")/lib.sh" proxy
CONNS="${CONNS:-64}"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(free_port); B2=$(free_port); NP=$(free_port); BP=$(free_port)

nginx_conf() {  # $1 name, $2 server block
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
  "$NGINX" -p "$TMP/$1" -c "$TMP/$1/nginx.conf" &
  PIDS+=($!)
}

nginx_conf backend1 "server { listen 127.0.0.1:$B1; location / { default_type text/plain; return 200 'hello from backend 1\n'; } }"
nginx_conf backend2 "server { listen 127.0.0.1:$B2; location / { default_type text/plain; return 200 'hello from backend 2\n'; } }"
nginx_conf rr "upstream backends { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 64; }
  server { listen 127.0.0.1:$NP; location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
(cd "$ROOT" && exec "$PY" -m proxy --listen "127.0.0.1:$BP" --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" 2>"$TMP/berth.log") &
PIDS+=($!)

wait_ports $B1 $B2 $NP $BP

echo "berth proxy benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr), wrk -t2 -c$CONNS -d${DURATION}s"
read -r D_RPS D_P50 D_P99 < <(measure "http://127.0.0.1:$B1/" 2 "$CONNS")
read -r N_RPS N_P50 N_P99 < <(measure "http://127.0.0.1:$NP/" 2 "$CONNS")
read -r B_RPS B_P50 B_P99 < <(measure "http://127.0.0.1:$BP/" 2 "$CONNS")
read -r D1_RPS D1_P50 D1_P99 < <(measure "http://127.0.0.1:$B1/" 1 1)
read -r B1_RPS B1_P50 B1_P99 < <(measure "http://127.0.0.1:$BP/" 1 1)

printf '%-34s %10s %10s %10s\n' "target (c=$CONNS)" "req/s" "p50 us" "p99 us"
printf '%-34s %10s %10s %10s\n' "direct, one nginx backend" "$D_RPS" "$D_P50" "$D_P99"
printf '%-34s %10s %10s %10s\n' "nginx round robin (1 worker)" "$N_RPS" "$N_P50" "$N_P99"
printf '%-34s %10s %10s %10s\n' "berth proxy" "$B_RPS" "$B_P50" "$B_P99"
printf '%-34s %10s %10s %10s\n' "direct, one connection" "$D1_RPS" "$D1_P50" "$D1_P99"
printf '%-34s %10s %10s %10s\n' "berth, one connection" "$B1_RPS" "$B1_P50" "$B1_P99"
"$PY" - "$B_RPS" "$N_RPS" "$B1_P50" "$D1_P50" <<'PY'
import sys
b, n, b1, d1 = map(float, sys.argv[1:])
ratio, added = b / n, b1 - d1
print(f"berth/nginx = {ratio:.2f} (goal >= 0.35); added p50 at one connection = {added:.0f} us (goal <= 150)")
PY
