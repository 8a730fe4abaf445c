# ruff: noqa: E501 (the captured lines are kept whole, as Podman wrote them)
"""A pull's stream: the lines Podman 4.3.1 really writes (captured from a docker-registry on
loopback behind a throttling proxy), read into progress and an outcome; and
`PodmanRuntime.pull` against a stand-in libpod on a Unix socket (the idle timeout, the
errors, the request it sends)."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from daemon.runtime.interface import (
    ImageNotFound,
    PullProgress,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.runtime.podman import PodmanRuntime
from daemon.runtime.pull import (
    LOCAL_IMAGE_HINT,
    LineSplitter,
    PullReader,
    pull_failure,
    pull_target,
)

# /v1.41/images/create of a 3-layer image (3 x 20 MiB at ~5 MB/s, some lines left out).
COMPAT_PULL = b"""\
{"status":"Pulling fs layer","progressDetail":{},"id":"b19bdd1bf622"}
{"status":"Pulling fs layer","progressDetail":{},"id":"c0ae4c4c9066"}
{"status":"Pulling fs layer","progressDetail":{},"id":"56063ce7e176"}
{"status":"Downloading","progressDetail":{"current":4731904,"total":20973933},"progress":"[===========\\u003e                                       ]  4.732MB/20.97MB","id":"b19bdd1bf622"}
{"status":"Downloading","progressDetail":{"current":4771840,"total":20973931},"progress":"[===========\\u003e                                       ]  4.772MB/20.97MB","id":"56063ce7e176"}
{"status":"Downloading","progressDetail":{"current":4764672,"total":20973931},"progress":"[===========\\u003e                                       ]  4.765MB/20.97MB","id":"c0ae4c4c9066"}
{"status":"Downloading","progressDetail":{"current":18970624,"total":20973933},"progress":"[=============================================\\u003e     ]  18.97MB/20.97MB","id":"b19bdd1bf622"}
{"status":"Download complete","progressDetail":{},"id":"b19bdd1bf622"}
{"status":"Download complete","progressDetail":{},"id":"c0ae4c4c9066"}
{"status":"Download complete","progressDetail":{},"id":"56063ce7e176"}
{"status":"Pulling fs layer","progressDetail":{},"id":"ca54998ee5e9"}
{"status":"Download complete","progressDetail":{},"id":"ca54998ee5e9"}
{"status":"Download complete","progressDetail":{},"id":"ca54998ee5e9"}
"""
# The same after an interrupted pull had stored the first two layers (5 and 10 MiB).
COMPAT_RETRY = b"""\
{"status":"Already exists","progressDetail":{},"id":"e998ab2682d6"}
{"status":"Already exists","progressDetail":{},"id":"625a44451495"}
{"status":"Pulling fs layer","progressDetail":{},"id":"9c12cc286900"}
{"status":"Downloading","progressDetail":{"current":22385664,"total":41947249},"progress":"[==========================\\u003e                        ]  22.39MB/41.95MB","id":"9c12cc286900"}
{"status":"Download complete","progressDetail":{},"id":"9c12cc286900"}
{"status":"Pulling fs layer","progressDetail":{},"id":"81ecc822d354"}
{"status":"Download complete","progressDetail":{},"id":"81ecc822d354"}
{"status":"Download complete","progressDetail":{},"id":"81ecc822d354"}
"""
# The registry's connection cut mid-pull: each layer says "complete", then the error.
COMPAT_CUT = b"""\
{"status":"Pulling fs layer","progressDetail":{},"id":"b19bdd1bf622"}
{"status":"Downloading","progressDetail":{"current":5088256,"total":20973933},"progress":"[============\\u003e                                      ]  5.088MB/20.97MB","id":"b19bdd1bf622"}
{"status":"Download complete","progressDetail":{},"id":"b19bdd1bf622"}
{"progressDetail":{},"errorDetail":{"message":"writing blob: storing blob to file \\"/var/tmp/storage432232809/3\\": happened during read: unexpected EOF"},"error":"writing blob: storing blob to file \\"/var/tmp/storage432232809/3\\": happened during read: unexpected EOF"}
"""
COMPAT_MISSING = b"""\
{"progressDetail":{},"errorDetail":{"message":"initializing source docker://127.0.0.1:45123/nothing:1: reading manifest 1 in 127.0.0.1:45123/nothing: manifest unknown: manifest unknown"},"error":"initializing source docker://127.0.0.1:45123/nothing:1: reading manifest 1 in 127.0.0.1:45123/nothing: manifest unknown: manifest unknown"}
"""
# /v4.0.0/libpod/images/pull (not quiet) of the 3-layer image: blobs as they start, no bytes.
LIBPOD_PULL = b"""\
{"stream":"Trying to pull 127.0.0.1:45124/pullx:r...\\n"}
{"stream":"Getting image source signatures\\n"}
{"stream":"Copying blob sha256:9c12cc2869006977f896033af26c4bada1a7922277fb0d44432efdb832e049c7\\n"}
{"stream":"Copying blob sha256:e998ab2682d62c42f2e6924e309bb9b7c0cec97774af9155d0514e6c8e25802f\\n"}
{"stream":"Copying blob sha256:625a44451495172e21b47f1109631e604425518b074632db18975c4cf0a5ad5b\\n"}
{"stream":"Copying config sha256:81ecc822d3546386f156120fcb4262a352e29789d39783736862b73aecf30d86\\n"}
{"stream":"Writing manifest to image destination\\n"}
{"stream":"Storing signatures\\n"}
{"images":["81ecc822d3546386f156120fcb4262a352e29789d39783736862b73aecf30d86"],"id":"81ecc822d3546386f156120fcb4262a352e29789d39783736862b73aecf30d86"}
"""
LIBPOD_SHORT_NAME = b"""\
{"error":"short-name \\"nothing:r\\" did not resolve to an alias and no unqualified-search registries are defined in \\"/etc/containers/registries.conf\\""}
"""


def read(stream: bytes) -> tuple[PullReader, list[PullProgress]]:
    reader, seen = PullReader(), []
    for line in stream.splitlines():
        if reader.feed(line):
            seen.append(reader.progress)
    return reader, seen


def test_the_compat_stream_gives_layers_and_bytes() -> None:
    reader, seen = read(COMPAT_PULL)
    assert seen[0] == PullProgress(0, 1)  # the first layer announced, no size yet
    assert seen[2] == PullProgress(0, 3)
    sizes = 20973933 + 20973931 * 2
    assert seen[5] == PullProgress(0, 3, 4731904 + 4771840 + 4764672, sizes)
    assert seen[7] == PullProgress(1, 3, 20973933 + 4771840 + 4764672, sizes)
    assert seen[9] == PullProgress(3, 3, sizes, sizes)
    assert seen[10] == PullProgress(3, 4, sizes, sizes)  # the config, not known as such yet
    assert reader.finished and reader.image_id == "ca54998ee5e9" and reader.error is None
    assert reader.progress == PullProgress(3, 3, sizes, sizes)  # the config is not a layer
    assert reader.skipped == 0


def test_layers_stored_already_are_done_and_not_fetched() -> None:
    reader, seen = read(COMPAT_RETRY)
    assert seen[0] == PullProgress(1, 1) and seen[1] == PullProgress(2, 2)
    assert seen[3] == PullProgress(2, 3, 22385664, 41947249)  # only what must be fetched
    assert reader.finished
    assert reader.progress == PullProgress(3, 3, 41947249, 41947249)


def test_an_error_line_is_the_outcome_even_after_complete_layers() -> None:
    reader, _ = read(COMPAT_CUT)
    assert not reader.finished
    assert reader.error is not None and "unexpected EOF" in reader.error
    missing, _ = read(COMPAT_MISSING)
    assert missing.error is not None and "manifest unknown" in missing.error


def test_the_libpod_stream_gives_layers_started_and_no_bytes() -> None:
    reader, seen = read(LIBPOD_PULL)
    assert [p.layers_total for p in seen] == [1, 2, 3, 3]
    assert seen[2] == PullProgress(0, 3)  # started, none known to be done
    assert seen[3] == PullProgress(3, 3)  # the config is copied once every layer is
    assert reader.finished and reader.image_id is not None and reader.image_id.startswith("81ec")
    assert reader.progress.bytes_total is None
    short, _ = read(LIBPOD_SHORT_NAME)
    assert short.error is not None and "short-name" in short.error


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'{"status": 7, "id": "x"}', b'{"stream": 3}', b'{"what": 1}'],
)
def test_a_line_that_cannot_be_read_is_skipped(line: bytes) -> None:
    reader = PullReader()
    assert reader.feed(line) is False
    assert reader.skipped == 1 and reader.error is None and not reader.finished
    assert reader.feed(b"   ") is False and reader.skipped == 1  # blank: not even counted


def test_a_qualified_reference_goes_to_the_compat_endpoint_a_short_name_to_libpod() -> None:
    assert pull_target("127.0.0.1:5000/team/model:1") == (
        "/v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fteam%2Fmodel%3A1",
        True,
    )
    assert pull_target("localhost/berth-echo:1")[1] is True
    assert pull_target("ghcr.io/x/y@sha256:" + "a" * 64)[1] is True
    target, compat = pull_target("vllm/vllm-openai:latest")
    assert not compat and target.startswith("/v4.0.0/libpod/images/pull?reference=vllm")
    assert "quiet=false" in target


def test_lines_split_across_chunks() -> None:
    lines = LineSplitter()
    assert lines.feed(b'{"a":') == []
    assert lines.feed(b'1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n") == [b'{"b":2}']
    assert lines.feed(b'{"c":3}') == [] and lines.rest() == b'{"c":3}' and lines.rest() == b""


# -- PodmanRuntime.pull against a stand-in libpod ----------------------------------------


@dataclass
class StandIn:
    """Answers each request with `status` and the chunks of `script` (bytes, or a float: a
    pause of that many seconds), and records the request heads it got."""

    script: list[bytes | float] = field(default_factory=list)
    status: int = 200
    heads: list[bytes] = field(default_factory=list)

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            self.heads.append(head)
            reason = b"OK" if self.status == 200 else b"Internal Server Error"
            await stream.send_all(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % (self.status, reason)
            )
            for step in self.script:
                if isinstance(step, float):
                    await trio.sleep(step)
                elif step:
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(step), step))
            await stream.send_all(b"0\r\n\r\n")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
async def stand_in(sock_dir: Path) -> AsyncIterator[tuple[StandIn, PodmanRuntime]]:
    path = sock_dir / "podman.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    libpod = StandIn()
    runtime = PodmanRuntime(f"unix://{path}", pull_idle_timeout=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, libpod.serve, [trio.SocketListener(sock)])
        try:
            yield libpod, runtime
        finally:
            await runtime.aclose()
            nursery.cancel_scope.cancel()


IMAGE = "127.0.0.1:5000/berth/big:1"


async def test_a_pull_streams_its_progress_past_pauses_shorter_than_the_idle_timeout(
    stand_in: tuple[StandIn, PodmanRuntime],
) -> None:
    libpod, runtime = stand_in
    lines = COMPAT_PULL.splitlines(keepends=True)
    # Cut mid-line too; a pause of 0.3 s (under the 0.5 s idle timeout) after each chunk.
    chunks = [lines[0][:20], lines[0][20:], *lines[1:]]
    libpod.script = [step for chunk in chunks for step in (chunk, 0.3)]
    seen: list[PullProgress] = []
    auth = RegistryAuth(username="u", password="p w:d")
    started = trio.current_time()
    with trio.fail_after(20):
        await runtime.pull(IMAGE, auth=auth, progress=seen.append)
    assert seen[-1] == PullProgress(3, 3, 62921795, 62921795)
    assert trio.current_time() - started > 3.0  # longer than the idle timeout, in all
    assert len(seen) >= 8 and seen[0] == PullProgress(0, 1)
    (head,) = libpod.heads
    assert head.startswith(b"POST /v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fberth")
    header = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"x-registry-auth:"))
    credential = json.loads(base64.urlsafe_b64decode(header.split(b":", 1)[1].strip()))
    assert credential == {"username": "u", "password": "p w:d", "serveraddress": "127.0.0.1:5000"}


async def test_a_silence_past_the_idle_timeout_fails_as_temporary(
    stand_in: tuple[StandIn, PodmanRuntime],
) -> None:
    libpod, runtime = stand_in
    libpod.script = [COMPAT_PULL.splitlines(keepends=True)[0], 5.0]
    seen: list[PullProgress] = []
    started = trio.current_time()
    with trio.fail_after(10), pytest.raises(TemporaryRuntimeError, match="no progress for 0.5s"):
        await runtime.pull(IMAGE, progress=seen.append)
    assert 0.45 <= trio.current_time() - started < 3.0
    assert seen == [PullProgress(0, 1)]


@pytest.mark.parametrize(
    ("script", "status", "error", "match"),
    [
        ([COMPAT_MISSING], 200, ImageNotFound, "manifest unknown"),
        ([COMPAT_CUT], 200, TemporaryRuntimeError, "unexpected EOF"),
        ([COMPAT_PULL.splitlines(keepends=True)[0]], 200, TemporaryRuntimeError, "ended before"),
        (
            [b'{"cause":"invalid reference format","message":"normalizing image: bad"}'],
            500,
            RuntimeFailure,
            "normalizing image: bad",
        ),
    ],
)
async def test_how_a_pull_fails(
    stand_in: tuple[StandIn, PodmanRuntime],
    script: list[bytes | float],
    status: int,
    error: type[RuntimeFailure],
    match: str,
) -> None:
    libpod, runtime = stand_in
    libpod.script, libpod.status = script, status
    with trio.fail_after(10), pytest.raises(error, match=match) as caught:
        await runtime.pull(IMAGE)
    assert type(caught.value) is error
    assert str(caught.value).startswith(f"pull {IMAGE}: ")


async def test_an_unreachable_podman_is_temporary(sock_dir: Path) -> None:
    runtime = PodmanRuntime(f"unix://{sock_dir / 'nobody.sock'}")
    try:
        with trio.fail_after(10), pytest.raises(TemporaryRuntimeError, match="unreachable"):
            await runtime.pull(IMAGE)
    finally:
        await runtime.aclose()


def test_a_localhost_image_no_registry_serves_says_where_such_images_come_from() -> None:
    refused = (
        'pinging container registry localhost: Get "https://localhost/v2/": connection refused'
    )
    local = pull_failure("localhost/berth-model-server:1", refused, authenticated=False)
    assert isinstance(local, TemporaryRuntimeError)
    assert str(local).endswith(LOCAL_IMAGE_HINT) and "podman build" in str(local)
    remote = pull_failure("127.0.0.1:5000/team/model:1", refused, authenticated=False)
    assert LOCAL_IMAGE_HINT not in str(remote)
