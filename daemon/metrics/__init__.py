"""Measurements: what the replicas, the host and the endpoints did, and how it is shown.

`sampler` takes a sample every few seconds (Podman stats, psutil through `host`, GPU
samples, the proxy's statistics), `windows` keeps the recent ones for the autoscaler,
`rollups` stores per-minute averages, `model` holds the plain value types and `exposition`
renders the Prometheus `/metrics` page. May import `config`, `proxy` (its statistics),
`daemon.runtime`, `daemon.store`, `daemon.gpu` and `daemon.http`.
"""
