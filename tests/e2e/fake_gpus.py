"""Fake NVIDIA GPUs for end-to-end tests: a CDI spec of kind `nvidia.com/gpu` (HOST.md).

Each device maps /dev/nvidiaN onto /dev/null (and sets BERTH_FAKE_GPU=N in the container),
so Podman resolves `--device nvidia.com/gpu=N` with no GPU present. Podman reads CDI files
only from /etc/cdi and /var/run/cdi, and two files declaring the same kind and device make it
refuse both ("unresolvable CDI devices"). So every test that declares `nvidia.com/gpu` holds
an exclusive lock (flock on a file beside them) while its file exists: tests in other pytest
processes on the same box (other sessions, a second `make test`) wait their turn instead of
breaking each other, bounded by `LOCK_TIMEOUT_S`. A `berth-e2e-*` file found while holding the
lock was left by a killed run, and is removed.
"""

from __future__ import annotations

import fcntl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

CDI_DIR: Final = Path("/var/run/cdi")
LOCK_TIMEOUT_S: Final = 600.0  # the longest GPU test here takes ~1 minute


def cdi_spec(count: int) -> str:
    devices = "".join(
        f'- name: "{n}"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia{n}\n'
        f"      hostPath: /dev/null\n    env:\n    - BERTH_FAKE_GPU={n}\n"
        for n in range(count)
    )
    return f"cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n{devices}"


@contextmanager
def fake_nvidia_gpus(count: int, tag: str) -> Iterator[Path]:
    """Declares `count` fake GPUs (nvidia.com/gpu=0..count-1) for the block; yields the CDI
    file. berthd reads CDI specs at start: start it inside the block."""
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    with (CDI_DIR / ".berth-tests-nvidia.lock").open("a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another test held {lock.name} for {LOCK_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(0.5)
        for stale in CDI_DIR.glob("berth-e2e-*.yaml"):  # a killed run's: every writer locks
            stale.unlink(missing_ok=True)
        path = CDI_DIR / f"berth-e2e-{tag}-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(cdi_spec(count))
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
