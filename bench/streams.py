"""Issue 14, point 6: long-lived streams held through one berth endpoint, against direct.

A real berthd (benchlib.Daemon: private state dir and socket) runs one Podman replica of
localhost/berth-model-server:1 (`make image`) whose command is BACKEND below, a stdlib
asyncio server (the image's Python; no trio there): `GET /sse` answers a chunked
`text/event-stream`, `GET /ws` a WebSocket upgrade, and each stream then gets one event a
second, `--events` of them, each carrying the replica's wall clock when it was written
(`data: 1764600000.123456`, or a text frame of the same). Stream i of N sends at
`start + i/N + k` seconds, so the load is spread evenly over each second rather than N
events in one burst (a burst would measure queueing in the client, not the proxy), and no
stream sends before `start`, by when every stream has been opened.

The client is this script run as `--worker` processes (`--workers`, trio over raw
sockets), each holding its share of the streams. A received event's delay is the client's
wall clock when the read returned minus the stamp in it (the replica's container and this
host read the same kernel clock). The same client, with the same N, E and workers, runs
twice: direct to the replica's published port (127.0.0.1:HOSTPORT), then through the
endpoint (client -> berthd -> the same published port); what berth adds is the difference
of the two distributions (p50, p99). Both paths cross the same Podman port mapping.

berthd's garbage collections over 20 ms (proxy/gc_policy.py logs each) from `start` to the
phase's end are counted from its log and shown. berthd's RSS (psutil, by the PID benchlib
started) is read before the proxied streams
open, at `start` (every stream open, none has sent yet) and every 0.5 s until the phase
ends (the peak); growth per stream = (RSS at start - RSS before) / streams open at start.
CPU seconds of berthd, the replica's process and the client workers over each phase show
which side is busy; "others" is every core's busy time over the phase less those: other
sessions' work on a shared box, which says when a figure is not to be trusted. Before each
phase the script waits (5 min at most) for the 1-minute load to fall under --quiet-load,
and a pair (direct, berth) during which others used over half a core on average is measured
again with a fresh berthd (--retries, 2), every attempt shown.
Each phase is bounded: `start + events + 70` s at most. With --slow-step-ms N, berthd runs
with BERTH_SLOW_STEP_MS=N (daemon/system/slow_steps.py): its trio steps over N ms from
`start` to the phase's end are shown with their task and where they ran, and its summary of
every step (bins) once it has stopped. --client-batch runs the client workers under
SCHED_BATCH (--client-nice N: under nice), in both phases: on a 2-core box the client shares
the cores with berthd, and a client woken by berthd's send otherwise preempts it
(docs/benchmarks.md, 18:55-19:13Z).

It removes the deployment's containers and ends berthd and its workers by PID. Usage:
  .venv/bin/python bench/streams.py [--streams 9000] [--events 20] [--ws 1000] [--workers 4]
"""

from __future__ import annotations

import argparse
import array
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil
import trio
from benchlib import Daemon, free_port, wait

# This checkout's berthd and berth (`python -m` from its root, as bench/idle.py does), so that
# an export of a commit (`git archive HEAD | tar -x -C DIR`) measures that commit and not the
# shared working tree's half-made edits or an editable install elsewhere.
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
sys.path.insert(0, str(REPO))
from proxy.admission import default_budget  # noqa: E402 - this checkout's

IMAGE = "localhost/berth-model-server:1"
NAME = "streams"
CONNECTS_AT_ONCE = 64  # per worker: opening streams, never more connects in flight

