"""`berth pull NAME` and what a pull under way looks like in `apply --wait` and `get`.

berthd streams the pull as JSON lines (docs/admin-api.md, `POST
/v1/deployments/NAME/pull`): `{"pulling": {...}}` while it runs, then one line with `done`.
The human form prints a progress line at most every PRINT_EVERY seconds (and whenever
another layer is done); `--json` prints berthd's lines as they come. Exit 0 once the image
is on the host; otherwise 1 with the pull's reason on one line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, CliError

PRINT_EVERY = 5.0  # seconds between two progress lines of the same pull


def pulling_text(pulling: object) -> str | None:
    """ "pulling IMAGE 6/11 layers, 3.1/7.4 GB (42s)" from a `pulling` object, or None."""
    figures = pull_figures(pulling)
    return f"pulling {figures}" if figures else None


def pull_figures(pulling: object) -> str | None:
    """ "IMAGE 6/11 layers, 3.1/7.4 GB (42s)" (for `berth get`'s "pulling:" line), or None."""
    if not isinstance(pulling, Mapping) or not pulling.get("image"):
        return None
    text = fmt.cell(pulling.get("image"))
    if pulling.get("summary"):
        text += f" {fmt.cell(pulling['summary'])}"
    seconds = pulling.get("seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        text += f" ({seconds:.0f}s)"
    return text


class ProgressPrinter:
    """Decides which progress lines are worth a line of output (not one a second)."""

    def __init__(self, every: float | None = None) -> None:
        self._every = PRINT_EVERY if every is None else every
        self._printed_at = -float("inf")
        self._key: tuple[object, ...] | None = None

    def worth_printing(self, pulling: Mapping[str, Any], now: float) -> bool:
        key = (pulling.get("image"), pulling.get("layers_done"), pulling.get("layers_total"))
        if key != self._key or now - self._printed_at >= self._every:
            self._key, self._printed_at = key, now
            return True
        return False


def cmd_pull(client: AdminClient, args: argparse.Namespace) -> int:
    name: str = args.name
    printer = ProgressPrinter()
    final: dict[str, Any] | None = None
    path = f"/v1/deployments/{quote(name, safe='')}/pull"
    with client.stream("POST", path) as response:
        for line in response.iter_lines():
            if not line.strip():
                continue
            if args.json:
                print(line, flush=True)
            try:
                item = json.loads(line)
            except ValueError:
                raise CliError(f"berthd sent a malformed line: {line[:80]}") from None
            if not isinstance(item, dict):
                continue
            if "done" in item:
                final = item
                break
            pulling = item.get("pulling")
            if not args.json and isinstance(pulling, dict):
                if printer.worth_printing(pulling, time.monotonic()):
                    print(f"{name}: {pulling_text(pulling)}", flush=True)
    if final is None:
        raise CliError(f"{name}: berthd ended the pull before saying how it went")
    if not final.get("done"):
        raise CliError(f"{name}: {fmt.cell(final.get('error') or 'the pull failed')}")
    if not args.json:
        print(
            f"{name}: {fmt.cell(final.get('image'))} is on this host "
            f"(pulled in {fmt.cell(final.get('seconds'))}s, {fmt.cell(final.get('summary'))})"
        )
    return 0
