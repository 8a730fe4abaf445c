"""`berth gateway`: the model gateway's address and, per model, where it is served, whether
it is loaded and on which GPUs (their CDI names' last part: `nvidia.com/gpu=0` is 0), its
queue and its last swap (`GET /v1/gateway`)."""

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
        print("no deployment has a [gateway] section")
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
    return (
        m.get("name"),
        ", ".join(m.get("aliases") or []) or "-",
        m.get("deployment"),
        loaded,
        m.get("ready"),
        m.get("starting"),
        ",".join(g.rsplit("=", 1)[-1] for g in m.get("gpus") or []) or "-",
        m.get("waiting"),
        m.get("in_flight"),
        fmt.duration(idle) if idle is not None else "-",
        m.get("swaps"),
        m.get("cold_starts"),
    )
