"""HTML for the console's pages: escaping and the one page layout every page uses.

Invariants: every value that comes from outside (a name, a spec, an event message) goes
through `h` before it reaches a page; pages carry no inline script or style (the CSP in
`daemon.console.security` forbids both): scripts and stylesheets come from
`/console/static/...`, and the CSRF token is in a `<meta name="csrf-token">` for the
scripts' POSTs, and in each form's hidden `csrf` field (`csrf_field`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.console.request import ConsoleRequest

STATIC = "/console/static/"
_HERE = ' class="here"'
NAV = (("Box", "/console/box"), ("Deployments", "/console/"), ("Events", "/console/events"))


def h(value: object) -> str:
    """`value` as text safe inside HTML elements and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def csrf_field(request: ConsoleRequest) -> str:
    """The hidden field every POST form carries."""
    return f'<input type="hidden" name="csrf" value="{h(request.csrf)}">'


def post_form(
    request: ConsoleRequest,
    action: str,
    fields: dict[str, str],
    button: str,
    *,
    testid: str = "",
    button_class: str = "",
) -> str:
    """A one-button POST form with the CSRF token and hidden `fields`."""
    hidden = "".join(
        f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in fields.items()
    )
    tid = f' data-testid="{h(testid)}"' if testid else ""
    cls = f' class="{h(button_class)}"' if button_class else ""
    return (
        f'<form method="post" action="{h(action)}" class="inline">{csrf_field(request)}'
        f'{hidden}<button type="submit"{cls}{tid}>{h(button)}</button></form>'
    )


def layout(
    title: str,
    body_html: str,
    *,
    request: ConsoleRequest | None,
    scripts: Sequence[str] = (),
    styles: Sequence[str] = (),
) -> str:
    """A whole page: `body_html` (already escaped HTML) under the nav. `scripts` and
    `styles` are paths under /console/static/ ("deployment.js", "vendor/uplot/uPlot.min.css")
    added after console.js and console.css. `request` None: the signed-out page (sign-in)."""
    css = "".join(
        f'<link rel="stylesheet" href="{h(STATIC + s)}">' for s in ("console.css", *styles)
    )
    js = "".join(f'<script src="{h(STATIC + s)}" defer></script>' for s in ("console.js", *scripts))
    head_meta = ""
    nav = ""
    if request is not None:
        head_meta = f'<meta name="csrf-token" content="{h(request.csrf)}">'
        links = "".join(
            f'<a href="{h(href)}"{_HERE if _here(request.path, href) else ""}>{h(label)}</a>'
            for label, href in NAV
        )
        nav = (
            f'<nav class="top"><span class="brand">berth</span>{links}'
            f'<span class="user" data-testid="signed-in-user">{h(request.user)}</span>'
            f'<form method="post" action="/console/signout" class="inline">'
            f'{csrf_field(request)}<button type="submit" data-testid="signout">Sign out</button>'
            "</form></nav>"
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No favicon: a browser would ask /favicon.ico (outside /console) and log a 404.
        '<link rel="icon" href="data:,">'
        f"{head_meta}<title>{h(title)} · berth</title>{css}{js}</head>"
        f"<body>{nav}<main><h1>{h(title)}</h1>{body_html}</main></body></html>\n"
    )


def _here(path: str, href: str) -> bool:
    if href == "/console/":
        return path in ("/console", "/console/") or path.startswith("/console/d/")
    return path == href or path.startswith(href + "/")
