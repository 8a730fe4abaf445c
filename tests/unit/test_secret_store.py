"""daemon/secrets/store.py on a real directory: modes, atomic replace, names without values,
links never followed, what open tightens and clears."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.secrets.store import (
    INDEX_FILE,
    MAX_VALUE_BYTES,
    NoSuchSecret,
    SecretError,
    SecretRefused,
    SecretStore,
)

VALUE = b"hf_ThisIsTheValueNobodyMayReadAbc123"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask: modes must come from the store, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def opened(directory: Path) -> SecretStore:
    store = SecretStore(directory)
    await store.open()
    return store


async def test_directory_0700_files_0600_whatever_the_umask(
    tmp_path: Path, open_umask: None
) -> None:
    store = await opened(tmp_path / "secrets")
    await store.create("hf-token", VALUE)
    assert mode(tmp_path / "secrets") == 0o700
    for name in ("hf-token", ".salt", INDEX_FILE):
        assert mode(tmp_path / "secrets" / name) == 0o600, name
    assert (tmp_path / "secrets" / "hf-token").read_bytes() == VALUE


async def test_replace_is_atomic_and_keeps_created_at(tmp_path: Path) -> None:
    times = iter(["2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"])
    store = SecretStore(tmp_path / "s", now=lambda: next(times))
    await store.open()
    first = await store.create("db", b"one")
    inode = os.stat(tmp_path / "s" / "db").st_ino
    second = await store.create("db", b"two")
    assert (first.outcome, second.outcome) == ("created", "updated")
    assert second.previous == first.info
    assert await store.read("db") == b"two"
    assert os.stat(tmp_path / "s" / "db").st_ino != inode  # a new file renamed over the old
    assert second.info.created_at == "2026-01-01T00:00:00.000Z"
    assert second.info.updated_at == "2026-01-02T00:00:00.000Z"
    assert first.info.fingerprint != second.info.fingerprint
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".index.json", ".salt", "db"]


async def test_the_same_value_is_unchanged(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s")
    created = await store.create("a", VALUE)
    again = await store.create("a", VALUE)
    assert again.outcome == "unchanged" and again.info == created.info


async def test_names_and_index_hold_no_value(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s")
    await store.create("b-key", VALUE)
    await store.create("a.key", b"x")
    listed = store.names()
    assert [i.name for i in listed] == ["a.key", "b-key"]
    assert listed[1].size == len(VALUE) and len(listed[1].fingerprint) == 8
    assert VALUE.decode() not in repr(listed) + repr(store)
    assert VALUE not in (tmp_path / "s" / INDEX_FILE).read_bytes()


async def test_fingerprints_survive_a_restart_and_differ_between_stores(tmp_path: Path) -> None:
    one = await opened(tmp_path / "one")
    info = (await one.create("k", VALUE)).info
    again = await opened(tmp_path / "one")
    assert again.info("k") == info  # the salt and the times are kept
    other = await opened(tmp_path / "two")
    assert (await other.create("k", VALUE)).info.fingerprint != info.fingerprint


async def test_remove(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s")
    await store.create("k", VALUE)
    assert (await store.remove("k")).name == "k"
    assert store.names() == [] and not (tmp_path / "s" / "k").exists()
    with pytest.raises(NoSuchSecret, match='no such secret "k"'):
        await store.read("k")
    with pytest.raises(NoSuchSecret):
        await store.remove("k")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Upper", b"v", "secret name must be"),
        (".salt", b"v", "secret name must be"),
        ("../x", b"v", "secret name must be"),
        ("ok", b"", "the value is empty"),
        ("ok", b"x" * (MAX_VALUE_BYTES + 1), "at most 65536"),
        ("ok", b"a\0b", "NUL byte"),
        ("ok", b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_refusals(tmp_path: Path, name: str, value: bytes, message: str) -> None:
    store = await opened(tmp_path / "s")
    with pytest.raises(SecretRefused, match=message):
        await store.create(name, value)
    assert store.names() == []


async def test_the_largest_value_is_taken(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s")
    await store.create("big", b"y" * MAX_VALUE_BYTES)
    assert len(await store.read("big")) == MAX_VALUE_BYTES


async def test_a_planted_link_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not a secret of ours")
    store = await opened(tmp_path / "s")
    (tmp_path / "s" / "k").symlink_to(target)
    with pytest.raises(SecretError, match="link|symbolic|Too many"):
        await store.read("k")
    await store.create("k", VALUE)  # replaces the link itself, never writes through it
    assert target.read_bytes() == b"not a secret of ours"
    assert not (tmp_path / "s" / "k").is_symlink()


async def test_a_linked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "s").symlink_to(tmp_path / "real")
    with pytest.raises(SecretError, match="not a directory"):
        await opened(tmp_path / "s")


async def test_open_tightens_loose_modes_and_clears_unfinished_writes(tmp_path: Path) -> None:
    store = await opened(tmp_path / "s")
    await store.create("k", VALUE)
    os.chmod(tmp_path / "s", 0o755)
    os.chmod(tmp_path / "s" / "k", 0o644)
    (tmp_path / "s" / ".k.0123.tmp").write_bytes(b"half")
    notes = await SecretStore(tmp_path / "s").open()
    assert mode(tmp_path / "s") == 0o700 and mode(tmp_path / "s" / "k") == 0o600
    assert not (tmp_path / "s" / ".k.0123.tmp").exists()
    assert len(notes) == 3 and all(VALUE.decode() not in n for n in notes)


async def test_calls_before_open_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="not open"):
        await SecretStore(tmp_path / "s").read("k")
