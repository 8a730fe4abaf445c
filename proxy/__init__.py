"""berth's data plane: each deployment's public endpoint, a round-robin HTTP/1.1 proxy.

The daemon pushes each deployment's READY replicas into its `Endpoint`
(`set_upstreams`) and reads request statistics back (`statistics`, `in_flight`). This
package imports `config` at most and never the daemon.

Layout: `protocol` (sans-I/O HTTP parsing), `headers` (rewriting, pure), `upstreams`
(round robin), `stats` (counters and latency windows), `sockets` (the only module that
touches sockets), `poller` (edge-triggered epoll and timeouts), `pool` (idle upstream
connections), `connector` (new upstream connections; a hanging connect is raced),
`reader` (a client's requests as events), `forward` (one client connection, the retry
rule), `relay` (one response), `tunnel` (WebSocket), `endpoint` (listener, lifecycle,
hold mode), `__main__` (standalone mode).
"""
