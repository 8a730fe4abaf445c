"""The admin API: what `berth` asks of berthd over its Unix socket (docs/admin-api.md).

`routes` matches a request to its handler and answers JSON; `apply` checks a spec against the
host and the other deployments and records it; `log_stream` reads and follows replica logs.
They see berthd only through the `ControlPlane` protocol (`control_plane`), which
`daemon.berthd.Berthd` implements. May import `config`, `daemon.http` (the server's request
and response types), `daemon.reconcile`, `daemon.store`, `daemon.runtime`, `daemon.gpu`,
`daemon.integrations`, `daemon.metrics`, `daemon.secrets` and `daemon.gateway` (the model
gateway's table and status, `GET /v1/gateway`); never `daemon.berthd`.
`secret_routes` serves `berth secret` (create, ls, rm; a new value rolls its users);
`console_routes` the web console's users (`berth console user`) and a replica's restart.
"""