BACKEND = r"""
import asyncio, base64, hashlib, math, socket, sys, time
from urllib.parse import parse_qs, urlsplit
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B56"
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")

def sse(stamp):
    body = b"data: " + stamp + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(body), body)

def ws(stamp):
    return bytes((0x81, len(stamp))) + stamp

class Stream(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""
    def data_received(self, data):
        if self.buf is None:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        lines = self.buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        self.buf = None
        target = urlsplit(lines[0].split(" ")[1])
        pairs = (h.partition(":") for h in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        q = {k: v[0] for k, v in parse_qs(target.query).items()}
        if target.path == "/health":
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            self.t.close()
            return
        if target.path == "/sse":
            self.t.write(SSE_HEAD)
            self.frame, self.end = sse, b"0\r\n\r\n"
        elif target.path == "/ws":
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.frame, self.end = ws, b""
        else:
            self.t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.buf = b""
            return
        self.left = int(q["events"])
        self.at = float(q["start"]) + float(q["slot"])
        now = time.time()
        if self.at < now:  # opened late (it waited for a slot): from its next second
            self.at += math.ceil(now - self.at)
        self.schedule()
    def schedule(self):
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + (self.at - time.time()), self.fire)
    def fire(self):
        if self.t.is_closing():
            return
        self.t.write(self.frame(b"%.6f" % time.time()))
        self.left -= 1
        if self.left > 0:
            self.at += 1.0
            self.schedule()
        elif self.end:  # an SSE response ends; the connection may carry another request
            self.t.write(self.end)
            self.buf = b""

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stream, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()

asyncio.run(main())
"""

