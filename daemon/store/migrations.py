"""The store's schema, as numbered migrations.

`MIGRATIONS[i]` takes a database at schema version `i` (`PRAGMA user_version`) to `i + 1`.
`daemon.store.database` applies each missing one in its own transaction, together with the version
bump, so a crash mid-migration leaves the previous version intact.

Rules: never edit or reorder a migration once released; add a new one at the end. Each is
plain SQL so that this module stays free of sqlite-utils (only `daemon.store.database` imports it).
"""

from __future__ import annotations

_M001_DEPLOYMENTS_AND_REVISIONS = """
CREATE TABLE deployments (
    deployment_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    removed_at TEXT,
    pinned_replicas INTEGER
);
CREATE TABLE revisions (
    deployment_id TEXT NOT NULL REFERENCES deployments(deployment_id),
    revision INTEGER NOT NULL,
    spec_id TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (deployment_id, revision)
);
-- At most one active revision per deployment, enforced by SQLite rather than by care.
CREATE UNIQUE INDEX revisions_one_active ON revisions (deployment_id) WHERE active = 1;
"""

_M002_REPLICAS = """
CREATE TABLE replicas (
    replica_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments(deployment_id),
    container_id TEXT,
    spec_id TEXT NOT NULL,
    host_port INTEGER,
    state TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_exit_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX replicas_by_deployment ON replicas (deployment_id);
"""

# Events name their deployment rather than reference its id: they are a log of what was said
# at the time, and `berth events NAME` asks by name.
_M003_EVENTS = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    deployment TEXT,
    replica TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_by_deployment ON events (deployment, id);
"""

# Per-minute metric rollups (daemon/metrics/sampler.py). One row per (deployment, replica, minute):
# `replica` is '' for the deployment as a whole; host-wide rows have deployment '' and replica
# '' (the host) or 'gpu:N' (one GPU). Names, not ids, like events: a rollup is a record of
# what was measured under that name. Averages over the minute; NULL where nothing was measured.
_M004_METRICS = """
CREATE TABLE metrics (
    deployment TEXT NOT NULL,
    replica TEXT NOT NULL,
    minute TEXT NOT NULL,
    samples INTEGER NOT NULL,
    cpu_percent REAL,
    memory_bytes REAL,
    memory_limit_bytes REAL,
    gpu_utilization REAL,
    gpu_memory_bytes REAL,
    gpu_memory_total_bytes REAL,
    gpu_temperature_c REAL,
    gpu_power_w REAL,
    requests_per_s REAL,
    in_flight REAL,
    latency_p50 REAL,
    latency_p95 REAL,
    PRIMARY KEY (deployment, replica, minute)
);
CREATE INDEX metrics_by_minute ON metrics (minute);
"""

# Endpoint keys made by `berth keys create` (issue 13): only each key's SHA-256
# (`proxy.auth.hash_key`), never the key, which is shown once and kept by nobody else.
# A revoked key's row is deleted. `daemon.store.keys` holds the queries.
_M005_ENDPOINT_KEYS = """
CREATE TABLE endpoint_keys (
    key_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments(deployment_id),
    name TEXT NOT NULL DEFAULT '',
    key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE INDEX endpoint_keys_by_deployment ON endpoint_keys (deployment_id);
"""

# Who caused an event: the admin caller's uid (SO_PEERCRED), NULL for berthd's own doing.
_M006_EVENT_UID = """
ALTER TABLE events ADD COLUMN uid INTEGER;
"""

# Restarts (issue 15). `replica_readiness`: each replica's last readiness verdict, written
# only when it changes, with the container and template it was judged for, so a restarted
# berthd puts a replica that was ready back into rotation at once (daemon/store/readiness.py).
# `berthd_runs`: one row per berthd start, `alive_at` fed every 30 s, `ended` set on a clean
# stop; a row still 'running' whose process is gone was an unclean stop (daemon/store/runs.py).
_M007_RESTARTS = """
CREATE TABLE replica_readiness (
    replica_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    container_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    ready INTEGER NOT NULL,
    since TEXT NOT NULL
);
CREATE INDEX replica_readiness_by_deployment ON replica_readiness (deployment_id);
CREATE TABLE berthd_runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER NOT NULL,
    pid_started REAL,
    version TEXT NOT NULL,
    started_at TEXT NOT NULL,
    alive_at TEXT NOT NULL,
    ended TEXT NOT NULL DEFAULT 'running',
    ended_at TEXT
);
"""

# The web console's users (issue 17; daemon/console/users.py): a name and its salted scrypt
# hash ("scrypt$n$r$p$salt_hex$hash_hex"); never the password.
_M008_CONSOLE_USERS = """
CREATE TABLE console_users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

# The console's charts (issue 17): each deployment minute's requests waiting in the endpoint's
# queue and the replica count its worker wanted (the autoscaler's or the pinned count).
_M009_METRICS_QUEUE_DESIRED = """
ALTER TABLE metrics ADD COLUMN queued REAL;
ALTER TABLE metrics ADD COLUMN desired_replicas REAL;
"""

MIGRATIONS: tuple[str, ...] = (
    _M001_DEPLOYMENTS_AND_REVISIONS,
    _M002_REPLICAS,
    _M003_EVENTS,
    _M004_METRICS,
    _M005_ENDPOINT_KEYS,
    _M006_EVENT_UID,
    _M007_RESTARTS,
    _M008_CONSOLE_USERS,
    _M009_METRICS_QUEUE_DESIRED,
)
LATEST_VERSION = len(MIGRATIONS)
