"""Autoscaling: how many replicas a deployment wants for its load.

`policy` is the pure target-tracking autoscaler (per-metric proposals, the stabilisation
window); `driver` is the worker's use of it (which load to read, when to decide, scale to
zero). May import `config`, `proxy` (live endpoint figures) and `daemon.metrics` (the windows).
"""
