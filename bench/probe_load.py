"""Issue 4's benchmark helper: berth's proxy and N replicas' probes on ONE trio loop.

berthd runs every replica's probes on the same loop as the endpoints; this measures what
that costs the proxy. It serves `--listen` round robin over `--upstream`s (the proxy, as
berthd runs it) while probing `--probe-port`s every `--period` seconds with the daemon's
own probe code (`daemon.health.verdicts` schedules, `daemon.health.probes` probes), and
prints how many probes ran when it gets SIGTERM/SIGINT. `--probe-port` may be given 0 times:
the baseline.
"""

from __future__ import annotations

import argparse
import signal

import trio

from config.spec import Health, Probe
from daemon.health.probes import run_probe
from daemon.health.verdicts import ReplicaHealth
from proxy.endpoint import Endpoint
from proxy.upstreams import Upstream


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def probe_forever(ports: list[int], period: float, counts: dict[str, int]) -> None:
    readiness = Probe(port=0, path="/health", period=period, timeout=1.0)
    health = {p: ReplicaHealth.begin(Health(readiness=readiness), p, 0.0) for p in ports}
    async with trio.open_nursery() as nursery:

        async def one(port: int, state: ReplicaHealth, kind: object) -> None:
            result = await run_probe(readiness, "127.0.0.1", port)
            state.record(kind, result, trio.current_time())  # type: ignore[arg-type]
            counts["ok" if result.ok else "failed"] += 1

        while True:
            now = trio.current_time()
            for port, state in health.items():
                for track in state.due(now):
                    nursery.start_soon(one, port, state, track.kind)
            await trio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    bind, port = host_port(args.listen)
    endpoint = Endpoint("bench", bind=bind, port=port)
    endpoint.set_upstreams([Upstream(f"u{i}", *host_port(u)) for i, u in enumerate(args.upstream)])
    counts = {"ok": 0, "failed": 0}
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        if args.probe_port:
            nursery.start_soon(probe_forever, args.probe_port, args.period, counts)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    print(f"probes: {counts['ok']} passed, {counts['failed']} failed", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--probe-port", action="append", type=int, default=[])
    parser.add_argument("--period", type=float, default=1.0)
    trio.run(main, parser.parse_args())
