#!/usr/bin/env bash
# berth's proxy against its peers, in one run (issue 14, point 7): nginx, HAProxy, Caddy
# and berth's standalone proxy as round-robin proxies over the same two nginx backends,
# each proxy on one core, measured by wrk with 64 connections and with one.
# Needs nginx (nginx-light), haproxy, caddy and wrk (Debian packages); Python from .venv.
#
#   bench/peers.sh                       # 10 s per measurement, after a 3 s warm-up
#   DURATION=3 WARMUP=1 bench/peers.sh   # quicker
#   PEERS="direct berth" bench/peers.sh  # a subset (while optimising)
#   BERTH_B_ARGS="--max-concurrency 1000 --balance least_request" PEERS=berth bench/peers.sh
#
# Knobs: DURATION, WARMUP, CONNS (64), PEERS (direct nginx haproxy caddy berth),
# ROUNDS (1: each cell the median of that many rounds, taken in turn), PROXY_CPU (the core
# every proxy is pinned to: the last one), LOAD_CPUS, QUIET_LOAD / QUIET_WAIT
# (wait up to QUIET_WAIT seconds, default 300, for a 1-minute load average under
# QUIET_LOAD, default 1.0, before measuring; 0 waits not at all), BERTH_ARGS (more options
# for berth's proxy), BERTH_B_ARGS (set: a second berth proxy with these options, "berth B",
# measured right after berth in every round, for an A/B in the same run), BERTH_B_TREE (a
# checkout whose proxy berth B runs instead, e.g. a `git worktree` of the commit before a
# change; setting it alone starts berth B with no extra options).
# Every process it starts runs under a private temp prefix and is ended by its PID.
set -euo pipefail

. "$(dirname "$0")/lib.sh" peers
CONNS="${CONNS:-64}"
PEERS="${PEERS:-direct nginx haproxy caddy berth}"
PROXY_CPU="${PROXY_CPU:-$(($(nproc) - 1))}"
# LOAD_CPUS: pin wrk and the backends there (unset: not pinned). On 2 cores that makes the
# load generator the bottleneck of the fast proxies (nginx read 23.5k instead of 35k), so
# the default leaves them to the scheduler, as the issue's figures were taken.
LOAD_CPUS="${LOAD_CPUS:-}"
export WRK_CPUS="$LOAD_CPUS"
QUIET_LOAD="${QUIET_LOAD:-1.0}"
QUIET_WAIT="${QUIET_WAIT:-300}"
ROUNDS="${ROUNDS:-1}"
wants() { [[ " $PEERS " == *" $1 "* ]]; }
for tool in haproxy caddy; do
  if wants "$tool" && ! command -v "$tool" >/dev/null; then
    echo "bench: $tool not found (apt-get install $tool)" >&2
    exit 1
  fi
done

B1=$(free_port); B2=$(free_port)
NP=$(free_port); HP=$(free_port); CP=$(free_port); BP=$(free_port); BBP=$(free_port)
BERTH_ARGS="${BERTH_ARGS:-}"
BERTH_B_ARGS="${BERTH_B_ARGS:-}"
BERTH_B_TREE="${BERTH_B_TREE:-}"
if [ -n "$BERTH_B_ARGS$BERTH_B_TREE" ] && wants berth && ! wants berth_b; then PEERS="$PEERS berth_b"; fi

nginx_conf backend1 "server { listen 127.0.0.1:$B1; location / { default_type text/plain; return 200 'hello from backend 1\n'; } }" ${LOAD_CPUS:+"$LOAD_CPUS"}
nginx_conf backend2 "server { listen 127.0.0.1:$B2; location / { default_type text/plain; return 200 'hello from backend 2\n'; } }" ${LOAD_CPUS:+"$LOAD_CPUS"}
PORTS=("$B1" "$B2")