SPEC = """
name = "{name}"
image = "{image}"
command = ["python3", "-c", '''{backend}''', "8080"]
port = 8080
stop_timeout = "1s"
[replicas]
count = 1
[resources.ulimits]
nofile = {nofile}
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


# ---- the client: one worker process ------------------------------------------------------


@dataclass
class Tally:
    opened: int = 0  # streams whose response head (200 or 101) arrived
    opened_late: int = 0  # of those, after `start` (they waited, e.g. in a listen backlog)
    complete: int = 0  # streams that got every event
    events: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    delays: array.array[float] = field(default_factory=lambda: array.array("d"))
    # Each delay's event number in its stream (same order): which second a slow one was in
    # (the last: the second in which every stream ends and the proxy tears it down).
    index: array.array[int] = field(default_factory=lambda: array.array("B"))

    before_head: int = 0  # streams that failed before their response head

    def error(self, what: str, count: int = 1) -> None:
        self.errors[what] = self.errors.get(what, 0) + count


def _request(kind: str, slot: float, events: int, start: float) -> bytes:
    query = f"events={events}&start={start:.6f}&slot={slot:.6f}"
    if kind == "sse":
        return (
            f"GET /sse?{query} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?{query} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _sse_events(buf: bytes, now: float, delays: array.array[float]) -> tuple[bytes, int]:
    got = 0
    while True:
        a = buf.find(b"data: ")
        if a < 0:
            return buf, got
        b = buf.find(b"\n\n", a)
        if b < 0:
            return buf, got
        delays.append(now - float(buf[a + 6 : b]))
        buf = buf[b + 2 :]
        got += 1


def _ws_messages(buf: bytes, now: float, delays: array.array[float]) -> tuple[bytes, int]:
    got = 0
    while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
        n = buf[1] & 0x7F
        delays.append(now - float(buf[2 : 2 + n]))
        buf = buf[2 + n :]
        got += 1
    return buf, got


async def _one_stream(
    kind: str, address: tuple[str, int], slot: float, events: int, start: float,
    connects: trio.Semaphore, tally: Tally,
) -> None:  # fmt: skip
    """One stream, start to end, counted in `tally`."""
    state = {"opened": False}
    with trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            await _stream(sock, kind, address, slot, events, start, connects, tally, state)
        except OSError as exc:
            if state["opened"]:
                tally.error(f"after the head: {exc.strerror}")
            else:
                tally.error(f"before the head: {exc.strerror}")
                tally.before_head += 1


async def _stream(
    sock: trio.socket.SocketType, kind: str, address: tuple[str, int], slot: float,
    events: int, start: float, connects: trio.Semaphore, tally: Tally, state: dict[str, bool],
) -> None:  # fmt: skip
    async with connects:
        await sock.connect(address)
        await sock.send(_request(kind, slot, events, start))
    buf, want = b"", b" 200 " if kind == "sse" else b" 101 "
    while b"\r\n\r\n" not in buf:  # the response head
        data = await sock.recv(65536)
        if not data:
            tally.error("closed before the response head")
            tally.before_head += 1
            return
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    if want not in head.split(b"\r\n", 1)[0]:
        tally.error(f"status {head.split(b' ', 2)[1].decode()}")
        tally.before_head += 1
        return
    state["opened"] = True
    tally.opened += 1
    if time.time() > start:
        tally.opened_late += 1
    parse = _sse_events if kind == "sse" else _ws_messages
    buf, got = parse(buf, time.time(), tally.delays)
    _mark(tally, 0, got, events)
    tally.events += got
    while got < events:
        data = await sock.recv(65536)
        now = time.time()
        if not data:
            tally.error("closed before the last event")
            break
        buf, n = parse(buf + data, now, tally.delays)
        _mark(tally, got, n, events)
        got += n
        tally.events += n
    if got >= events:
        tally.complete += 1


def _mark(tally: Tally, before: int, n: int, events: int) -> None:
    """The `n` delays just added to `tally` are events `before` to `before + n - 1` of
    their stream (numbers past 255 are kept as 255)."""
    tally.index.extend(min(255, before + j) for j in range(n))


async def _worker(args: argparse.Namespace) -> None:
    tally = Tally()
    connects = trio.Semaphore(CONNECTS_AT_ONCE)
    address = (args.host, args.port)
    deadline = trio.current_time() + (args.start + args.events + 60 - time.time())

    async def report_at_start() -> None:
        await trio.sleep(max(0.0, args.start - time.time()))
        print(json.dumps({"opened_at_start": tally.opened}), flush=True)

    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_at_start)
            for i in range(args.first, args.first + args.count):
                slot = i / args.total
                nursery.start_soon(
                    _one_stream, args.kind, address, slot, args.events, args.start, connects, tally
                )
    unopened = args.count - tally.opened - tally.before_head
    if unopened:
        tally.error("no response head by the deadline", unopened)
    usage = psutil.Process().cpu_times()
    _write(args.out + ".delays", tally.delays.tobytes())
    _write(args.out + ".index", tally.index.tobytes())
    _write(
        args.out,
        json.dumps(
            {
                "opened": tally.opened,
                "opened_late": tally.opened_late,
                "complete": tally.complete,
                "events": tally.events,
                "errors": tally.errors,
                "cpu_s": usage.user + usage.system,
            }
        ).encode(),
    )


def _write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


# ---- the coordinator ---------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (anyone's)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def wait_for_quiet(threshold: float, limit: float = 300.0) -> None:
    """Until the 1-minute load average is under `threshold` (other sessions' runs on a
    shared box), at most `limit` seconds; then on regardless, saying so."""
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= threshold:
        if time.monotonic() > deadline:
            print(f"(load {os.getloadavg()[0]:.2f} after {limit:.0f} s: measuring anyway)")
            return
        time.sleep(5)


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return float("nan")
    return float(t.user + t.system)


class RssSampler:
    """berthd's RSS every 0.5 s in a thread, until `stop`; the peak."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak = proc, proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def log_lines(log: Path | None, begin: int, end: int, needle: str) -> list[str]:
    """berthd's log lines between two offsets that contain `needle`: its garbage collections
    over 20 ms ("garbage collection": proxy/gc_policy.py logs each, from its loop, within a
    second of it) or its slow trio steps and scheduler batches ("slow trio ":
    daemon/system/slow_steps.py, with --slow-step-ms)."""
    if log is None:
        return []
    with log.open("rb") as f:
        f.seek(begin)
        text = f.read(max(0, end - begin)).decode(errors="replace")
    return [line for line in text.splitlines() if needle in line]


