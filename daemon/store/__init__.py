"""berthd's memory: deployments, revisions, replicas, events and metric rollups in SQLite.

`database` is the store (the only sqlite-utils importer), `migrations` its numbered schema
changes, `access` runs its calls on one thread, one at a time, and `events` is the event log
written through it. May import nothing of berth's.
"""