if wants nginx; then
  nginx_conf rr "upstream backends { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 64; }
  server { listen 127.0.0.1:$NP; location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" "$PROXY_CPU"
  PORTS+=("$NP")
fi

if wants haproxy; then
  mkdir -p "$TMP/haproxy"
  cat >"$TMP/haproxy/haproxy.cfg" <<CONF
global
  nbthread 1
  cpu-map 1/1 $PROXY_CPU
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend peers
  bind 127.0.0.1:$HP
  default_backend backends
backend backends
  balance roundrobin
  http-reuse always
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
CONF
  taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy/haproxy.cfg" 2>"$TMP/haproxy/log" &
  PIDS+=($!)
  PORTS+=("$HP")
fi

if wants caddy; then
  mkdir -p "$TMP/caddy"
  cat >"$TMP/caddy/Caddyfile" <<CONF
{
  admin off
  auto_https off
}
http://127.0.0.1:$CP {
  reverse_proxy 127.0.0.1:$B1 127.0.0.1:$B2 {
    lb_policy round_robin
  }
}
CONF
  (cd "$TMP/caddy" && HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" XDG_DATA_HOME="$TMP/caddy" \
    GOMAXPROCS=1 exec taskset -c "$PROXY_CPU" caddy run --adapter caddyfile \
    --config "$TMP/caddy/Caddyfile" 2>"$TMP/caddy/log") &
  PIDS+=($!)
  PORTS+=("$CP")
fi

if wants berth; then
  # shellcheck disable=SC2086 # BERTH_ARGS: options, split on purpose
  (cd "$ROOT" && exec taskset -c "$PROXY_CPU" "$PY" -m proxy --listen "127.0.0.1:$BP" \
    --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" $BERTH_ARGS 2>"$TMP/berth.log") &
  PIDS+=($!)
  PORTS+=("$BP")
fi
if wants berth_b; then
  # shellcheck disable=SC2086
  (cd "${BERTH_B_TREE:-$ROOT}" && exec taskset -c "$PROXY_CPU" "$PY" -m proxy --listen "127.0.0.1:$BBP" \
    --upstream "127.0.0.1:$B1" --upstream "127.0.0.1:$B2" $BERTH_B_ARGS 2>"$TMP/berth_b.log") &
  PIDS+=($!)
  PORTS+=("$BBP")
fi

wait_ports "${PORTS[@]}"

load1() { cut -d' ' -f1 /proc/loadavg; }
if [ "$QUIET_WAIT" -gt 0 ]; then
  for _ in $(seq $((QUIET_WAIT / 10))); do
    "$PY" -c "import sys; sys.exit(float('$(load1)') >= float('$QUIET_LOAD'))" && break
    sleep 10
  done
fi
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# name, label, url
TARGETS=(
  "direct|direct, one nginx backend|http://127.0.0.1:$B1/"
  "nginx|nginx $("$NGINX" -v 2>&1 | sed 's|.*/||') (worker_processes 1)|http://127.0.0.1:$NP/"
  "haproxy|HAProxy $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}') (nbthread 1)|http://127.0.0.1:$HP/"
  "caddy|Caddy $(caddy version 2>/dev/null | awk '{print $1}') (GOMAXPROCS=1)|http://127.0.0.1:$CP/"
  "berth|berth (python -m proxy${BERTH_ARGS:+ $BERTH_ARGS})|http://127.0.0.1:$BP/"
  "berth_b|berth B (${BERTH_B_TREE:+$BERTH_B_TREE: }python -m proxy${BERTH_B_ARGS:+ $BERTH_B_ARGS})|http://127.0.0.1:$BBP/"
)
: >"$TMP/results"
for round in $(seq "$ROUNDS"); do
  for conns in "$CONNS" 1; do
    threads=$((conns > 1 ? 2 : 1))
    for target in "${TARGETS[@]}"; do
      IFS='|' read -r name label url <<<"$target"
      wants "$name" || continue
      echo "$name $conns $round $(measure "$url" "$threads" "$conns") $(cut -d' ' -f1 /proc/loadavg)" >>"$TMP/results"
    done
  done
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

echo "berth against its peers: $START, load average $LOAD_START at the start, $LOAD_END at the end"
echo "machine: $(nproc) x $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem/{print $2}') GiB, $(uname -sr); every proxy pinned to CPU $PROXY_CPU, wrk and the backends ${LOAD_CPUS:+on CPUs $LOAD_CPUS}${LOAD_CPUS:-not pinned}"
echo "wrk -t2 -c$CONNS -d${DURATION}s --latency and wrk -t1 -c1 -d${DURATION}s --latency, each after a ${WARMUP}s warm-up; $ROUNDS round(s), each cell the median"
for target in "${TARGETS[@]}"; do
  IFS='|' read -r name label url <<<"$target"
  wants "$name" && echo "$name|$label"
done >"$TMP/labels"
"$PY" - "$CONNS" "$TMP/results" "$TMP/labels" <<'PY'
import statistics
import sys

conns, path, labels = sys.argv[1], sys.argv[2], sys.argv[3]
rounds: dict[str, list[list[float]]] = {}
loads = []
for line in open(path):
    name, c, _, *vals, load = line.split()
    rounds.setdefault(f"{name},{c}", []).append([float(v) for v in vals])
    loads.append(float(load))
res = {k: [statistics.median(col) for col in zip(*v)] for k, v in rounds.items()}
width = max([38] + [len(line.rstrip("\n").partition("|")[2]) for line in open(labels)])
row = "{:<%d} {:>9} {:>8} {:>8}   {:>9} {:>8} {:>8}" % width
print(row.format("target", f"c{conns} rps", "p50 us", "p99 us", "c1 rps", "p50 us", "p99 us"))
for line in open(labels):
    name, _, label = line.rstrip("\n").partition("|")
    cells = res.get(f"{name},{conns}", [0, 0, 0]) + res.get(f"{name},1", [0, 0, 0])
    print(row.format(label, *(f"{v:.0f}" for v in cells)))
if len(next(iter(rounds.values()), [])) > 1:
    for key, vals in sorted(rounds.items()):
        print(f"  rounds {key}: req/s " + " ".join(f"{v[0]:.0f}" for v in vals))
print(f"1-minute load average before each measurement: {min(loads):.2f}-{max(loads):.2f}")
b, b1, d1 = res.get(f"berth,{conns}"), res.get("berth,1"), res.get("direct,1")
goals = []
if b is not None and (n := res.get(f"nginx,{conns}")) is not None:
    goals.append(f"berth/nginx req/s {b[0] / n[0]:.2f} (goal >= 0.5)")
    goals.append(f"p99 {b[2] / n[2]:.2f}x nginx's (goal <= 2)")
if b is not None and (c := res.get(f"caddy,{conns}")) is not None:
    goals.append(f"berth/Caddy req/s {b[0] / c[0]:.2f} (goal >= 1.3)")
if b is not None and (h := res.get(f"haproxy,{conns}")) is not None:
    goals.append(f"berth/HAProxy req/s {b[0] / h[0]:.2f}")
if b is not None and (bb := res.get(f"berth_b,{conns}")) is not None:
    goals.append(f"berth B/berth req/s {bb[0] / b[0]:.3f}")
if b1 is not None and d1 is not None:
    goals.append(f"added p50 at one connection {b1[1] - d1[1]:.0f} us (goal <= 100)")
if goals:
    print(f"c={conns}: " + "; ".join(goals[:-1] if b1 is not None and d1 is not None else goals))
    if b1 is not None and d1 is not None:
        print("c=1: " + goals[-1])
PY
