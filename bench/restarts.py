"""Issue 15: what a berthd crash or restart costs the clients of an endpoint under load.

A berthd of the bench's own (private state dir, socket and `podman system service`, traffic
to 127.0.0.1 only) runs a 2-replica echo deployment (localhost/berth-echo:1, `make image`);
8 client threads send requests to its endpoint the whole time (tests/e2e/restarts.py: a
refused connection is told from one cut in flight; a cut GET is sent again once, as an HTTP
client does for an idempotent request). Each mode restarts berthd --restarts times:

- supervise-kill: `berthd --supervise`, `kill -9` of the berthd child (the supervisor
  starts a new one with the listening sockets);
- supervise-usr2: `berthd --supervise`, SIGUSR2 (planned: the old child drains while the
  new one accepts); GETs and POSTs, one connection per request;
- systemd-kill / systemd-restart: this script as systemd (NOTIFY_SOCKET reader, LISTEN_FDS
  passer): `kill -9` then start, and SIGTERM, wait, start (`systemctl restart`).

Per mode: the requests that failed (refused, cut and failed again, an answer other than 200)
per restart, the GETs cut in flight and sent again, the time to serve again (from the kill,
or the signal, to the first 200 to a request sent after it: after a `kill -9` only the new
berthd can answer; after a SIGTERM the old one may, while it has not stopped accepting yet),
and the longest wait of a request sent around each restart (what a client saw: the backlog
wait, plus a cut GET's second try). Printed as a markdown table with the date, the load
average and the machine. Usage:
  .venv/bin/python bench/restarts.py [--restarts 10] [--modes supervise-kill,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.berthd import instance_id  # noqa: E402
from tests.conftest import remove_labelled_containers, socket_answers  # noqa: E402
from tests.e2e.berthd_process import Berthd  # noqa: E402
from tests.e2e.restarts import (  # noqa: E402
    FakeSystemd,
    RestartLoad,
    children_running,
    kill_now,
    supervised_child,
    wait_gone,
)
from tests.specs import echo_spec  # noqa: E402

IMAGE = "localhost/berth-echo:1"
NAME = "bench-restarts"
MODES = ("supervise-kill", "supervise-usr2", "systemd-kill", "systemd-restart")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def podman_service(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = root / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket_answers(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("podman system service did not answer")
        time.sleep(0.05)
    return proc, f"unix://{sock}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mode(mode: str, restarts: int, podman_url: str, root: Path) -> dict[str, object]:
    work = root / mode
    work.mkdir()
    daemon = Berthd(work / "state", work / "berth.sock", podman_url, work / "berthd.log")
    supervise = mode.startswith("supervise")
    if supervise:
        daemon.extra_args = ["--supervise"]
    systemd = None if supervise else FakeSystemd(daemon, work / "notify.sock")
    planned = mode in ("supervise-usr2", "systemd-restart")
    port = free_port()
    times: list[float] = []
    try:
        if systemd is None:
            daemon.start()
        else:
            systemd.start()
        spec = work / "spec.toml"
        spec.write_text(echo_spec(NAME, IMAGE, port))
        daemon.berth("apply", str(spec), "--wait", timeout=90)
        with RestartLoad(port, keep_alive=not planned, post=planned, max_seconds=300) as load:
            load.wait_ok_after(time.monotonic())
            marks: list[float] = []
            for _ in range(restarts):
                time.sleep(0.5)  # steady load between restarts
                marks.append(time.monotonic())
                times.append(restart_once(mode, daemon, systemd, load))
            time.sleep(1.0)
        counts = load.counts()
        waits = [load.longest_wait(m - 0.2, m + times[i] + 0.5) for i, m in enumerate(marks)]
        quiet = sorted(o.done - o.sent for o in load.outcomes if o.kind == "ok")
        return {
            "mode": mode,
            "requests": sum(counts.values()),
            "failed": sum(n for kind, n in counts.items() if kind != "ok"),
            "refused": counts["refused"],
            "retried": load.retried(),
            "times": times,
            "waits": waits,
            "p50": quiet[len(quiet) // 2] if quiet else 0.0,
        }
    finally:
        stop(daemon)
        if systemd is not None:
            systemd.close()
        remove_labelled_containers("podman", {"io.berth.instance": instance_id(work / "state")})


def restart_once(
    mode: str, daemon: Berthd, systemd: FakeSystemd | None, load: RestartLoad
) -> float:
    assert daemon.proc is not None
    if mode == "supervise-kill":
        child = supervised_child(daemon)
        t = kill_now(child)
        supervised_child(daemon, other_than=child)
    elif mode == "supervise-usr2":
        child = supervised_child(daemon)
        t = time.monotonic()
        daemon.send(signal.SIGUSR2)
        wait_gone(child)
    else:
        assert systemd is not None
        if mode == "systemd-kill":
            t = kill_now(daemon.proc.pid)
        else:
            t = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(timeout=60)
        systemd.start()
    return load.wait_ok_after(t) - t


def stop(daemon: Berthd) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    children = children_running(daemon.proc.pid, b"daemon.main")
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        daemon.proc.wait(timeout=60)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def table(results: list[dict[str, object]], restarts: int) -> str:
    lines = [
        "| mode | restarts | requests | failed | refused | failed per restart | GETs cut and "
        "sent again | time to serve again: median / max (s) | longest wait of a request: "
        "median / max (s) | p50 of all (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        times: list[float] = r["times"]  # type: ignore[assignment]
        waits: list[float] = r["waits"]  # type: ignore[assignment]
        failed = int(str(r["failed"]))
        lines.append(
            f"| {r['mode']} | {restarts} | {r['requests']} | {failed} | {r['refused']} | "
            f"{failed / restarts:.1f} | {r['retried']} | "
            f"{statistics.median(times):.2f} / {max(times):.2f} | "
            f"{statistics.median(waits):.2f} / {max(waits):.2f} | "
            f"{float(str(r['p50'])) * 1000:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    root = Path(tempfile.mkdtemp(prefix="berth-bench-rs-", dir="/tmp"))
    service, url = podman_service(root)
    load_before = os.getloadavg()
    results = []
    try:
        for mode in modes:
            results.append(run_mode(mode, args.restarts, url, root))
            print(f"{mode}: {results[-1]}", flush=True)
    finally:
        service.terminate()
        service.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    print()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {machine()}; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.2f}' for x in load_after)} after"
    )
    print(table(results, args.restarts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
