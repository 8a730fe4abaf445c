"""`berth gateway`: the model gateway's address and, per model, where it is served, whether
it is loaded and on which GPUs (their CDI names' last part: `nvidia.com/gpu=0` is 0), its
queue and its last swap (`GET /v1/gateway`).

IDLE is the time since its last request ended, or `busy` while one is under way (waiting
or at a replica): a model with a request in flight is no idle one, whenever the last ended.
ALIASES and GPUS are joined by commas without spaces, so each row splits on whitespace."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient

HEADERS = (
    "MODEL",
    "ALIASES",
    "DEPLOYMENT",
    "LOADED",
    "READY",
    "STARTING",
    "GPUS",
    "WAITING",
    "IN_FLIGHT",
    "IDLE",
    "SWAPS",
    "COLD_STARTS",
)


def cmd_gateway(client: AdminClient, args: argparse.Namespace) -> int:
    g = client.call("GET", "/v1/gateway")
    if args.json:
        return fmt.print_json(g)
    print(f"gateway: {address_line(g)}")
    models = g.get("models") or []
    if not models:
        print(
            'no deployment has a [gateway] section: add `[gateway] models = ["NAME"]` to '
            "the spec of a deployment to serve it here (docs/gateway.md)"
        )
        return 0
    print(fmt.table(HEADERS, [model_row(m) for m in models]))
    swaps = [m for m in models if m.get("last_swap")]
    for m in swaps:
        swap = m["last_swap"]
        print(
            f"last swap of {fmt.cell(m.get('name'))}: {fmt.timestamp(swap.get('time'))} "
            f"{fmt.cell(swap.get('message'))}"
        )
    return 0


def address_line(g: Mapping[str, Any]) -> str:
    listen = g.get("listen")
    if not listen:
        return "off (berthd.toml has no [gateway] listen)"
    scheme = "https" if g.get("tls") else "http"
    protected = ", protected ([gateway.auth])" if g.get("auth") else ""
    return f"{scheme}://{listen}/v1{protected}"


def model_row(m: Mapping[str, Any]) -> tuple[object, ...]:
    if not m.get("routed"):
        loaded = "not routed"  # its endpoint is not listening (yet)
    elif m.get("loaded"):
        loaded = "yes"
    else:
        loaded = "no"
    idle = m.get("idle_s")
    if m.get("in_flight") or m.get("waiting"):
        shown_idle = "busy"
    else:
        shown_idle = fmt.duration(idle) if idle is not None else "-"
    return (
        m.get("name"),
        ",".join(m.get("aliases") or []) or "-",
        m.get("deployment"),
        loaded,
        m.get("ready"),
        m.get("starting"),
        ",".join(g.rsplit("=", 1)[-1] for g in m.get("gpus") or []) or "-",
        m.get("waiting"),
        m.get("in_flight"),
        shown_idle,
        m.get("swaps"),
        m.get("cold_starts"),
    )
