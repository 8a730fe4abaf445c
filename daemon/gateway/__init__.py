"""The model gateway's daemon side (issue 16; docs/gateway.md): one OpenAI-compatible
listener for the box, routing by a request's `model` to the deployment that serves it.

`routes` builds the route table from the active specs' `[gateway]` sections and checks at
apply that a model name or alias is served by one deployment only; `manager` runs the proxy's
`Gateway` (proxy/gateway) in berthd, keeps its listener in the fd store (`gateway`), its
table in step with the deployments and its credentials and TLS from berthd.toml; `status` is
what `GET /v1/gateway` and `berth gateway` show; `event_counts` counts the swap and cold-start
events per deployment (the Prometheus view).

May import `config`, `proxy`, `daemon.reconcile` (the endpoint manager's socket keeper,
credentials and TLS loading) and `daemon.store` (the event log); never `daemon.berthd`.
"""
