"""`berth export`: a deployment's spec in, another engine's manifests out.

Pure: a `config.spec.DeploymentSpec` (and where it came from, `Origin`) becomes a `Bundle`
of named text files for Kubernetes (`kubernetes`, `kube_pod`, `keda`), KServe (`kserve`) or
Podman Quadlet (`quadlet`), plus the list of what the target cannot express (`LeftOut`),
which the files carry as comments and the README (`readme`) lists. Nothing here reads this
host, berthd or the network, or writes a file: `daemon.cli.export` does the I/O. The output
is deterministic: the same spec and origin give the same bytes (stable order, no times).

Imports: `config` only (the CLI imports this package; berthd does not).
"""
