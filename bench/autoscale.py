"""Issue 5's benchmark: how fast berth reacts, end to end, with real Podman replicas.

1. Reaction time: a `concurrency` deployment (target 1 in flight per replica) at 1 replica;
   a load step (4 clients looping on /cgi-bin/sleep?0.5); the time until a second replica
   serves a request. Printed beside its parts: container start and readiness, taken from
   berthd's events, so the goal "start + readiness + at most 1 s" can be read off.
2. Cold start: a `min = 0` deployment idles down to zero; then one request is timed until
   its answer (held at the endpoint while a replica starts), against the same parts.

It runs its own berthd on a private state dir and socket (traffic to 127.0.0.1 only), ends
it by PID and removes the containers it made. Usage: .venv/bin/python bench/autoscale.py
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchlib import Daemon, free_port, stamp, wait

IMAGE = "localhost/berth-echo:1"
SPEC = """
name = "{name}"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
min = {min}
max = 3
[[autoscale.metrics]]
metric = "concurrency"
target = 1
[autoscale]
scale_down_delay = "{delay}"
[health.readiness]
path = "/health"
period = "250ms"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def parts(events: list[dict[str, str]], after: float) -> tuple[float, float]:
    """(container start, readiness) of the first replica created after `after` (wall clock)."""
    created = [e for e in events if e["kind"] == "created" and stamp(e["time"]) >= after]
    if not created:
        return float("nan"), float("nan")
    rid = created[0]["replica"]
    ready = [e for e in events if e["kind"] == "ready" and e["replica"] == rid]
    t_created = stamp(created[0]["time"])
    return t_created - after, (stamp(ready[0]["time"]) - t_created) if ready else float("nan")


def reaction(d: Daemon) -> None:
    port = free_port()
    spec = d.root / "react.toml"
    spec.write_text(SPEC.format(name="react", image=IMAGE, min=1, delay="1m", port=port))
    d.berth("apply", str(spec), "--wait")
    first = {r["id"] for r in d.get("react")["replicas"]}
    seen: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(400):
                if stop.is_set():
                    return
                r = c.get(f"http://127.0.0.1:{port}/cgi-bin/sleep?0.5")
                m = re.search(r"replica=(\S+)", r.text)
                if m:
                    seen.add(m.group(1))

    hosts = {r["container_id"][:12] for r in d.get("react")["replicas"]}
    t0, wall0 = time.monotonic(), time.time()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    wait(lambda: bool(seen - hosts), 60, "a second replica to serve", every=0.05)
    took = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=15)
    start, ready = parts(d.events("react"), wall0)
    print(
        f"reaction: load step -> second replica serving {took:.2f}s "
        f"(scale decision + create {start:.2f}s, container start -> ready {ready:.2f}s, "
        f"first replicas {sorted(first)})"
    )


def cold_start(d: Daemon) -> None:
    port = free_port()
    spec = d.root / "cold.toml"
    spec.write_text(SPEC.format(name="cold", image=IMAGE, min=0, delay="3s", port=port))
    d.berth("apply", str(spec))
    wait(lambda: d.get("cold")["replicas"] == [], 90, "scale to zero", every=0.05)
    wall0, t0 = time.time(), time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/cgi-bin/echo", timeout=120)
    took = time.monotonic() - t0
    start, ready = parts(d.events("cold"), wall0)
    print(
        f"cold start: first request answered {r.status_code} in {took:.2f}s "
        f"(decision + create {start:.2f}s, container start -> ready {ready:.2f}s)"
    )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="berth-bench-scale-"))
    d = Daemon(root)
    print(
        f"berth autoscale benchmark: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
        f"{os.cpu_count()} cores, real Podman"
    )
    try:
        reaction(d)
        cold_start(d)
    finally:
        d.stop()
        d.log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
