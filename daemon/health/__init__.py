"""Replica health: the probes themselves and what their results mean.

`probes` runs one HTTP or TCP probe against a replica's port; `verdicts` is the pure
startup/readiness/liveness state machine (Kubernetes semantics) that turns results into
transitions; `backoff` is the crash-loop restart back-off. No scheduling here: the worker's
prober (`daemon.reconcile.prober`) decides when to probe. May import `config` and
`daemon.http` (the client a probe speaks HTTP with).
"""
