#!/usr/bin/env bash
# `make run`: start berthd with its state under ./.berth (in the background, logging to
# ./.berth/berthd.log), apply config/examples/echo.toml, wait for it, print the endpoint URL.
# berthd.toml: the file BERTH_CONFIG names, else ./berthd.toml when the checkout has one
# (passed as --config; berthd reads it at start: `make stop && make run` after editing it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=$root/.berth
sock=$state/berth.sock
venv=$root/.venv/bin
export BERTH_SOCKET=$sock
mkdir -p "$state"

config=()
if [ -n "${BERTH_CONFIG:-}" ]; then
  if [ ! -f "$BERTH_CONFIG" ]; then
    echo "run: BERTH_CONFIG=$BERTH_CONFIG is not a file" >&2
    exit 1
  fi
  config=(--config "$(realpath "$BERTH_CONFIG")")
elif [ -f "$root/berthd.toml" ]; then
  config=(--config "$root/berthd.toml")
fi

if [ -f "$state/berthd.pid" ] && kill -0 "$(cat "$state/berthd.pid")" 2>/dev/null; then
  echo "run: berthd already running (pid $(cat "$state/berthd.pid")); it read its settings" \
    "when it started: make stop && make run to start it with a changed berthd.toml"
else
  # --supervise: a small supervisor keeps the endpoints' sockets and restarts berthd if it
  # dies (docs/operations.md, "Restarts without refused connections"); its PID is the one kept.
  "$venv/berthd" --supervise "${config[@]}" --state-dir "$state" --socket "$sock" \
    >>"$state/berthd.log" 2>&1 &
  echo $! >"$state/berthd.pid"
  echo "run: started berthd --supervise (pid $!)${config[*]:+ ${config[*]}}, log in .berth/berthd.log"
fi
for _ in $(seq 1 300); do
  "$venv/berth" status >/dev/null 2>&1 && break
  if ! kill -0 "$(cat "$state/berthd.pid")" 2>/dev/null; then
    echo "run: berthd exited; the end of its log:" >&2
    tail -n 20 "$state/berthd.log" >&2
    exit 1
  fi
  sleep 0.2
done
"$venv/berth" apply config/examples/echo.toml --wait
"$venv/berth" ls
url=$("$venv/berth" ls --json | "$venv/python" -c 'import json,sys; print([d["endpoint"] for d in json.load(sys.stdin) if d["name"]=="echo"][0])')
echo
echo "echo is served at $url  (try: curl $url/cgi-bin/echo)"
curl -fsS "$url/cgi-bin/echo" || true
cat <<MSG

Drive it with the CLI:
  export BERTH_SOCKET=$sock PATH=$venv:\$PATH
  berth ls; berth get echo; berth logs echo; berth events
Stop berthd (the replicas keep running; the next berthd adopts them): make stop
MSG
