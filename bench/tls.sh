#!/usr/bin/env bash
# The cost of TLS at an endpoint (issue 13, point 2): berth's standalone proxy in front of
# one nginx backend, plain and with TLS (a trustme certificate, TLS 1.3), in the same run,
# by wrk over kept-alive connections (the handshake once per connection, then records).
#
#   bench/tls.sh             # 10 s per measurement, after a warm-up
#   DURATION=3 bench/tls.sh  # quicker
#
# Every process it starts runs under a private temp prefix and is ended by its PID.
set -euo pipefail

. "$(dirname "$0")/lib.sh" tls
CONNS="${CONNS:-64}"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(free_port); PLAIN=$(free_port); TLS=$(free_port)

"$PY" - "$TMP" <<'PY'
import sys, trustme
cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
cert.private_key_and_cert_chain_pem.write_to_path(f"{sys.argv[1]}/cert.pem")
cert.private_key_pem.write_to_path(f"{sys.argv[1]}/key.pem")
PY

mkdir -p "$TMP/backend"
cat >"$TMP/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/backend/body;
  proxy_temp_path $TMP/backend/proxy;
  fastcgi_temp_path $TMP/backend/fastcgi;
  uwsgi_temp_path $TMP/backend/uwsgi;
  scgi_temp_path $TMP/backend/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location / { default_type text/plain; return 200 'hello from backend 1\n'; } }
}
CONF
"$NGINX" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" &
PIDS+=($!)
(cd "$ROOT" && exec "$PY" -m proxy --listen "127.0.0.1:$PLAIN" --upstream "127.0.0.1:$B1" 2>"$TMP/plain.log") &
PIDS+=($!)
(cd "$ROOT" && exec "$PY" -m proxy --listen "127.0.0.1:$TLS" --upstream "127.0.0.1:$B1" \
  --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" 2>"$TMP/tls.log") &
PIDS+=($!)

wait_ports $B1 $PLAIN $TLS

echo "berth TLS benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr), $(openssl version 2>/dev/null | cut -d' ' -f1-2), wrk -d${DURATION}s"
read -r P_RPS P_P50 P_P99 < <(measure "http://127.0.0.1:$PLAIN/" 2 "$CONNS")
read -r T_RPS T_P50 T_P99 < <(measure "https://127.0.0.1:$TLS/" 2 "$CONNS")
read -r P1_RPS P1_P50 P1_P99 < <(measure "http://127.0.0.1:$PLAIN/" 1 1)
read -r T1_RPS T1_P50 T1_P99 < <(measure "https://127.0.0.1:$TLS/" 1 1)

printf '%-34s %10s %10s %10s\n' "berth proxy (c=$CONNS)" "req/s" "p50 us" "p99 us"
printf '%-34s %10s %10s %10s\n' "plain HTTP" "$P_RPS" "$P_P50" "$P_P99"
printf '%-34s %10s %10s %10s\n' "TLS" "$T_RPS" "$T_P50" "$T_P99"
printf '%-34s %10s %10s %10s\n' "plain HTTP, one connection" "$P1_RPS" "$P1_P50" "$P1_P99"
printf '%-34s %10s %10s %10s\n' "TLS, one connection" "$T1_RPS" "$T1_P50" "$T1_P99"
"$PY" - "$P_RPS" "$T_RPS" "$P1_P50" "$T1_P50" <<'PY'
import sys
p, t, p1, t1 = map(float, sys.argv[1:])
print(f"TLS/plain req/s = {t / p:.2f} (c=64); added p50 at one connection = {t1 - p1:.0f} us")
PY
grep -i "error\|traceback" "$TMP/tls.log" "$TMP/plain.log" >&2 || true
