"""The model gateway: one OpenAI-compatible listener that routes each request by its `model`
to the deployment that serves it, through that deployment's own `Endpoint`.

Allowed imports: the standard library, trio, and the proxy's own modules (`proxy.endpoint`,
`proxy.forward`'s `Session` through `Endpoint.session_on`, `proxy.protocol`,
`proxy.reader`, `proxy.relay`, `proxy.sockets`, `proxy.tls`, `proxy.auth`,
`proxy.admission`, `proxy.answers`, `proxy.stats`, `proxy.poller`, `proxy.balancer`);
never `daemon` (the layers: config <- proxy <- daemon). berthd's `daemon.gateway` builds the
routes and starts the `Gateway`.

Modules: `routes` (Route, the route table, the /v1/models listing), `model_field` (the
`model` of a JSON, multipart or urlencoded body, and its rewrite), `errors` (OpenAI's
error shape), `stats` (per-model counters), `connection` (one client connection),
`server` (the listener: `Gateway`).
"""

from proxy.gateway.routes import Route
from proxy.gateway.server import Gateway
from proxy.gateway.stats import ModelStats

__all__ = ["Gateway", "ModelStats", "Route"]
