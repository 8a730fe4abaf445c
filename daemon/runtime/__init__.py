"""Containers: the `ContainerRuntime` seam (`interface`) and what stands behind it.

`podman` is the one real implementation (the only podman-py importer); `service` finds or
starts the Podman service berthd talks to (the system socket, else an embedded
`podman system service`); `auth_file` is the one reader of containers-auth.json files (the
pull's credentials; `daemon.integrations.registry` checks them with it at apply); `fake` is
the in-memory runtime unit tests use (it passes the same contract tests as `podman`). May
import `daemon.http`; nothing above it.
"""
