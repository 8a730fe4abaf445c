"""Who may read berthd's state: the state dir 0700, berth.db and its -wal/-shm 0600.

The database holds every spec ever applied (literal `[env]` values included) and the
state dir holds the secrets, git clones and the embedded Podman socket (root-equivalent),
so only berthd's user may read them, whatever the umask berthd was started with (a hand
start or `make run` has 0022; the systemd unit sets `UMask=0077` and `StateDirectoryMode`).

- Made: the state dir with mode 0700, the database file with 0600 before SQLite opens it
  (SQLite gives the -wal and -shm files the database file's mode).
- Found looser (any group or other bit): tightened, and the caller logs each change, one
  line each (`tighten_*` return them). Never loosened: a stricter mode is left as it is.
- Symbolic links are not followed for the database file (O_NOFOLLOW).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

STATE_DIR_MODE: Final = 0o700
DATABASE_MODE: Final = 0o600
DATABASE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")


def secure_state_dir(path: Path) -> list[str]:
    """Make `path` (0700) or tighten it; what was changed, one line each."""
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, STATE_DIR_MODE)  # mkdir's mode went through the umask
        return []
    return [note] if (note := _tighten(path, STATE_DIR_MODE)) else []


def create_database_file(path: Path) -> None:
    """The database file exists, made 0600 when it was not there (never through a link)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, DATABASE_MODE)
    os.close(fd)


def tighten_database_files(path: Path) -> list[str]:
    """berth.db and its -wal, -shm and -journal files, where they exist: 0600 at most."""
    notes = []
    for suffix in DATABASE_SUFFIXES:
        note = _tighten(path.with_name(path.name + suffix), DATABASE_MODE)
        if note:
            notes.append(note)
    return notes


def _tighten(path: Path, mode: int) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None  # not ours to change through a link; the open refuses it
    current = stat.S_IMODE(st.st_mode)
    if current & ~mode == 0:
        return None
    os.chmod(path, current & mode)
    return f"{path}: mode {current:04o} was open to others; now {current & mode:04o}"
