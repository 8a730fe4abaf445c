"""Containers: the `ContainerRuntime` seam (`interface`) and what stands behind it.

`podman` is the one real implementation (the only podman-py importer); `cache` wraps a
runtime so that `list` reads one instance's containers from a view that Podman's event stream
keeps current and full lists resync (what berthd's rounds read); `service` finds or
starts the Podman service berthd talks to (the system socket, else an embedded
`podman system service`), and `service_record` says which process that embedded service
is (a pid file checked by start time and command line: a crashed berthd's is taken over and
ended by the next); `auth_file` is the one reader of containers-auth.json files (the
pull's credentials; `daemon.integrations.registry` checks them with it at apply); `fake` is
the in-memory runtime unit tests use (it passes the same contract tests as `podman`). May
import `daemon.http`; nothing above it.
"""
