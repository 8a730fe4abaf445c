"""berth's data plane: each deployment's public endpoint, a balancing HTTP proxy.

The daemon pushes each deployment's READY replicas into its `Endpoint`
(`set_upstreams`) and reads request statistics back (`statistics`, `in_flight`). This
package imports `config` at most and never the daemon.

Layout, each module importing only those before it: `chunk_lines` (chunk line bounds),
`protocol` (sans-I/O HTTP parsing), `headers` (rewriting, pure), `answers` (the proxy's own
error answers, text or JSON), `upstreams` (round robin, least request), `stats` (counters
and latency windows), `queue` (admission: per-replica slots and the endpoint's FIFO queue),
`outlier` (passive health: ejection), `admission` (the connection cap and the descriptor
budget all endpoints share),
`poller` (edge-triggered epoll and timeouts; `Polled` is what it needs of a connection),
`sockets` (the module that touches sockets), `tls` (TLS on client connections: `TlsConn`,
a `Conn` over `ssl.SSLObject`), `pool` (idle upstream connections),
`reader` (a client's requests as events), `auth` (a protected endpoint's check of a request
head: keys, basic users, what is stripped, and a refused request's body read away), `tunnel`
(WebSocket), `balancer` (what an endpoint's sessions share: upstreams, pool, poller,
counters, admission, passive health, the retry budget, and the `EndpointTimeouts`, whose
defaults are the spec's), `connector`
(new upstream connections; a hanging connect is raced), `exchange` (one exchange's state and
the `Outcome` of an attempt), `relay` (one response), `forward` (one client connection, the
retry rule), `endpoint` (listener, lifecycle, hold mode), `__main__` (standalone mode);
`h2/` (HTTP/2 and gRPC; its own layout in `proxy.h2`) sits between `relay` and `forward`,
but for its pure `h2.grpc_status`, which `balancer` imports.
"""
