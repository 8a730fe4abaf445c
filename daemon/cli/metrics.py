"""`berth metrics NAME`: per replica, the endpoint, the replicas' own scraped gauges and a
protected endpoint's requests by credential."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, deployment_path


def cmd_metrics(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"since": args.since} if args.since else None
    m = client.call("GET", f"{deployment_path(args.name)}/metrics", params=params)
    if args.json:
        return fmt.print_json(m)
    window = m.get("window")
    headers = ("REPLICA", "CPU", "MEMORY", "GPU", "GPU_MEMORY", "REQ/S", "P50", "P95", "IN_FLIGHT")
    rows = [
        (
            r.get("replica_id") or r.get("id"),
            fmt.percent(r.get("cpu_percent")),
            fmt.size(r.get("memory_bytes")),
            fmt.percent(r.get("gpu_utilization")),
            fmt.size(r.get("gpu_memory_bytes")),
            *_request_figures(r, window),
            r.get("in_flight"),
        )
        for r in m.get("replicas") or []
    ]
    if rows:
        print(fmt.table(headers, rows))
    else:
        print(f"{fmt.cell(m.get('name') or args.name)}: no replicas serving")
    rps, p50, p95 = _request_figures(m, window)
    over = f"last {window:g}s" if isinstance(window, int | float) else fmt.cell(args.since)
    print(
        f"\nendpoint: {rps} req/s, p50 {p50}, p95 {p95}, "
        f"{fmt.cell(m.get('in_flight'))} in flight (over the {over})"
    )
    _print_scraped(m.get("scraped"))
    _print_auth(m.get("auth"))
    _print_traffic(m.get("traffic"))
    return 0


def _print_traffic(traffic: object) -> None:
    """The endpoint's queue (admission) and the replicas passive health took out."""
    if not isinstance(traffic, Mapping):
        return
    wait = traffic.get("queue_time")
    wait = wait if isinstance(wait, Mapping) else {}
    line = (
        f"queue: {fmt.cell(traffic.get('queued'))} waiting now, "
        f"{fmt.cell(traffic.get('queued_total'))} ever; waited p50 {_seconds(wait.get('p50'))}, "
        f"p99 {_seconds(wait.get('p99'))}"
    )
    ejected = traffic.get("ejected")
    if ejected:
        line += "; ejected: " + ", ".join(fmt.cell(e) for e in ejected)
    print(line)
    grpc = traffic.get("grpc_status")
    if isinstance(grpc, Mapping) and grpc:
        print("grpc: " + ", ".join(f"{fmt.cell(k)} {fmt.cell(v)}" for k, v in grpc.items()))


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _print_auth(auth: object) -> None:
    """A protected endpoint's requests by credential id (`berth keys ls` names the keys)."""
    if not isinstance(auth, Mapping):
        return
    counts = auth.get("requests_by_credential") or {}
    shown = ", ".join(f"{fmt.cell(k)} {fmt.cell(v)}" for k, v in sorted(counts.items()))
    print(f"auth: {shown or 'no request let through'}; 401: {fmt.cell(auth.get('unauthorized'))}")


def _print_scraped(scraped: object) -> None:
    """The replicas' own gauges that the spec names ([[metrics.scrape]]), per replica."""
    if not isinstance(scraped, Mapping) or not scraped.get("replicas"):
        return
    queries = [str(q) for q in scraped.get("queries") or []]
    rows = [
        (
            r.get("replica_id"),
            *((r.get("values") or {}).get(q) for q in queries),
            "; ".join(_scrape_state(e) for e in r.get("scrapes") or []),
        )
        for r in scraped["replicas"]
    ]
    print("\n" + fmt.table(("REPLICA", *queries, "SCRAPE"), rows))
    averages = scraped.get("average") or {}
    for q in queries:
        print(f"{q}: {fmt.cell(averages.get(q))} per replica")


def _scrape_state(entry: Mapping[str, Any]) -> str:
    where = f":{entry.get('port')}{entry.get('path')}"
    if entry.get("ok"):
        return f"{where} ok {fmt.cell(entry.get('age_s'))}s ago"
    return f"{where} {entry.get('error') or 'not scraped yet'}"


def _request_figures(stats: Mapping[str, Any], window: object) -> tuple[str, str, str]:
    """Requests/s, p50 and p95 from the proxy's statistics (latencies in seconds)."""
    latency = stats.get("latency")
    if not isinstance(latency, Mapping):
        return fmt.MISSING, fmt.MISSING, fmt.MISSING
    count = latency.get("count")
    rps = (
        fmt.rate(count / window)
        if isinstance(count, int) and isinstance(window, int | float) and window > 0
        else fmt.MISSING
    )
    return rps, fmt.seconds_as_ms(latency.get("p50")), fmt.seconds_as_ms(latency.get("p95"))
