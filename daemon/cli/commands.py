"""The `berth` subcommands: one function per command, `(client, args) -> exit status`.

Each prints human output (tables from `daemon.cli.format`) or, with `--json`, berthd's JSON
as is. Failures are raised as `CliError` and reported by `daemon.cli.main.main`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from config.units import format_duration
from daemon import __version__
from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, ApiError, CliError, deployment_path
from daemon.cli.pull import ProgressPrinter, pull_figures, pulling_text

# `apply --wait`: how often to look, and how long to wait by default.
WAIT_POLL_SECONDS = 1.0
WAIT_TIMEOUT_SECONDS = 600.0

Command = Callable[[AdminClient, argparse.Namespace], int]

# -- commands ------------------------------------------------------------------------------


def read_spec_file(source: str) -> str:
    """A spec file's text, or a CliError naming why it cannot be read."""
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{source}: not UTF-8 text") from None


def cmd_apply(client: AdminClient, args: argparse.Namespace) -> int:
    source: str = args.file
    text = read_spec_file(source)
    try:
        result = client.call(
            "POST",
            "/v1/deployments",
            params={"source": source, **({"dry_run": "1"} if args.dry_run else {})},
            content=text.encode(),
            headers={"content-type": "application/toml"},
        )
    except ApiError as exc:
        if not exc.problems:
            raise
        count = len(exc.problems)
        lines = [f"berth: {source}: spec refused, {fmt.plural(count, 'problem')}:"]
        lines += [f"  {problem}" for problem in exc.problems]
        print("\n".join(lines), file=sys.stderr)
        return 1
    name, revision, spec_id = result.get("name"), result.get("revision"), result.get("spec_id")
    for warning in result.get("warnings") or ():
        print(f"berth: warning: {warning}", file=sys.stderr)
    for note in result.get("notes") or ():  # what berthd chose where the spec says nothing
        print(f"berth: note: {note}", file=sys.stderr)
    if args.dry_run:
        print(f"{name}: valid; an apply would be {result.get('outcome')} (spec_id {spec_id})")
        return 0
    if result.get("outcome") == "unchanged":
        print(f"{name}: unchanged (revision {revision}, spec_id {spec_id})")
    else:
        print(f"{name}: revision {revision}, spec_id {spec_id} ({result.get('outcome')})")
    if args.wait:
        return wait_for_rollout(client, str(name), revision, spec_id, timeout=args.timeout)
    return 0


