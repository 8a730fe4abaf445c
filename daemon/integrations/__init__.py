"""What a replica needs from outside the container: mounts and registry credentials.

`mount_checks` refuses at apply what a host cannot give (bind sources outside
`allowed_roots`, missing models, unreadable credential files), naming the field;
`mounts` prepares each mount when a replica is created (volumes, git checkouts via `git`);
`registry` turns `[registry]` into the credentials of a pull. May import `config` and
`daemon.runtime`.
"""
