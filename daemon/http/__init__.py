"""berthd's own HTTP/1.1 (h11, sans-I/O) for its control traffic, not the data plane.

`server` is the one small server core behind every listener berthd opens for itself (the
admin socket, `[metrics] listen`), `listeners` the places it listens (a Unix socket file
with its modes, or TCP); `client` is the one client helper (the Podman service's streams
and pings, HTTP probes). It knows nothing of deployments. May import nothing of berth's.
"""
