"""The box page (`/console/box`): berthd (version, uptime, Podman), the host's CPU and
memory, and every GPU: its memory used of total, utilisation, and which replica holds it.

berthd's figures are `berth status`'s (`GET /v1/status`); who holds a GPU is derived from
each deployment's replicas as `berth get` shows them (a replica's `gpus` are CDI names), not
remembered; the live CPU, memory and GPU figures are the metrics sampler's newest host
sample (`MetricsSampler.host_json`, what `berth metrics` shows as the host), at most one
sampler interval old. The GPU table is a fragment (`/console/box/fragment/gpus`) that
deployment.js re-fetches on any `change`: a replica placed or gone moves a GPU's holder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from daemon.console.html import h, layout
from daemon.console.pages.cells import (
    Cell,
    Raw,
    cell,
    duration,
    link,
    not_found,
    percent,
    size,
    table,
    when,
)
from daemon.console.request import AdminError, ConsoleRequest
from daemon.http.server import Response

PARTS = ("gpus", "host")


async def holders(request: ConsoleRequest) -> dict[str, list[tuple[str, str]]]:
    """CDI name -> [(deployment, replica id)] of the replicas that hold it now."""
    out: dict[str, list[tuple[str, str]]] = {}
    for summary in await request.admin.get("/v1/deployments"):
        name = str(summary.get("name", ""))
        try:
            d = await request.admin.get(f"/v1/deployments/{quote(name, safe='')}")
        except AdminError:  # removed in between
            continue
        for r in d.get("replicas", []):
            for gpu in r.get("gpus") or []:
                out.setdefault(str(gpu), []).append((name, str(r.get("id", ""))))
    return out


def gpus_html(
    inventory: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    held: Mapping[str, list[tuple[str, str]]],
    note: str = "",
) -> str:
    by_index = {s.get("index"): s for s in samples}
    rows: list[tuple[str, list[Cell]]] = []
    for g in inventory:
        s = by_index.get(g.get("index"), {})
        total = s.get("memory_total_bytes") or g.get("memory_total_bytes")
        used = s.get("memory_used_bytes")
        memory = (
            None
            if used is None and total is None
            else f"{size(used) or '?'} / {size(total) or '?'}"
        )
        cdi = str(g.get("cdi_name", ""))
        holding = [
            link(f"/console/d/{quote(dep, safe='')}", f"{dep} / {rid}", testid="gpu-holder")
            for dep, rid in held.get(cdi, [])
        ]
        temp = s.get("temperature_c")
        power = s.get("power_w")
        rows.append(
            (
                f"gpu-row-{g.get('index')}",
                [
                    g.get("index"),
                    g.get("name"),
                    cdi,
                    percent(s.get("utilization_percent")),
                    memory,
                    None if temp is None else f"{temp:.0f} °C",
                    None if power is None else f"{power:.0f} W",
                    Raw(", ".join(holding)) if holding else "free",
                ],
            )
        )
    headers = ["GPU", "Model", "CDI name", "Utilisation", "Memory used / total", "Temp.",
               "Power", "Held by"]  # fmt: skip
    note_html = f'<p class="note" data-testid="gpu-note">{h(note)}</p>' if note else ""
    return table("gpus-table", headers, rows, empty="no GPU") + note_html


def host_html(host: Mapping[str, Any]) -> str:
    used, total = host.get("memory_used_bytes"), host.get("memory_total_bytes")
    memory = None if used is None else f"{size(used)} / {size(total) or '?'}"
    facts: list[tuple[str, Cell]] = [
        ("CPU", percent(host.get("cpu_percent"))),
        ("Memory used / total", memory),
        ("Sampled", when(host.get("sampled_at"))),
    ]
    return _facts("host-facts", facts)


def berthd_html(status: Mapping[str, Any]) -> str:
    unclean = status.get("last_unclean_stop")
    facts: list[tuple[str, Cell]] = [
        ("Version", status.get("version")),
        ("Uptime", duration(status.get("uptime_s"))),
        ("Started", when(status.get("started_at"))),
        ("PID", status.get("pid")),
        ("Podman", status.get("podman")),
        ("Deployments", status.get("deployments")),
        ("Gateway", status.get("gateway")),
        ("State directory", status.get("state_dir")),
    ]
    if isinstance(unclean, Mapping):
        facts.append(("Last unclean stop", unclean.get("started_at") or str(dict(unclean))))
    return _facts("berthd-facts", facts)


def _facts(testid: str, facts: Sequence[tuple[str, Cell]]) -> str:
    rows = "".join(f"<dt>{h(k)}</dt><dd>{cell(v)}</dd>" for k, v in facts)
    return f'<dl class="facts" data-testid="{h(testid)}">{rows}</dl>'


async def _gpus(request: ConsoleRequest, status: Mapping[str, Any] | None = None) -> str:
    status = status if status is not None else await request.admin.get("/v1/status")
    host = request.daemon.metrics.host_json()
    return gpus_html(
        status.get("gpus") or [], host.get("gpus") or [], await holders(request),
        str(status.get("gpu_note") or ""),
    )  # fmt: skip


async def render(request: ConsoleRequest) -> str:
    status = await request.admin.get("/v1/status")
    host = request.daemon.metrics.host_json()
    gpus = await _gpus(request, status)
    body = (
        f"<section><h2>berthd</h2>{berthd_html(status)}</section>"
        f'<section><h2>Host</h2><div data-fragment="/console/box/fragment/host">'
        f"{host_html(host)}</div></section>"
        f'<section><h2>GPUs</h2><div data-fragment="/console/box/fragment/gpus">'
        f"{gpus}</div></section>"
    )
    return layout("Box", body, request=request, styles=("pages.css",))


async def fragment(request: ConsoleRequest) -> str | Response:
    part = request.route.get("part")
    if part == "gpus":
        return await _gpus(request)
    if part == "host":
        return host_html(request.daemon.metrics.host_json())
    return not_found(request)
