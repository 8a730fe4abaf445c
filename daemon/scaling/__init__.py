"""Autoscaling: how many replicas a deployment wants for its load.

`policy` is the pure target-tracking autoscaler (per-metric proposals, the stabilisation
window); `driver` is the worker's use of it (which load to read, when to decide, scale to
zero); `idle` (pure) the idle unload's TTL and the cold start's cancel; `swap` (pure) which
idle deployments to scale to zero when a woken one's replica finds no GPU, and `board` the
host-wide place where workers ask each other for that. May import `config`, `proxy` (live
endpoint figures), `daemon.metrics` (the windows) and `daemon.gpu` (placement, holdings).
"""
