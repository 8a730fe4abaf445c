"""`berth console user add NAME | ls | rm NAME`: who may sign in to the web console
(docs/console.md; the admin API's /v1/console/users).

`add` reads the password from stdin (one trailing newline dropped), or on a terminal asks
twice without echo; an empty one is refused. `add` of an existing user sets a new password
(and signs that user out of the console). The password goes to berthd in a request body,
where it is hashed (salted scrypt); it is never printed nor put on a command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any
from urllib.parse import quote

from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, CliError
from daemon.cli.secrets import strip_one_newline

MAX_PASSWORD = 1024  # berthd's limit (daemon/api/console_routes.py), checked here first


def _path(name: str) -> str:
    return f"/v1/console/users/{quote(name, safe='')}"


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise CliError("the two passwords differ; nothing was stored")
        password = first
    else:
        raw = sys.stdin.buffer.read(MAX_PASSWORD * 4 + 2)
        try:
            password = strip_one_newline(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise CliError("the password is not UTF-8 text") from None
    if not password:
        raise CliError("the password is empty; nothing was stored")
    if len(password) > MAX_PASSWORD:
        raise CliError(f"the password is over {MAX_PASSWORD} characters")
    return password


def cmd_user_add(client: AdminClient, args: argparse.Namespace) -> int:
    password = read_password()
    made = client.call("PUT", _path(args.name), json={"password": password})
    if args.json:
        return fmt.print_json(made)
    what = "added" if made.get("created") else "has a new password (signed out of the console)"
    print(f"console user {made['name']} {what}")
    return 0


def cmd_user_ls(client: AdminClient, args: argparse.Namespace) -> int:
    users = client.call("GET", "/v1/console/users")
    if args.json:
        return fmt.print_json(users)
    if not users:
        print("no console users (add one: berth console user add NAME)")
        return 0
    rows = [(u.get("name"), fmt.timestamp(u.get("created_at"))) for u in users]
    print(fmt.table(("NAME", "CREATED"), rows))
    return 0


def cmd_user_rm(client: AdminClient, args: argparse.Namespace) -> int:
    removed = client.call("DELETE", _path(args.name))
    if args.json:
        return fmt.print_json(removed)
    print(f"console user {removed['name']} removed (signed out of the console)")
    return 0


def add_console_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`berth console user ...` on the main parser's subcommands."""
    p = sub.add_parser(
        "console",
        help="the web console's users: console user add|ls|rm",
        description="The web console ([console] listen in berthd.toml): who may sign in.",
        parents=[common],
    )
    topics = p.add_subparsers(metavar="TOPIC", required=True)
    user = topics.add_parser("user", help="console users: add, ls, rm", parents=[common])
    actions = user.add_subparsers(metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a user, or give one a new password",
        description=(
            "Add NAME (or set its new password), reading the password from stdin, or asking "
            "twice on a terminal without echo. An empty password is refused."
        ),
        parents=[common],
    )
    add.set_defaults(command=cmd_user_add)
    add.add_argument("name", metavar="NAME")
    ls = actions.add_parser("ls", help="the users and when they were added", parents=[common])
    ls.set_defaults(command=cmd_user_ls)
    rm = actions.add_parser("rm", help="remove a user (signed out at once)", parents=[common])
    rm.set_defaults(command=cmd_user_rm)
    rm.add_argument("name", metavar="NAME")
    for a in (add, ls, rm):
        a.add_argument("--json", action="store_true", help="print berthd's JSON as is")