def thread_cpu(proc: psutil.Process | None) -> dict[str, float]:
    """CPU seconds of each of `proc`'s threads, by 'name/tid' (/proc's comm)."""
    if proc is None:
        return {}
    found: dict[str, float] = {}
    try:
        for t in proc.threads():
            try:
                comm = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                comm = "?"
            found[f"{comm}/{t.id}"] = t.user_time + t.system_time
    except psutil.Error:
        pass
    return found


def log_size(log: Path | None) -> int:
    return log.stat().st_size if log is not None and log.exists() else 0


def run_phase(
    kind: str, port: int, streams: int, events: int, workers: int, root: Path,
    berthd: psutil.Process | None, backend: psutil.Process | None, quiet_load: float,
    log: Path | None = None,
) -> dict[str, object]:  # fmt: skip
    wait_for_quiet(quiet_load)
    load = os.getloadavg()[0]
    ramp = 3.0 + streams / 800  # time to open every stream before any sends
    start = time.time() + ramp
    share = [streams // workers + (1 if w < streams % workers else 0) for w in range(workers)]
    procs, outs, first = [], [], 0
    for w, count in enumerate(share):
        out = str(root / f"{kind}-{port}-{w}.json")
        outs.append(out)
        cmd = [
            sys.executable, __file__, "--worker", kind, "--port", str(port),
            "--first", str(first), "--count", str(count), "--total", str(streams),
            "--events", str(events), "--start", f"{start:.6f}", "--out", out,
        ]  # fmt: skip
        if CLIENT_NICE[0]:
            cmd = ["nice", "-n", str(CLIENT_NICE[0]), *cmd]
        if CLIENT_BATCH[0]:  # SCHED_BATCH: a woken client does not preempt berthd
            cmd = ["chrt", "--batch", "0", *cmd]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        first += count
    rss_before = berthd.memory_info().rss if berthd else 0
    cpu_before = (cpu_seconds(berthd), cpu_seconds(backend), busy_seconds())
    sampler = RssSampler(berthd) if berthd else None
    opened_at_start = 0
    for p in procs:  # each prints one line at `start` (or exits)
        assert p.stdout is not None
        line = p.stdout.readline()
        opened_at_start += json.loads(line)["opened_at_start"] if line else 0
    rss_at_start = berthd.memory_info().rss if berthd else 0
    log_at_start = log_size(log)
    threads_at_start = thread_cpu(berthd)
    deadline = start + events + 70
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    rss_peak = sampler.stop() if sampler else 0
    time.sleep(1.5 if log is not None else 0)  # the policy logs within a second
    collections = log_lines(log, log_at_start, log_size(log), "garbage collection")
    slow_steps = log_lines(log, log_at_start, log_size(log), "slow trio ")
    cpu_after = (cpu_seconds(berthd), cpu_seconds(backend), busy_seconds())
    threads = thread_cpu(berthd)
    by_thread = {name: cpu - threads_at_start.get(name, 0.0) for name, cpu in threads.items()}
    totals: dict[str, object] = {"opened": 0, "opened_late": 0, "complete": 0, "events": 0}
    errors: dict[str, int] = {}
    delays: list[float] = []
    by_event: dict[int, list[float]] = {}  # by event number in its stream
    client_cpu = 0.0
    for out in outs:
        r = json.loads(Path(out).read_text())
        for k in ("opened", "opened_late", "complete", "events"):
            totals[k] = int(totals[k]) + r[k]  # type: ignore[call-overload]
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        client_cpu += r["cpu_s"]
        d = array.array("d")
        d.frombytes(Path(out + ".delays").read_bytes())
        delays.extend(d)
        index = array.array("B")
        index.frombytes(Path(out + ".index").read_bytes())
        for x, k in zip(d, index, strict=True):
            by_event.setdefault(k, []).append(x)
    delays.sort()
    but_last = sorted(x for k, xs in by_event.items() if k < events - 1 for x in xs)
    p99_by_event = [percentile(sorted(by_event.get(k, [])), 0.99) * 1e3 for k in range(events)]
    return {
        **totals,
        "errors": errors,
        "opened_at_start": opened_at_start,
        "p50_ms": percentile(delays, 0.50) * 1e3,
        "p99_ms": percentile(delays, 0.99) * 1e3,
        "p99_but_last_ms": percentile(but_last, 0.99) * 1e3,
        "p99_by_event_ms": p99_by_event,
        "max_ms": (delays[-1] if delays else float("nan")) * 1e3,
        "seconds": time.time() - (start - ramp),
        "client_cpu_s": client_cpu,
        "berthd_cpu_s": cpu_after[0] - cpu_before[0],
        "backend_cpu_s": cpu_after[1] - cpu_before[1],
        # every core's busy time less this bench's processes (berthd idles in direct)
        "other_cpu_s": cpu_after[2]
        - cpu_before[2]
        - client_cpu
        - (cpu_after[1] - cpu_before[1])
        - (0.0 if berthd is None else cpu_after[0] - cpu_before[0]),
        "load": load,
        "rss_before": rss_before,
        "rss_at_start": rss_at_start,
        "rss_peak": rss_peak,
        "slow_collections": collections,
        "slow_steps": slow_steps,
        "berthd_threads_s": by_thread,
    }


def replica_port(instance: str) -> tuple[int, int]:
    """(host port, PID) of the deployment's one running replica."""
    out = subprocess.run(
        ["podman", "ps", "--filter", f"label=io.berth.instance={instance}", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [r for r in json.loads(out or "[]") if r.get("State") == "running"]
    if len(rows) != 1:
        raise SystemExit(f"expected one running replica, found {len(rows)}")
    pid = int(
        subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Pid}}", rows[0]["Id"]],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
    )  # fmt: skip
    return int(rows[0]["Ports"][0]["host_port"]), pid


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n")
            return b" 200 " in s.recv(64)
    except OSError:
        return False


def show(
    kind: str, n: int, events: int, direct: dict[str, object], berth: dict[str, object]
) -> None:
    print(f"\n{kind}: {n} streams x {events} events, 1 event/s each")
    print(
        f"{'path':<8} {'open@start':>10} {'late':>5} {'complete':>9} {'events':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'client s':>8} {'berthd s':>8} {'backend s':>9} {'others s':>8} {'load':>5}"
    )
    for label, r in (("direct", direct), ("berth", berth)):
        print(
            f"{label:<8} {r['opened_at_start']:>10} {r['opened_late']:>5} {r['complete']:>9} "
            f"{r['events']:>9} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['max_ms']:>7.1f} "
            f"{r['client_cpu_s']:>8.1f} {r['berthd_cpu_s']:>8.1f} {r['backend_cpu_s']:>9.1f} "
            f"{r['other_cpu_s']:>8.1f} {r['load']:>5.2f}"
            + (f"  errors {r['errors']}" if r["errors"] else "")
        )
    added50 = float(berth["p50_ms"]) - float(direct["p50_ms"])  # type: ignore[arg-type]
    added99 = float(berth["p99_ms"]) - float(direct["p99_ms"])  # type: ignore[arg-type]
    held = int(berth["opened_at_start"])  # type: ignore[call-overload]
    before, at, peak = (int(berth[k]) for k in ("rss_before", "rss_at_start", "rss_peak"))  # type: ignore[call-overload]
    per = (at - before) / held if held else float("nan")
    per_peak = (peak - before) / held if held else float("nan")
    delivered = int(berth["events"]) == n * events  # type: ignore[call-overload]
    print(
        f"added by berth: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms (goal p99 <= 5 ms: "
        f"{'met' if added99 <= 5 else 'MISSED'}); every event delivered: {delivered}"
    )
    b99, d99 = float(berth["p99_but_last_ms"]), float(direct["p99_but_last_ms"])  # type: ignore[arg-type]
    print(
        f"without each stream's last event (the second in which they all end): p99 "
        f"{d99:.2f} direct, {b99:.2f} berth, added {b99 - d99:+.2f} ms"
    )
    for label, r in (("direct", direct), ("berth", berth)):
        by = r["p99_by_event_ms"]
        assert isinstance(by, list)
        print(f"p99 by event number, {label}: " + " ".join(f"{x:.1f}" for x in by))
    slow = berth["slow_collections"]
    assert isinstance(slow, list)
    print(f"berthd's garbage collections over 20 ms from `start` to the end: {len(slow)}")
    for line in slow:
        print(f"  {line}")
    threads = berth["berthd_threads_s"]
    assert isinstance(threads, dict)
    busy = sorted(((s, name) for name, s in threads.items() if s >= 0.05), reverse=True)
    print(
        "berthd's threads' CPU from `start` to the end: "
        + (", ".join(f"{name} {s:.2f} s" for s, name in busy) or "none over 0.05 s")
    )
    steps = berth["slow_steps"]
    assert isinstance(steps, list)
    if SLOW_STEP_MS[0]:
        print(
            f"berthd's trio steps and batches over {SLOW_STEP_MS[0]:g} ms from `start` to the "
            f"end: {len(steps)}"
        )
        for line in steps[:SLOW_STEPS_SHOWN]:
            print(f"  {line}")
    print(
        f"berthd RSS {before / 2**20:.1f} MiB before, {at / 2**20:.1f} MiB with {held} held "
        f"(+{per / 1024:.1f} KiB a stream; goal <= 20 KB: "
        f"{'met' if per <= 20_000 else 'MISSED'}), peak {peak / 2**20:.1f} MiB "
        f"(+{per_peak / 1024:.1f} KiB a stream)"
    )


class CheckoutDaemon(Daemon):
    """benchlib's Daemon, run from this checkout (REPO) rather than the venv's entry points."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "berth.sock"
        self.log = (root / "berthd.log").open("wb")
        env = {**ENV, "BERTH_SLOW_STEP_MS": f"{SLOW_STEP_MS[0]:g}"} if SLOW_STEP_MS[0] else ENV
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.main", "--state-dir", str(root / "state"),
             "--socket", str(self.sock)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip
        self.instance = ""
        wait(lambda: self.berth("status", check=False).returncode == 0, 60, "berthd", every=0.1)
        self.instance = json.loads(self.berth("status", "--json").stdout)["instance"]

    def berth(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "daemon.cli.main", "--socket", str(self.sock), *args],
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO, env=ENV,
        )  # fmt: skip
        if check and result.returncode:
            raise SystemExit(f"berth {' '.join(args)}: {result.stderr}")
        return result


SLOW_STEP_MS = [0.0]  # --slow-step-ms: berthd's BERTH_SLOW_STEP_MS (0: off)
SLOW_STEPS_SHOWN: Final = 40
CLIENT_NICE = [0]  # --client-nice: the client workers' nice value, both phases
CLIENT_BATCH = [False]  # --client-batch: the client workers under SCHED_BATCH, both phases

BUSY_BOX: Final = 0.5  # others' CPU, in cores on average over a phase, that spoils it


def spoiled(phase: dict[str, object]) -> bool:
    """Whether other sessions used more than BUSY_BOX cores on average during `phase`."""
    return float(phase["other_cpu_s"]) > BUSY_BOX * float(phase["seconds"])  # type: ignore[arg-type]


def measure(
    root: Path, kind: str, n: int, events: int, workers: int, quiet: float
) -> tuple[dict[str, object], dict[str, object]]:
    """One kind through its own berthd and replica: direct, then through the endpoint."""
    root.mkdir()
    d = CheckoutDaemon(root)
    try:
        berthd = psutil.Process(d.proc.pid)
        soft, hard = berthd.rlimit(psutil.RLIMIT_NOFILE)
        budget = default_budget(soft)
        print(
            f"\n{kind}: berthd's open-files limit {soft} (hard {hard}): a budget of {budget} "
            "client connections for all endpoints (proxy/admission.py)"
            + (
                f"; {n - budget} of the {n} streams wait in the listen backlog"
                if n > budget
                else ""
            )
        )
        port = free_port()
        spec = root / f"{NAME}.toml"
        nofile = min(hard, n + 1024)
        spec.write_text(
            SPEC.format(name=NAME, image=IMAGE, backend=BACKEND, nofile=nofile, port=port)
        )
        d.berth("apply", str(spec))
        wait(lambda: answers(port), 120, "the endpoint to answer /health", every=0.2)
        host_port, backend_pid = replica_port(d.instance)
        backend = psutil.Process(backend_pid)
        direct = run_phase(kind, host_port, n, events, workers, root, None, backend, quiet)
        berth = run_phase(
            kind, port, n, events, workers, root, berthd, backend, quiet, root / "berthd.log"
        )
        show(kind, n, events, direct, berth)
        return direct, berth
    finally:
        d.stop()
        for line in log_lines(root / "berthd.log", 0, log_size(root / "berthd.log"), "trio steps:"):
            print(f"berthd's trio steps over its life: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=9000, help="SSE streams (9000)")
    parser.add_argument("--ws", type=int, default=1000, help="WebSocket connections (1000)")
    parser.add_argument("--events", type=int, default=20, help="events per stream (20)")
    parser.add_argument("--workers", type=int, default=4, help="client processes (4)")
    parser.add_argument("--only", choices=["sse", "ws"], help="one kind only")
    parser.add_argument(
        "--retries", type=int, default=2, help="pairs measured again when others spoil one (2)"
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=1.0,
        help="before each phase, wait (5 min at most) for a 1-minute load under this (1.0)",
    )
    parser.add_argument(
        "--slow-step-ms",
        type=float,
        default=0.0,
        help="berthd logs each trio step over this (BERTH_SLOW_STEP_MS; shown per phase; 0: off)",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="run the client workers under `nice -n N`, both phases (0)",
    )
    parser.add_argument(
        "--client-batch",
        action="store_true",
        help="run the client workers under SCHED_BATCH (`chrt --batch 0`), both phases: "
        "the same share of the cores, but a client woken by an event does not preempt "
        "the process that sent it",
    )
    # a worker (this script, started by the coordinator)
    parser.add_argument("--worker", choices=["sse", "ws"], help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.kind = args.worker
        trio.run(_worker, args)
        return
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        raise SystemExit(f"{IMAGE} is missing: run `make image`")
    SLOW_STEP_MS[0] = args.slow_step_ms
    CLIENT_NICE[0] = args.client_nice
    CLIENT_BATCH[0] = args.client_batch
    kinds = [(k, n) for k, n in (("sse", args.streams), ("ws", args.ws)) if args.only in (None, k)]
    root = Path(tempfile.mkdtemp(prefix="berth-bench-streams-"))
    load = os.getloadavg()
    print(
        f"berth streams benchmark: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"real berthd + one Podman replica, {args.workers} client processes"
        + (f" at nice {args.client_nice}" if args.client_nice else "")
        + (" under SCHED_BATCH" if args.client_batch else "")
    )
    try:
        for kind, n in kinds:  # a fresh berthd each: RSS freed by one kind hides the next's
            for attempt in range(1 + args.retries):  # bounded
                pair = measure(
                    root / f"{kind}-{attempt}", kind, n, args.events, args.workers, args.quiet_load
                )
                if not any(spoiled(phase) for phase in pair):
                    break
                print(
                    f"(other sessions used over {BUSY_BOX} of a core on average during this "
                    "pair: 'others s' above"
                    + ("; measuring again)" if attempt < args.retries else ")")
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
