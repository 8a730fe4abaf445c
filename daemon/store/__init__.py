"""berthd's memory: deployments, revisions, replicas, events and metric rollups in SQLite.

`database` is the store (the only sqlite-utils importer), `migrations` its numbered schema
changes, `access` runs its calls on one thread, one at a time, `events` is the event log
written through it, `permissions` keeps the state dir 0700 and the database files 0600,
`keys` the endpoint keys, `readiness` each replica's last readiness verdict and `runs`
berthd's own runs (start, heartbeat, clean or unclean end), `console_users` the web
console's users (name and password hash).
May import nothing of berth's.
"""
