"""The `berth` command: argument parsing (`main`), one function a command (`commands`), the
admin API client over the Unix socket (`client`) and the tables it prints (`format`).

A separate program in the same distribution: it imports nothing of berthd but the version
(`daemon.__version__`), and speaks to it only over HTTP, as any other tool could. The one
daemon sub-package it imports is `daemon.export` (pure: a spec in, manifests out), for
`berth export` (`export`), which needs no berthd with `--file`.
"""
