"""The sign-in page: a user name and a password, posted to /console/signin."""

from __future__ import annotations

from daemon.console.html import h, layout

WRONG = "wrong user name or password"


def page(*, error: str | None, next_path: str = "") -> str:
    problem = (
        f'<p class="error" data-testid="signin-error" role="alert">{h(error)}</p>' if error else ""
    )
    body = (
        f"{problem}"
        '<form method="post" action="/console/signin" class="signin" data-testid="signin-form">'
        f'<input type="hidden" name="next" value="{h(next_path)}">'
        '<label>User name <input name="name" autocomplete="username" required autofocus'
        ' data-testid="signin-name"></label>'
        '<label>Password <input name="password" type="password" autocomplete="current-password"'
        ' required data-testid="signin-password"></label>'
        '<button type="submit" data-testid="signin-submit">Sign in</button></form>'
    )
    return layout("Sign in", body, request=None)
