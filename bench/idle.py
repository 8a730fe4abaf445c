"""Issue 11's idle benchmark: what berthd and its Podman service cost while nothing happens.

10 deployments x 2 replicas of the busybox echo image, readiness probed every second (or
`--period`), all ready; then berthd's CPU and the Podman service's CPU are read (psutil, by
the PIDs this script started) over `--seconds` (60 by default) and printed as % of one core,
with the load average before and after (the box is shared: a noisy one shows there). Then
berthd is paused (SIGSTOP) for `--floor` seconds (30; 0 skips it) and the Podman service's
CPU read alone: its own floor with those containers and berthd's event stream open, so what
berthd's calls add to it can be told apart (berthd is resumed with SIGCONT).

It starts its own `podman system service` on a private socket and its own berthd (private
state dir and socket, `--podman-url` that socket), so both PIDs are its own; traffic goes to
127.0.0.1 only. At the end it ends berthd and the service by PID and removes the containers
it made (by berthd's instance label). Usage: .venv/bin/python bench/idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchlib import free_port, remove_instance_containers, wait

# This checkout's code, whichever checkout the script is in (`python -m` from its root, so
# that an editable install elsewhere does not win): a worktree of an older commit measures
# that commit.
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
IMAGE = "localhost/berth-echo:1"
DEPLOYMENTS = 10
REPLICAS = 2
SPEC = """
name = "{name}"
image = "{image}"
command = ["httpd", "-f", "-p", "8080", "-h", "/www"]
port = 8080
stop_timeout = "1s"
[replicas]
count = {replicas}
[health.readiness]
path = "/health"
period = "{period}"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            return b" 200" in s.recv(64)[:16]
    except OSError:
        return False


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "berth.sock"
        self.podman_sock = root / "podman.sock"
        self.instance = ""
        self.service_log = (root / "podman-service.log").open("wb")
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.podman_sock}"],
            stdin=subprocess.DEVNULL,
            stdout=self.service_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait(lambda: answers(self.podman_sock), 30, "the Podman service")
        self.log = (root / "berthd.log").open("wb")
        self.berthd = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.main",
                "--state-dir",
                str(root / "state"),
                "--socket",
                str(self.sock),
                "--podman-url",
                f"unix://{self.podman_sock}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=ENV,
        )
        wait(lambda: self.berth("status", check=False).returncode == 0, 60, "berthd")
        self.instance = json.loads(self.berth("status", "--json").stdout)["instance"]

    def berth(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "daemon.cli.main", "--socket", str(self.sock), *args],
            capture_output=True,
            cwd=REPO,
            env=ENV,
            text=True,
            timeout=180,
            check=False,
        )
        if check and result.returncode:
            raise SystemExit(f"berth {' '.join(args)}: {result.stderr}")
        return result

    def ready(self, deployments: int) -> int:
        total = 0
        for i in range(deployments):
            got = json.loads(self.berth("get", f"idle-{i}", "--json").stdout)
            total += sum(1 for r in got["replicas"] if r["state"] == "ready")
        return total

    def end(self) -> None:
        for proc in (self.berthd, self.service):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        remove_instance_containers(self.instance)
        self.log.close()
        self.service_log.close()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=DEPLOYMENTS, help="of 2 replicas")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured for this long")
    parser.add_argument("--period", default="1s", help="readiness period of every replica")
    parser.add_argument("--settle", type=float, default=10.0, help="wait after all are ready")
    parser.add_argument("--floor", type=float, default=30.0, help="berthd paused this long")
    parser.add_argument(
        "--attach",
        metavar="COMMAND",
        help="run COMMAND over the measured time, {pid} replaced by berthd's PID, ended by "
        "SIGINT at the end (e.g. 'strace -c -f -o /tmp/s.txt -p {pid}', or py-spy record)",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="berth-bench-idle-"))
    run = Run(root)
    try:
        for i in range(args.deployments):
            spec = root / f"idle-{i}.toml"
            spec.write_text(
                SPEC.format(
                    name=f"idle-{i}",
                    image=IMAGE,
                    replicas=REPLICAS,
                    period=args.period,
                    port=free_port(),
                )
            )
            run.berth("apply", str(spec))
        wanted = args.deployments * REPLICAS
        wait(lambda: run.ready(args.deployments) == wanted, 240, f"{wanted} ready replicas")
        time.sleep(args.settle)  # creates, first probes and their rounds are over
        procs = {
            "berthd": psutil.Process(run.berthd.pid),
            "podman": psutil.Process(run.service.pid),
        }
        load_before = os.getloadavg()
        before = {k: cpu_seconds(p) for k, p in procs.items()}
        t0 = time.monotonic()
        tool = None
        if args.attach:
            command = shlex.split(args.attach.replace("{pid}", str(run.berthd.pid)))
            tool = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        time.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        if tool is not None:
            tool.send_signal(signal.SIGINT)
            tool.wait(timeout=60)
        after = {k: cpu_seconds(p) for k, p in procs.items()}
        load_after = os.getloadavg()
        floor = None
        if args.floor > 0:
            run.berthd.send_signal(signal.SIGSTOP)
            try:
                paused = cpu_seconds(procs["podman"])
                time.sleep(args.floor)
                floor = 100.0 * (cpu_seconds(procs["podman"]) - paused) / args.floor
            finally:
                run.berthd.send_signal(signal.SIGCONT)
        still = run.ready(args.deployments)
        share = {k: 100.0 * (after[k] - before[k]) / elapsed for k in procs}
        print(
            f"berth idle benchmark: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
            f"{os.cpu_count()} cores, real Podman; {args.deployments} deployments x {REPLICAS} "
            f"replicas, readiness every {args.period}, {still}/{wanted} ready at the end"
        )
        print(
            f"idle over {elapsed:.0f}s: berthd {share['berthd']:.2f} % of a core, "
            f"Podman service {share['podman']:.2f} % "
            f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)"
        )
        if floor is not None:
            print(f"Podman service with berthd paused for {args.floor:.0f}s: {floor:.2f} %")
    finally:
        run.end()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