def wait_for_rollout(
    client: AdminClient, name: str, revision: object, spec_id: object, *, timeout: float
) -> int:
    """Poll the deployment until `revision` runs everywhere, fails, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_line = ""
    pulls = ProgressPrinter()
    while True:
        deployment = client.call("GET", deployment_path(name))
        status = deployment.get("status")
        current = deployment.get("revision")
        if current != revision:
            mine = client.call("GET", f"{deployment_path(name)}/revisions/{revision}")
            what = "failed" if mine.get("status") == "failed" else "is no longer active"
            raise CliError(
                f"{name}: revision {revision} {what}"
                f"{_reason_suffix(mine, sep=': ')}; revision {current} is active"
            )
        desired = deployment.get("desired")
        ready = deployment.get("ready")
        updated = deployment.get("updated", ready)
        line = (
            f"{name}: {status}, {fmt.cell(updated)}/{fmt.cell(desired)} updated, "
            f"{fmt.cell(ready)} ready (revision {revision})"
        )
        pulling = deployment.get("pulling")
        if isinstance(pulling, dict) and pulling.get("image"):
            # The pull's figures change every poll: a line when worth it, not every second.
            worth = pulls.worth_printing(pulling, time.monotonic())  # (it keeps count)
            if line != last_line or worth:
                print(f"{line}: {pulling_text(pulling)}", flush=True)
                last_line = line
        elif deployment.get("reason") and status != "failed":
            line += f": {deployment['reason']}"
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if status in ("stopped", "idle") or (
            status == "running" and isinstance(desired, int) and (ready or 0) >= desired
        ):
            return 0
        if status == "failed":
            raise CliError(f"{name}: rollout failed{_reason_suffix(deployment, sep=': ')}")
        if time.monotonic() >= deadline:
            raise CliError(f"{name}: still {status} after {timeout:g}s (see `berth get {name}`)")
        time.sleep(WAIT_POLL_SECONDS)


def cmd_ls(client: AdminClient, args: argparse.Namespace) -> int:
    deployments = client.call("GET", "/v1/deployments")
    if args.json:
        return fmt.print_json(deployments)
    if not deployments:
        print("no deployments")
        return 0
    rows = [
        (
            d.get("name"),
            f"{fmt.cell(d.get('ready'))}/{fmt.cell(d.get('desired'))}",
            d.get("revision"),
            d.get("endpoint"),
            fmt.deployment_status(d),
        )
        for d in deployments
    ]
    print(fmt.table(("NAME", "READY/DESIRED", "REVISION", "ENDPOINT", "STATUS"), rows))
    return 0


def _probe_cell(r: dict[str, Any]) -> str:
    probe = r.get("last_probe") or "-"
    failures = r.get("consecutive_failures") or 0
    return f"{probe} ({failures} failing)" if failures else str(probe)


def _exit_cell(r: dict[str, Any]) -> str:
    reason = r.get("last_exit_reason") or "-"
    if r.get("restart_in") is not None:
        reason += f"; restart in {r['restart_in']:g}s"
    return str(reason)


def cmd_get(client: AdminClient, args: argparse.Namespace) -> int:
    d = client.call("GET", deployment_path(args.name))
    if args.json:
        return fmt.print_json(d)
    replicas_text = f"{fmt.cell(d.get('ready'))}/{fmt.cell(d.get('desired'))} ready"
    if d.get("pinned") is not None:
        replicas_text += f" (pinned at {d['pinned']} by `berth scale`)"
    pairs: list[tuple[str, object]] = [
        ("name", d.get("name")),
        ("deployment_id", d.get("deployment_id")),
        ("revision", d.get("revision")),
        ("spec_id", d.get("spec_id")),
        ("status", f"{fmt.cell(d.get('status'))}{_reason_suffix(d)}"),
        ("replicas", replicas_text),
        ("endpoint", d.get("endpoint")),
        *([("endpoint_error", d["endpoint_error"])] if d.get("endpoint_error") else []),
        *([("pending", f"{d['pending']} ({d.get('error')})")] if d.get("pending") else []),
        *([("pulling", pull_figures(d["pulling"]))] if d.get("pulling") else []),
        *(
            [("startup", f"{format_duration(float(d['startup_budget']))} budget")]
            if d.get("startup_budget") is not None
            else []
        ),
        ("created", fmt.timestamp(d.get("created_at"))),
    ]
    print(fmt.key_values(pairs))
    replicas = d.get("replicas") or []
    if replicas:
        headers = [
            "ID",
            "CONTAINER",
            "STATE",
            "READY",
            "RESTARTS",
            "PORT",
            "SPEC_ID",
            "LAST PROBE",
            "LAST EXIT",
        ]
        with_gpus = any(r.get("gpus") for r in replicas)
        if with_gpus:
            headers.append("GPUS")
        rows = []
        for r in replicas:
            row = [
                r.get("id"),
                fmt.short_id(r.get("container_id")),
                r.get("state"),
                bool(r.get("ready")),
                r.get("restarts"),
                r.get("host_port"),
                r.get("spec_id"),
                _probe_cell(r),
                _exit_cell(r),
            ]
            if with_gpus:
                row.append(r.get("gpus"))
            rows.append(row)
        print()
        print(fmt.table(headers, rows))
    spec = d.get("spec")
    if isinstance(spec, str) and spec.strip():
        print(f"\nspec (revision {fmt.cell(d.get('revision'))}):")
        print("\n".join(f"  {line}".rstrip() for line in spec.rstrip().splitlines()))
    return 0


def cmd_history(client: AdminClient, args: argparse.Namespace) -> int:
    if args.diff is not None:
        return _diff_revisions(client, args.name, args.diff, as_json=args.json)
    entries = client.call("GET", f"{deployment_path(args.name)}/history")
    if args.json:
        return fmt.print_json(entries)
    rows = [
        (
            e.get("revision"),
            e.get("spec_id"),
            fmt.timestamp(e.get("created_at")),
            _revision_status(e),
        )
        for e in entries
    ]
    print(fmt.table(("REVISION", "SPEC_ID", "CREATED", "STATUS"), rows))
    return 0


def _revision_status(entry: Mapping[str, Any]) -> str:
    status = fmt.cell(entry.get("status") or ("active" if entry.get("active") else None))
    reason = entry.get("reason")
    return f"{status} ({fmt.cell(reason)})" if reason else status


def _diff_revisions(client: AdminClient, name: str, revision: int, *, as_json: bool) -> int:
    if revision < 1:
        raise CliError(f"--diff: revisions start at 1 (got {revision})")
    new = client.call("GET", f"{deployment_path(name)}/revisions/{revision}")
    old = (
        client.call("GET", f"{deployment_path(name)}/revisions/{revision - 1}")
        if (revision > 1)
        else None
    )
    if as_json:
        return fmt.print_json([r for r in (old, new) if r is not None])
    old_label = f"{name} revision {revision - 1} ({old.get('spec_id')})" if old else "(no revision)"
    new_label = f"{name} revision {revision} ({new.get('spec_id')})"
    old_text = str(old.get("spec") or "") if old else ""
    diff = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        str(new.get("spec") or "").splitlines(keepends=True),
        fromfile=old_label,
        tofile=new_label,
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    if text:
        sys.stdout.write(text)
    else:
        print(f"{name}: revisions {revision - 1} and {revision} have the same spec")
    return 0


def cmd_rollback(client: AdminClient, args: argparse.Namespace) -> int:
    result = client.call("POST", f"{deployment_path(args.name)}/rollback", json={"to": args.to})
    if args.json:
        return fmt.print_json(result)
    name, revision, spec_id = result.get("name"), result.get("revision"), result.get("spec_id")
    restored = result.get("from_revision")
    if result.get("outcome") == "unchanged":
        print(f"{name}: unchanged (revision {revision}, spec_id {spec_id})")
    else:
        print(
            f"{name}: revision {revision}, spec_id {spec_id} "
            f"(the spec of revision {fmt.cell(restored)})"
        )
    return 0


def cmd_scale(client: AdminClient, args: argparse.Namespace) -> int:
    if args.auto == (args.replicas is not None):
        raise CliError("scale: give a replica count or --auto (one of them)", exit_code=2)
    if args.replicas is not None and args.replicas < 0:
        raise CliError(f"scale: the replica count must be >= 0 (got {args.replicas})", exit_code=2)
    replicas = None if args.auto else args.replicas
    result = client.call("POST", f"{deployment_path(args.name)}/scale", json={"replicas": replicas})
    if args.json:
        return fmt.print_json(result)
    name = result.get("name", args.name)
    if result.get("pinned") is None:
        print(f"{name}: replica count handed back to the autoscaler")
    else:
        print(f"{name}: pinned at {fmt.plural(int(result['pinned']), 'replica')}")
    return 0


def cmd_logs(client: AdminClient, args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    if args.tail is not None:
        params["tail"] = str(args.tail)
    if args.follow:
        params["follow"] = "1"
    if args.replica:
        params["replica"] = args.replica
    sys.stdout.flush()
    out = sys.stdout.buffer
    with client.stream("GET", f"{deployment_path(args.name)}/logs", params=params) as response:
        for chunk in response.iter_raw():
            out.write(chunk)
            out.flush()
    return 0


def cmd_events(client: AdminClient, args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    if args.name:
        params["deployment"] = args.name
    if args.follow:
        params["follow"] = "1"
    if args.limit is not None:
        params["limit"] = str(args.limit)
    with client.stream("GET", "/v1/events", params=params) as response:
        for line in response.iter_lines():
            if not line.strip():
                continue
            if args.json:
                print(line, flush=True)
                continue
            try:
                event = json.loads(line)
            except ValueError:
                raise CliError(f"berthd sent a malformed event: {line[:80]}") from None
            print(fmt.event_line(event if isinstance(event, dict) else {}), flush=True)
    return 0


def cmd_rm(client: AdminClient, args: argparse.Namespace) -> int:
    result = client.call("DELETE", deployment_path(args.name))
    if args.json:
        return fmt.print_json(result)
    name = result.get("name", args.name) if isinstance(result, dict) else args.name
    print(f"{name}: removed (its history is kept)")
    return 0


def cmd_status(client: AdminClient, args: argparse.Namespace) -> int:
    s = client.call("GET", "/v1/status")
    if args.json:
        return fmt.print_json(s)
    gpus = s.get("gpus") or []
    pairs: list[tuple[str, object]] = [
        ("berthd", s.get("version")),
        ("berth", __version__),
        ("podman", s.get("podman")),
        ("state_dir", s.get("state_dir")),
        ("instance", s.get("instance")),
        ("deployments", _summarise(s.get("deployments"))),
        ("gpus", len(gpus) if gpus else "none found"),
    ]
    if "gateway" in s:  # a berthd older than issue 16 says nothing of it
        pairs.append(("gateway", s.get("gateway") or "off"))
    if "uptime_s" in s:  # a berthd older than issue 15 says nothing of its runs
        pairs[2:2] = [
            (
                "uptime",
                f"{fmt.duration(s.get('uptime_s'))} (since "
                f"{fmt.timestamp(s.get('started_at'))}, pid {fmt.cell(s.get('pid'))})",
            ),
            ("last unclean stop", _unclean_stop(s.get("last_unclean_stop"))),
        ]
    print(fmt.key_values(pairs))
    for index, gpu in enumerate(gpus):
        print(f"  {fmt.gpu_line(index, gpu)}")
    if not gpus and s.get("gpu_note"):
        print(f"  {fmt.cell(s['gpu_note'])}")
    return 0


# -- helpers -------------------------------------------------------------------------------


def _reason_suffix(deployment: Mapping[str, Any], *, sep: str = ", ") -> str:
    reason = deployment.get("reason") or deployment.get("error")
    return f"{sep}{fmt.cell(reason)}" if reason else ""


def _unclean_stop(stop: object) -> str:
    """When berthd last died without a clean stop (kill -9, a crash), and how long it was down."""
    if not isinstance(stop, dict):
        return "none"
    return (
        f"last alive {fmt.timestamp(stop.get('at'))} (pid {fmt.cell(stop.get('pid'))}), "
        f"down {fmt.duration(stop.get('down_s'))} at most"
    )


def _summarise(value: object) -> object:
    if isinstance(value, list):
        names = [v.get("name") if isinstance(v, dict) else v for v in value]
        return f"{len(value)} ({', '.join(fmt.cell(n) for n in names)})" if value else 0
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt.cell(v)}" for k, v in value.items())
    return value
