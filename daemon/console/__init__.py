"""The web console (issue 17; docs/console.md): berthd's deployments in a browser, and the
admin API's actions behind a sign-in.

Served on berthd.toml's `[console] listen` by berthd's one HTTP server core
(`daemon.http.server`); with no `[console]` berthd makes none of it. `app` routes a request
(sign-in, sign-out, pages, fragments, static files, the live stream, the actions);
`sessions` holds the signed-in sessions (in memory: a berthd restart signs everyone out)
and the sign-in rate limit; `security` the headers every answer carries and the CSRF
check; `request` the `ConsoleRequest` a page renders from, with in-process access to the
admin API's handlers (`daemon.api.routes.AdminApi`: the same code `berth` reaches over the
socket, its events naming the console user); `html` the escaping and the page layout;
`stream` the server-sent events fed by berthd's event log (`daemon.store.events`): no
console work runs while no browser is connected. `pages/` has one module per page.

The proxy never imports it, and it adds nothing to the data path.

May import `config`, `proxy` (`proxy.sockets`: the listener helpers), `daemon.http`,
`daemon.api` (the admin handlers and the `ControlPlane` protocol), `daemon.store`,
`daemon.secrets` (the password hashing), `daemon.metrics` (the per-minute rollups of the
charts), `daemon.reconcile` (TLS loading) and `daemon.system` (the fd store's name);
never `daemon.berthd`.
"""
