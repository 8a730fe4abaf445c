"""`berth secret create NAME [--from-file F] | ls | rm NAME` (docs/admin-api.md).

`create` reads the value from the file, else from stdin; on a terminal it asks twice
without echo. One trailing newline is dropped (`echo TOKEN | berth secret create x` and
an editor's file end in one; an environment variable never wants it). The value goes to
berthd in a request body and is never printed, nor put on a command line (where `ps`
shows it). `ls` shows names, times, sizes and fingerprints: never a value.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any
from urllib.parse import quote

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, CliError

MAX_VALUE_BYTES = 64 * 1024  # berthd's limit (daemon/secrets/store.py), checked here first


def _path(name: str) -> str:
    return f"/v1/secrets/{quote(name, safe='')}"


def read_value(from_file: str | None) -> bytes:
    """The value from `from_file` ("-": stdin), else stdin, else a prompt on a terminal."""
    if from_file and from_file != "-":
        try:
            with open(from_file, "rb") as f:
                raw = f.read(MAX_VALUE_BYTES + 2)
        except OSError as exc:
            raise CliError(f"cannot read {from_file}: {exc.strerror or exc}") from None
    elif from_file is None and sys.stdin.isatty():
        first = getpass.getpass("value: ")
        if getpass.getpass("again: ") != first:
            raise CliError("the two values differ; nothing was stored")
        raw = first.encode()
    else:
        raw = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2)
    value = strip_one_newline(raw)
    if len(value) > MAX_VALUE_BYTES:
        raise CliError(f"the value is over {MAX_VALUE_BYTES} bytes (64 KiB)")
    if not value:
        raise CliError("the value is empty; nothing was stored")
    return value


def strip_one_newline(raw: bytes) -> bytes:
    for end in (b"\r\n", b"\n"):
        if raw.endswith(end):
            return raw[: -len(end)]
    return raw


def cmd_secret_create(client: AdminClient, args: argparse.Namespace) -> int:
    value = read_value(args.from_file)
    made = client.call(
        "POST",
        _path(args.name),
        content=value,
        headers={"content-type": "application/octet-stream"},
    )
    if args.json:
        return fmt.print_json(made)
    print(f"secret {made['name']} {made['outcome']} (fingerprint {made['fingerprint']})")
    for rolled in made.get("rolled") or ():
        print(f"  {rolled['name']}: revision {rolled['revision']} rolls its replicas to it")
    return 0


def cmd_secret_ls(client: AdminClient, args: argparse.Namespace) -> int:
    secrets = client.call("GET", "/v1/secrets")
    if args.json:
        return fmt.print_json(secrets)
    if not secrets:
        print("no secrets")
        return 0
    rows = [
        (
            s.get("name"),
            s.get("fingerprint"),
            s.get("size"),
            fmt.timestamp(s.get("created_at")),
            fmt.timestamp(s.get("updated_at")),
        )
        for s in secrets
    ]
    print(fmt.table(("NAME", "FINGERPRINT", "BYTES", "CREATED", "UPDATED"), rows))
    return 0


def cmd_secret_rm(client: AdminClient, args: argparse.Namespace) -> int:
    removed = client.call("DELETE", _path(args.name))
    if args.json:
        return fmt.print_json(removed)
    print(f"secret {removed['name']} removed")
    return 0


def add_secret_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`berth secret ...` on the main parser's subcommands."""
    p = sub.add_parser(
        "secret",
        help="values specs name by { secret = NAME }: create, ls, rm",
        description=(
            'Secrets: values a spec names as HF_TOKEN = { secret = "hf-token" } and never '
            "holds. berthd keeps them in its state dir (0600 files), not in its database; "
            "a new value rolls the deployments whose [env] uses it."
        ),
        parents=[common],
    )
    actions = p.add_subparsers(metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="store a value (or a new one: its users roll)",
        description=(
            "Store NAME's value, read from --from-file, else stdin, else asked for on the "
            "terminal without echo. One trailing newline is dropped."
        ),
        parents=[common],
    )
    create.set_defaults(command=cmd_secret_create)
    create.add_argument("name", metavar="NAME")
    create.add_argument("--from-file", metavar="F", help='read the value from F ("-": stdin)')
    ls = actions.add_parser(
        "ls", help="names, sizes, fingerprints (never a value)", parents=[common]
    )
    ls.set_defaults(command=cmd_secret_ls)
    rm = actions.add_parser("rm", help="remove a secret no active spec uses", parents=[common])
    rm.set_defaults(command=cmd_secret_rm)
    rm.add_argument("name", metavar="NAME")
    for a in (create, ls, rm):
        a.add_argument("--json", action="store_true", help="print berthd's JSON as is")
