"""HTTP/2 at the endpoint and to replicas, on the proxy's own sockets and poller.

Layout, each module importing only those before it (and `proxy` modules up to `balancer`,
`connector`, `headers`, `protocol`, `relay`): `grpc_status` (gRPC status counts, pure;
the `Balancer` holds one), `channel` (one HTTP/2 connection: the `h2` state machine over a
`Conn`, its writer task, events routed to per-stream inboxes, flow-controlled sends),
`messages` (header translation between HTTP/2 and HTTP/1.1, pure), `attempt` (picking a
replica for one request and counting it: the one place that speaks the balancer's
admission API), `upstream` (the h2c connections to each replica, shared by every client
connection), `to_http1` (an HTTP/2 stream to an HTTP/1.1 replica), `to_h2c` (an HTTP/2
stream to an h2c replica), `h1_to_h2c` (an HTTP/1.1 client to an h2c replica), `server`
(`serve_h2`: one HTTP/2 client connection, prior knowledge, h2c upgrade or ALPN h2).
"""
