"""`berth keys create|ls|revoke DEPLOYMENT`: a deployment's endpoint keys (docs/admin-api.md).

`create` prints the key once, on stdout alone (so `KEY=$(berth keys create web)` works),
with how to use it on stderr; berthd keeps only its hash, so a lost key is revoked and
made again. `ls` shows each key's id, name, when it was made and the requests it let
through since berthd started; never a key. A deployment with a key is protected at once,
with or without `[endpoint.auth]`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, deployment_path


def cmd_keys_create(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.key_name} if args.key_name else {}
    made = client.call("POST", deployment_path(args.name, "keys"), json=body)
    if args.json:
        return fmt.print_json(made)
    print(made["key"])
    print(
        f"key {made['id']} of {args.name}: shown once, berthd keeps only its hash; "
        "send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
        file=sys.stderr,
    )
    return 0


def cmd_keys_ls(client: AdminClient, args: argparse.Namespace) -> int:
    keys = client.call("GET", deployment_path(args.name, "keys"))
    if args.json:
        return fmt.print_json(keys)
    rows = [
        (k.get("id"), k.get("name") or "-", fmt.timestamp(k.get("created_at")), k.get("requests"))
        for k in keys
    ]
    print(fmt.table(("ID", "NAME", "CREATED", "REQUESTS"), rows))
    return 0


def cmd_keys_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    revoked = client.call("DELETE", deployment_path(args.name, "keys", args.key_id))
    if args.json:
        return fmt.print_json(revoked)
    print(f"revoked key {revoked['id']} of {args.name}")
    return 0


def add_keys_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`berth keys ...` on the main parser's subcommands."""
    p = sub.add_parser(
        "keys",
        help="a deployment's endpoint keys: create, ls, revoke",
        description="API keys for a deployment's endpoint (berthd stores their hashes only)",
        parents=[common],
    )
    actions = p.add_subparsers(metavar="ACTION", required=True)
    for action, func, help_text in (
        ("create", cmd_keys_create, "make a key (printed once) and require keys from now on"),
        ("ls", cmd_keys_ls, "the deployment's keys (never the keys themselves)"),
        ("revoke", cmd_keys_revoke, "revoke a key: the endpoint refuses it at once"),
    ):
        a = actions.add_parser(action, help=help_text, description=help_text, parents=[common])
        a.set_defaults(command=func)
        a.add_argument("name", metavar="DEPLOYMENT")
        a.add_argument("--json", action="store_true", help="print berthd's JSON as is")
        if action == "create":
            a.add_argument("--name", dest="key_name", metavar="N", help="a label for the key")
        if action == "revoke":
            a.add_argument("key_id", metavar="ID")
