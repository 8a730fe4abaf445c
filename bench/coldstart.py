"""Issue 12's cold-start benchmark: a real model server with a slow load, apply -> first answer.

The model-server image (localhost/berth-model-server:1, `make image`) loads its model for
LOAD_SECONDS from its process start. Each run applies a fresh deployment of it (startup probe
on /v2/health/ready and readiness on /v2/models/tiny/ready, both every --period), then POSTs
an inference to the endpoint every 50 ms until one is answered 200, and splits the time:

- total: `berth apply` starts -> the first 200 through the endpoint;
- server's own: its process start -> its model loaded (interpreter and uvicorn start, then the
  load), from the server's own /metrics (model_server_process_start_timestamp_seconds and
  model_loaded_timestamp_seconds: wall clock, read in the container from the same kernel);
- berth adds: total - server's own, in two parts: before (apply -> the server's process
  starts: the apply, the worker's round, Podman's create and start) and after (model loaded
  -> first 200: the startup and readiness probes noticing it, up to one period each, and the
  endpoint taking the replica in; plus up to 50 ms of this script's polling).
berthd's events give the "created" and "ready" stamps in between.

It runs its own berthd on a private state dir and socket (traffic to 127.0.0.1 only), ends
it by PID and removes the containers it made. Usage:
  .venv/bin/python bench/coldstart.py [--load 10] [--runs 3] [--period 1s]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import Daemon, free_port, stamp
from prometheus_client.parser import text_string_to_metric_families

IMAGE = "localhost/berth-model-server:1"
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
SPEC = """
name = "{name}"
image = "{image}"
port = 8000
stop_timeout = "5s"
[env]
LOAD_SECONDS = "{load}"
[resources]
cpus = 1
memory = "256Mi"
[health.startup]
path = "/v2/health/ready"
period = "{period}"
timeout_total = "10m"
[health.readiness]
path = "/v2/models/tiny/ready"
period = "{period}"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def event_times(d: Daemon, name: str) -> dict[str, float]:
    """The first time of each event kind for this deployment (wall clock)."""
    times: dict[str, float] = {}
    for event in d.events(name, limit=200):
        times.setdefault(event["kind"], stamp(event["time"]))
    return times


def gauges(text: str, *names: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                found[sample.name] = float(sample.value)
    return found


def one_run(d: Daemon, run: int, load: float, period: str) -> dict[str, float]:
    name, port = f"coldstart-{run}", free_port()
    spec = d.root / f"{name}.toml"
    spec.write_text(SPEC.format(name=name, image=IMAGE, load=load, period=period, port=port))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + load + 120
    with httpx.Client(timeout=10) as client:
        applied = time.time()
        d.berth("apply", str(spec))
        answered = None
        for _ in range(int((load + 120) / 0.05)):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            try:
                response = client.post(f"{url}/v2/models/tiny/infer", json=INFER)
            except httpx.TransportError:  # the endpoint is not bound yet
                response = None
            if response is not None and response.status_code == 200:
                answered = time.time()
                break
            time.sleep(0.05)
        if answered is None:
            raise SystemExit(f"{name}: no 200 within {load + 120:.0f}s of the apply")
        metrics = gauges(
            client.get(f"{url}/metrics").text,
            "model_server_process_start_timestamp_seconds",
            "model_loaded_timestamp_seconds",
            "model_load_duration_seconds",
        )
    events = event_times(d, name)
    d.berth("rm", name)
    started, loaded = (
        metrics["model_server_process_start_timestamp_seconds"],
        metrics["model_loaded_timestamp_seconds"],
    )
    total, own = answered - applied, loaded - started
    return {
        "total": total,
        "own": own,
        "load": metrics["model_load_duration_seconds"],
        "added": total - own,
        "before": started - applied,
        "after": answered - loaded,
        "created": events.get("created", float("nan")) - applied,
        "ready": events.get("ready", float("nan")) - loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load", type=float, default=10.0, help="LOAD_SECONDS (10)")
    parser.add_argument("--runs", type=int, default=3, help="runs (3)")
    parser.add_argument("--period", default="1s", help="startup and readiness period (1s)")
    args = parser.parse_args()
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        raise SystemExit(
            f"{IMAGE} is missing: run `make image` (scripts/build-model-server-image.sh)"
        )
    root = Path(tempfile.mkdtemp(prefix="berth-bench-cold-"))
    load_before = os.getloadavg()
    print(
        f"berth cold-start benchmark: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average {load_before[0]:.2f}, real Podman, "
        f"LOAD_SECONDS={args.load:g}, probes every {args.period}"
    )
    d = Daemon(root)
    rows = []
    try:
        for run in range(1, args.runs + 1):
            rows.append(one_run(d, run, args.load, args.period))
    finally:
        d.stop()
        d.log.close()
        shutil.rmtree(root, ignore_errors=True)
    header = (
        f"{'run':>3} {'apply->200':>10} {'server own':>10} {'(load)':>7} {'berth adds':>10} "
        f"{'before':>7} {'after':>7} {'created':>8} {'ready':>7}"
    )
    print(header)
    for i, r in enumerate(rows, 1):
        print(
            f"{i:>3} {r['total']:>9.2f}s {r['own']:>9.2f}s {r['load']:>6.2f}s {r['added']:>9.2f}s "
            f"{r['before']:>6.2f}s {r['after']:>6.2f}s {r['created']:>7.2f}s {r['ready']:>6.2f}s"
        )
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(
        f"mean {mean['total']:>8.2f}s {mean['own']:>9.2f}s {mean['load']:>6.2f}s "
        f"{mean['added']:>9.2f}s {mean['before']:>6.2f}s {mean['after']:>6.2f}s "
        f"{mean['created']:>7.2f}s {mean['ready']:>6.2f}s"
    )
    print(
        "before: apply -> the server's process starts; after: model loaded -> first 200; "
        "created: apply -> berth's 'created' event; ready: model loaded -> berth's 'ready' event"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
