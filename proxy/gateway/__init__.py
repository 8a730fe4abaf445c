"""The model gateway: one OpenAI-compatible listener that routes each request by its `model`
to the deployment that serves it, through that deployment's own `Endpoint`.

Allowed imports: the standard library, trio, and the proxy's own modules outside this
package (`proxy.endpoint` and the `forward.Session` its `session_on` makes, `protocol`,
`reader`, `relay`, `sockets`, `tls`, `auth`, `admission`, `answers`, `stats`, `poller`,
`balancer`); never `daemon` (the layers: config <- proxy <- daemon; tests/unit/
test_layering.py checks it, and that no import cycle forms). berthd's `daemon.gateway`
builds the routes and runs the `Gateway`.

Modules: `routes` (Route, the route table, the /v1/models listing), `model_field` (the
`model` of a JSON, multipart or urlencoded body, and its rewrite), `errors` (OpenAI's
error shape), `stats` (per-model counters), `state` (what the connections share),
`connection` (one client connection), `server` (the listener: `Gateway`).
"""

from proxy.gateway.routes import Route
from proxy.gateway.server import Gateway
from proxy.gateway.stats import ModelStats

__all__ = ["Gateway", "ModelStats", "Route"]
