"""`[resources]`: what one replica may use, and the kernel resources model servers need.

CPU, memory and GPUs are limits and asks. `shm_size`, `ipc` and `[resources.ulimits]` are
for servers that share memory between processes (vLLM with tensor parallelism, TGI
sharded, NCCL, Triton's python backend): Podman's default /dev/shm is 64 MB, and those
fail with bus or NCCL errors on it.

Rules checked here, each problem at its field path:
- `shm_size` is 1Mi-1Ti and at most `memory` when that is set: /dev/shm is a tmpfs, its
  pages count against the replica's memory limit, so a larger one could never be filled.
- `ipc` is "private" or "shareable"; the host's IPC namespace is never offered.
- `ulimits` sets only memlock, nofile and stack (any other name is an unknown key), each as
  one value (soft = hard) or a `{ soft, hard }` table with soft <= hard. memlock and stack
  are sizes ("64Mi", bytes) or "unlimited"; nofile is a count, 64-1048576 (the kernel's
  default nr_open), never "unlimited".
"""

from __future__ import annotations

from collections.abc import Mapping

from config.canonical import format_limit
from config.reader import Converter, Reader, as_int, as_number, as_size
from config.spec import RLIM_INFINITY, ULIMIT_NAMES, UNLIMITED, IpcMode, Resources, Ulimit
from config.units import format_size

MIN_MEMORY = 6 * 1024**2  # Podman refuses a memory limit below 6 MiB
MAX_CPUS = 1024.0
MAX_GPUS = 16
MIN_SHM = 1024**2
MAX_SHM = 1024**4
MAX_LOCKED = 1024**4  # memlock and stack: larger finite values are "unlimited" in all but name
MIN_STACK = 1024**2  # a smaller main-thread stack crashes ordinary programs
MIN_NOFILE = 64  # fewer, and a shell cannot start its children
MAX_NOFILE = 1024**2  # the kernel's default fs.nr_open: no process may have more

_TABLE_FORM = "a table { soft = ..., hard = ... }"


def read_resources(r: Reader | None) -> Resources:
    if r is None:
        return Resources()
    cpus = r.optional("cpus", as_number(hi=MAX_CPUS, above=0))
    memory = r.optional("memory", as_size(MIN_MEMORY, lo_text="6Mi (Podman's minimum)"))
    gpus = r.get("gpus", as_int(0, MAX_GPUS), 0)
    gpu_memory = r.optional("gpu_memory", as_size(1024**2, lo_text="1Mi"))
    if gpu_memory is not None and gpus > 0:
        r.problem(
            "gpu_memory",
            "cannot be combined with resources.gpus: ask for whole GPUs or for VRAM, not both",
        )
    shm_size = r.optional("shm_size", as_size(MIN_SHM, lo_text="1Mi", hi=MAX_SHM, hi_text="1Ti"))
    if shm_size is not None and memory is not None and shm_size > memory:
        r.problem(
            "shm_size",
            f"must be at most resources.memory ({format_size(memory)}): /dev/shm is memory "
            "and counts against the replica's limit",
            r.data["shm_size"],
        )
    ipc = r.get("ipc", _as_ipc, IpcMode.PRIVATE)
    ulimits = _read_ulimits(r.table("ulimits"))
    r.close()
    return Resources(
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        gpu_memory=gpu_memory,
        shm_size=shm_size,
        ipc=ipc,
        ulimits=ulimits,
    )


def _as_ipc(raw: object) -> IpcMode:
    rule = 'must be "private" or "shareable"'
    if raw == "host":
        raise ValueError(f"{rule}: a replica never joins the host's IPC namespace")
    if not isinstance(raw, str) or raw not in set(IpcMode):
        raise ValueError(rule)
    return IpcMode(raw)


def _read_ulimits(r: Reader | None) -> dict[str, Ulimit]:
    if r is None:
        return {}
    ulimits: dict[str, Ulimit] = {}
    for name in list(r.data):
        if name not in ULIMIT_NAMES:
            r.optional(name, _unknown_ulimit)
            continue
        limit = _read_ulimit(r, name)
        if limit is not None:
            ulimits[name] = limit
    r.close()
    return dict(sorted(ulimits.items()))


def _read_ulimit(r: Reader, name: str) -> Ulimit | None:
    if not isinstance(r.data[name], Mapping):
        value = r.optional(name, _as_limit(name, table_form=True))
        return None if value is None else Ulimit(soft=value, hard=value)
    t = r.table(name)
    assert t is not None  # a table, checked above
    soft = t.required("soft", _as_limit(name))
    hard = t.required("hard", _as_limit(name))
    t.close()
    if soft is None or hard is None:
        return None
    if soft > hard:
        t.problem(
            "soft",
            f"must be <= {t.path_of('hard')} "
            f"({format_limit(name, soft)} > {format_limit(name, hard)})",
        )
        return None
    return Ulimit(soft=soft, hard=hard)


def _unknown_ulimit(raw: object) -> None:
    raise ValueError(
        "unknown key: berth sets memlock, nofile and stack (the others keep the host's defaults)"
    )


def _as_limit(name: str, *, table_form: bool = False) -> Converter[int]:
    """One soft or hard value of ulimit `name` (`table_form`: the table is also allowed)."""
    or_table = f", or {_TABLE_FORM}" if table_form else ""
    if name == "nofile":
        count = as_int(MIN_NOFILE, MAX_NOFILE)

        def convert_count(raw: object) -> int:
            if raw == UNLIMITED:
                raise ValueError(
                    f'cannot be "unlimited": the kernel caps open files (at most {MAX_NOFILE})'
                )
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"must be an integer (open files){or_table}")
            return count(raw)

        return convert_count

    lo, lo_text = (MIN_STACK, "1Mi") if name == "stack" else (0, "0")
    size = as_size(lo, lo_text=lo_text, hi=MAX_LOCKED, hi_text='1Ti (or "unlimited")')

    def convert_size(raw: object) -> int:
        if raw == UNLIMITED:
            return RLIM_INFINITY
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ValueError(
                f'must be a size such as "64Mi", a number of bytes, "unlimited"{or_table}'
            )
        if isinstance(raw, int) and raw < 0:
            raise ValueError('cannot be negative: write "unlimited" for no limit')
        return size(raw)

    return convert_size
