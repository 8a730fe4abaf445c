"""Standalone mode, for benchmarks and debugging.

    python -m proxy --listen 127.0.0.1:8000 --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002
    python -m proxy ... --tls-cert cert.pem --tls-key key.pem      # TLS to clients
    python -m proxy ... --max-concurrency 8 --max-queue 100 --balance least_request

SIGTERM or SIGINT: stop accepting, finish in-flight requests (up to --drain seconds), exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import sys
from pathlib import Path

import trio

from config.spec import MAX_QUEUE_DEFAULT, QUEUE_TIMEOUT_DEFAULT
from proxy import gc_policy
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.tls import server_context
from proxy.upstreams import Upstream


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m proxy", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--upstream", type=_host_port, action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--name", default="standalone")
    p.add_argument("--drain", type=float, default=10.0, help="seconds for in-flight requests")
    p.add_argument("--connect-timeout", type=float, default=EndpointTimeouts.connect)
    p.add_argument("--read-timeout", type=float, default=EndpointTimeouts.read_idle)
    p.add_argument("--client-idle-timeout", type=float, default=EndpointTimeouts.client_idle)
    p.add_argument("--header-timeout", type=float, default=EndpointTimeouts.header_read)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: speak TLS to clients")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--max-concurrency", type=int, metavar="N", help="requests in flight per upstream"
    )
    p.add_argument(
        "--max-queue", type=int, default=MAX_QUEUE_DEFAULT, metavar="N", help="requests queued"
    )
    p.add_argument("--queue-timeout", type=float, default=QUEUE_TIMEOUT_DEFAULT, metavar="S")
    p.add_argument("--balance", choices=("round_robin", "least_request"), default="round_robin")
    args = p.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        p.error("--max-concurrency must be at least 1")
    if args.max_queue < 0:
        p.error("--max-queue must be at least 0")
    return args


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    endpoint = Endpoint(
        args.name,
        bind=host,
        port=port,
        timeouts=EndpointTimeouts(
            connect=args.connect_timeout,
            read_idle=args.read_timeout,
            client_idle=args.client_idle_timeout,
            header_read=args.header_timeout,
        ),
    )
    endpoint.set_upstreams(
        Upstream(f"upstream-{i}", h, p) for i, (h, p) in enumerate(args.upstream)
    )
    endpoint.set_admission(
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
        least_request=args.balance == "least_request",
    )
    if args.tls_cert is not None:
        endpoint.set_tls(server_context(args.tls_cert.read_bytes(), args.tls_key.read_bytes()))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def run_endpoint(*, task_status: trio.TaskStatus[None]) -> None:
                await endpoint.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped: the collector ends with it

            await nursery.start(run_endpoint)
            nursery.start_soon(gc_policy.collect_forever)
            bound = endpoint.address
            print(f"proxy listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
            async for _ in signals:
                endpoint.begin_shutdown(args.drain)
                break
    print("proxy stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # as berthd: soft to hard, before
    with contextlib.suppress(OSError, ValueError):  # the connection budget is sized from it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc_policy.configure()
    try:
        trio.run(serve, args)
    except OSError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
