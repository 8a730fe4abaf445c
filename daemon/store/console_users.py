"""The web console's users table (`berth console user`; migration 8): a name, its password
hash (`daemon.secrets.passwords`: salted scrypt; never the password) and when it was made.

Plain functions over a `Store`, called through `StoreAccess.call` like its own methods
(as `daemon.store.keys`), inside its write transactions.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.store.database import Store


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    created_at: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "created_at": self.created_at}


def set_console_user(store: Store, name: str, password_hash: str) -> tuple[ConsoleUser, bool]:
    """Add the user, or give an existing one a new password; (user, whether it is new)."""
    with store._write():
        row = next(
            iter(store._db.query("SELECT created_at FROM console_users WHERE name = ?", [name])),
            None,
        )
        if row is not None:
            store._db.execute(
                "UPDATE console_users SET password_hash = ? WHERE name = ?", [password_hash, name]
            )
            return ConsoleUser(name, row["created_at"]), False
        created = store._stamp()
        store._db.execute(
            "INSERT INTO console_users (name, password_hash, created_at) VALUES (?, ?, ?)",
            [name, password_hash, created],
        )
    return ConsoleUser(name, created), True


def list_console_users(store: Store) -> list[ConsoleUser]:
    rows = store._db.query("SELECT name, created_at FROM console_users ORDER BY name")
    return [ConsoleUser(r["name"], r["created_at"]) for r in rows]


def console_password_hash(store: Store, name: str) -> str | None:
    rows = store._db.query("SELECT password_hash FROM console_users WHERE name = ?", [name])
    row = next(iter(rows), None)
    return None if row is None else str(row["password_hash"])


def remove_console_user(store: Store, name: str) -> bool:
    with store._write():
        cursor = store._db.execute("DELETE FROM console_users WHERE name = ?", [name])
    return bool(cursor.rowcount)
