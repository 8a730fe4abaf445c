"""The `berth` command: berthd's admin API (docs/admin-api.md) for people and scripts.

Contract (DESIGN.md, "`berth` command"): read commands take `--json` and print the server's
JSON as is; exit status 0 on success, otherwise non-zero with one line `berth: message` on
stderr (a refused spec lists its problems under that line). Ctrl-C exits 130 quietly.
The commands live in `daemon.cli.commands`, the HTTP side in `daemon.cli.client`, the
tables in `daemon.cli.format`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from daemon import __version__
from daemon.cli.client import DEFAULT_SOCKET, AdminClient, CliError
from daemon.cli.commands import (
    WAIT_TIMEOUT_SECONDS,
    Command,
    cmd_apply,
    cmd_events,
    cmd_get,
    cmd_history,
    cmd_logs,
    cmd_ls,
    cmd_rm,
    cmd_rollback,
    cmd_scale,
    cmd_status,
)
from daemon.cli.console import add_console_parser
from daemon.cli.export import add_export_parser
from daemon.cli.gateway import cmd_gateway
from daemon.cli.keys import add_keys_parser
from daemon.cli.metrics import cmd_metrics
from daemon.cli.pull import cmd_pull
from daemon.cli.secrets import add_secret_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    socket_path = getattr(args, "socket", None) or os.environ.get("BERTH_SOCKET") or DEFAULT_SOCKET
    command: Command = args.command
    try:
        with AdminClient(socket_path) as client:
            try:
                return command(client, args)
            except KeyboardInterrupt:
                _interrupted()
    except CliError as exc:
        print(f"berth: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before or after the command (connecting, closing)
        return 130
    except BrokenPipeError:
        # `berth logs x | head`: the reader left. Point stdout at /dev/null so the final
        # flush at exit does not complain a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1


def _interrupted() -> NoReturn:
    """Ctrl-C: what was printed is flushed, and the process ends at once with 130, without
    closing the admin connection in order (a `berth logs -f` interrupted inside the HTTP
    client's code could wait there; berthd sees the connection close either way)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(130)


def _parser() -> argparse.ArgumentParser:
    # --socket is accepted before or after the subcommand; SUPPRESS keeps the subparser's
    # copy from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"berthd's admin socket (env BERTH_SOCKET; default {DEFAULT_SOCKET})",
    )
    parser = argparse.ArgumentParser(
        prog="berth", description="Drive berthd, the model deployment daemon.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"berth {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", required=True)

    def command(name: str, func: Command, help: str, *, json_flag: bool = True) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(command=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print berthd's JSON as is")
        return p

    p = command("apply", cmd_apply, "create or update a deployment from a spec", json_flag=False)
    p.add_argument("file", metavar="FILE.toml")
    p.add_argument("--wait", action="store_true", help="follow the rollout to its end")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the spec against berthd and this host as an apply would; change nothing",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=WAIT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {WAIT_TIMEOUT_SECONDS:g})",
    )
    command("ls", cmd_ls, "list deployments")
    p = command("get", cmd_get, "a deployment, its active spec and its replicas")
    p.add_argument("name", metavar="NAME")
    p = command("history", cmd_history, "a deployment's revisions")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--diff", type=int, metavar="REV", help="diff revision REV against REV-1")
    p = command("rollback", cmd_rollback, "a new revision with an older revision's spec")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", type=int, metavar="REVISION", help="default: the previous one")
    p = command("scale", cmd_scale, "pin the replica count, or hand it back to the autoscaler")
    p.add_argument("name", metavar="NAME")
    p.add_argument("replicas", metavar="N", type=int, nargs="?")
    p.add_argument("--auto", action="store_true", help="let the autoscaler decide again")
    p = command("logs", cmd_logs, "a deployment's container logs", json_flag=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--replica", metavar="ID", help="one replica only")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--tail", type=int, metavar="N", help="the last N lines of each replica")
    p = command("metrics", cmd_metrics, "per replica: cpu, memory, GPU, requests/s, latency")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--since",
        metavar="DURATION",
        default="1h",
        help="per-minute history to include (default 1h)",
    )
    p = command("events", cmd_events, "what berthd did and why")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--limit", type=int, metavar="N", help="the last N events only")
    p = command(
        "pull",
        cmd_pull,
        "fetch the image of a deployment's active spec now (with its [registry] credentials)",
    )
    p.add_argument("name", metavar="NAME")
    p = command("rm", cmd_rm, "stop and remove a deployment's replicas (history is kept)")
    p.add_argument("name", metavar="NAME")
    command("status", cmd_status, "berthd's version, Podman, GPUs, deployments")
    command(
        "gateway",
        cmd_gateway,
        "the model gateway: its address; per model its deployment, replicas, queue, last swap",
    )
    add_keys_parser(sub, common)
    add_secret_parser(sub, common)
    add_console_parser(sub, common)
    add_export_parser(sub, common)
    return parser


if __name__ == "__main__":
    sys.exit(main())
