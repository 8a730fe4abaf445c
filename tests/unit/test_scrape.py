"""The scraper of the replicas' own metrics (`daemon.metrics.scrape`) and their re-export on
berthd's /metrics: parsing by prometheus-client's parser, the scrape loop on MockClock with a
fake fetch, one real fetch over loopback, and the exposition read back by prometheus-client's
parsers (text and OpenMetrics)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from config.spec import Scrape, SeriesSelector
from daemon.metrics.exposition import MetricsSnapshot, render, scraped_families
from daemon.metrics.scrape import (
    ScrapedFamilies,
    ScrapeFailed,
    Scraper,
    ScrapeTarget,
    fetch_exposition,
    gauge_value,
    parse_exposition,
)

PAGE = b"""\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 3.0
vllm:num_requests_waiting{model_name="b"} 1.0
# HELP vllm:prompt_tokens_total Prompt tokens.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="a"} 120.0
# HELP vllm:prompt_tokens_created Prompt tokens.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{model_name="a"} 1.7e9
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0"} 2.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 3.0
vllm:e2e_request_latency_seconds_sum 4.5
vllm:e2e_request_latency_seconds_count 3.0
# TYPE mine gauge
mine{replica="inside",deployment="theirs"} 7
mine{replica="nan"} NaN
untyped_thing 4
# TYPE berth_build gauge
berth_build 1
"""
WAITING = SeriesSelector("vllm:num_requests_waiting")


def target(
    replica: str = "r1", entry: int = 0, period: float = 10.0, port: int = 1
) -> ScrapeTarget:
    scrape = Scrape(9100, period=period, timeout=min(period, 2.0))
    return ScrapeTarget("llm", replica, f"c-{replica}", entry, scrape, port)


# -- parsing --------------------------------------------------------------------------------


def test_a_page_parses_and_gauges_answer_queries() -> None:
    families = parse_exposition(PAGE, 1000)
    assert gauge_value(families, WAITING) == 4.0  # both models' series, summed
    assert gauge_value(families, SeriesSelector(WAITING.name, (("model_name", "b"),))) == 1.0
    assert gauge_value(families, SeriesSelector(WAITING.name, (("model_name", "c"),))) is None
    assert gauge_value(families, SeriesSelector("untyped_thing")) == 4.0
    assert gauge_value(families, SeriesSelector("mine")) == 7.0  # the NaN is no value
    # Counters and histograms are not gauges, whatever name is asked for.
    assert gauge_value(families, SeriesSelector("vllm:prompt_tokens_total")) is None
    assert gauge_value(families, SeriesSelector("vllm:prompt_tokens")) is None
    assert gauge_value(families, SeriesSelector("vllm:e2e_request_latency_seconds_count")) is None
    assert gauge_value(families, SeriesSelector("absent")) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>Not found</body></html>\n", "not the Prometheus text format"),
        (b"a b c d\n", "not the Prometheus text format"),
        (b"x 1\n\xff\xfe\n", "not UTF-8 text (byte 4)"),
        (b"".join(b"s%d 1\n" % i for i in range(11)), "more than 10 series"),
    ],
)
def test_what_is_not_a_page(body: bytes, reason: str) -> None:
    with pytest.raises(ScrapeFailed) as info:
        parse_exposition(body, 10)
    assert str(info.value).startswith(reason)


# -- the scrape loop --------------------------------------------------------------------------


class FakeReplicas:
    """Targets and the pages their fetches answer (bytes, or an exception to raise)."""

    def __init__(self) -> None:
        self.targets: list[ScrapeTarget] = []
        self.pages: dict[str, bytes | Exception] = {}
        self.fetched: list[tuple[float, str]] = []
        self.hang = trio.Event()

    async def fetch(self, t: ScrapeTarget, max_body: int) -> bytes:
        self.fetched.append((trio.current_time(), t.replica_id))
        page = self.pages.get(t.replica_id, ScrapeFailed("connect failed: refused"))
        if page == b"hang":
            await trio.sleep_forever()
        if isinstance(page, Exception):
            raise page
        return page


def gauge_page(value: float) -> bytes:
    return f"# TYPE q gauge\nq {value}\n".encode()


Q = SeriesSelector("q")


@pytest.fixture
async def running(autojump_clock: MockClock) -> AsyncIterator[tuple[FakeReplicas, Scraper]]:
    fake = FakeReplicas()
    scraper = Scraper(
        lambda: fake.targets, fetch=fake.fetch, discover_every=2.0, parse_in_thread=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scraper.run)
        yield fake, scraper
        nursery.cancel_scope.cancel()


async def until(check: Callable[[], bool], within: float = 60.0) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - the scraper's state, read as the API does
            await trio.sleep(0.1)


async def test_scraped_at_once_then_every_period(
    autojump_clock: MockClock,
    running: tuple[FakeReplicas, Scraper],
) -> None:
    fake, scraper = running
    start = trio.current_time()
    fake.pages["r1"] = gauge_page(6)
    fake.targets = [target("r1", period=10.0)]
    await until(lambda: scraper.value("llm", "r1", Q) == 6.0)
    assert fake.fetched[0][0] - start < 2.5  # found at the next discovery
    await trio.sleep(35.0)
    times = [t for t, _ in fake.fetched]
    assert len(times) == 4 and all(
        abs(b - a - 10.0) < 0.5 for a, b in zip(times, times[1:], strict=False)
    )


async def test_a_failed_scrape_is_unknown_and_logged_once_per_reason(
    autojump_clock: MockClock,
    running: tuple[FakeReplicas, Scraper],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, scraper = running
    caplog.set_level(logging.INFO, logger="berthd.metrics")
    fake.pages["r1"] = gauge_page(6)
    fake.targets = [target("r1", period=5.0)]
    await until(lambda: scraper.value("llm", "r1", Q) == 6.0)
    fake.pages["r1"] = ScrapeFailed("HTTP 503")
    await until(lambda: scraper.value("llm", "r1", Q) is None)  # unknown, not 6, not 0
    assert scraper.total("llm", Q) is None
    await trio.sleep(30.0)  # six more failures, all for the same reason
    fake.pages["r1"] = ScrapeFailed("connect failed: Connection refused")
    await trio.sleep(10.0)
    fake.pages["r1"] = gauge_page(2)
    await until(lambda: scraper.value("llm", "r1", Q) == 2.0)
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "cannot scrape" in line] == [
        "cannot scrape replica r1 at :9100/metrics: HTTP 503 (its metrics are unknown until "
        "it answers)",
        "cannot scrape replica r1 at :9100/metrics: connect failed: Connection refused (its "
        "metrics are unknown until it answers)",
    ]
    assert any("works again (1 series)" in line for line in lines)
    assert scraper.failures >= 7


async def test_a_scrape_that_hangs_times_out(
    autojump_clock: MockClock, running: tuple[FakeReplicas, Scraper]
) -> None:
    fake, scraper = running
    fake.pages["r1"] = b"hang"
    fake.targets = [target("r1", period=10.0)]
    await until(lambda: scraper.failures == 1)
    [replica] = scraper.deployment_json("llm", [Q])["replicas"]
    assert replica["scrapes"][0]["error"] == "no answer within 2s"
    assert replica["values"] == {"q": None}


async def test_total_is_the_mean_of_the_known_times_the_ready(
    autojump_clock: MockClock,
    running: tuple[FakeReplicas, Scraper],
) -> None:
    fake, scraper = running
    fake.pages.update(r1=gauge_page(6), r2=gauge_page(2), r3=ScrapeFailed("HTTP 500"))
    fake.targets = [target("r1"), target("r2"), target("r3")]
    await until(lambda: len(fake.fetched) >= 3)
    assert scraper.replicas("llm") == ["r1", "r2", "r3"]
    assert scraper.total("llm", Q) == 12.0  # (6 + 2) / 2 x 3: r3 counts as the others' mean
    answer = scraper.deployment_json("llm", [Q])
    assert answer["queries"] == ["q"] and answer["average"] == {"q": 4.0}
    assert [r["values"]["q"] for r in answer["replicas"]] == [6.0, 2.0, None]
    assert answer["replicas"][2]["scrapes"][0] == {
        "port": 9100, "path": "/metrics", "ok": False, "age_s": None, "series": None,
        "error": "HTTP 500",
    }  # fmt: skip
    # Two entries of one replica: their gauges add up.
    fake.pages["r4"] = gauge_page(1)
    fake.targets = [target("r4", entry=0), target("r4", entry=1)]
    await until(lambda: scraper.value("llm", "r4", Q) == 2.0)
    assert scraper.replicas("llm") == ["r4"] and scraper.value("llm", "r1", Q) is None


async def test_a_replica_that_leaves_mid_scrape_stores_nothing(autojump_clock: MockClock) -> None:
    release = trio.Event()
    fake = FakeReplicas()

    async def slow(t: ScrapeTarget, max_body: int) -> bytes:
        await release.wait()
        return gauge_page(9)

    scraper = Scraper(lambda: fake.targets, fetch=slow, parse_in_thread=False)
    fake.targets = [target("r1")]
    scraper.discover(trio.current_time())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scraper.scrape, target("r1"))
        await trio.sleep(0.5)
        fake.targets = [target("r1", port=2)]  # a new container: another target
        scraper.discover(trio.current_time())
        release.set()
    assert scraper.value("llm", "r1", Q) is None and scraper.scrapes == 1


# -- one real fetch over loopback ---------------------------------------------------------------


async def serve_once(answer: bytes) -> tuple[int, Callable[[], Awaitable[None]]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle() -> None:
        async with listeners[0]:
            stream = await listeners[0].accept()
            async with stream:
                await stream.receive_some(65536)
                await stream.send_all(answer)

    return port, handle


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nq 1\nr 2\n", b"q 1\nr 2\n"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20, "the page is over 16"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx",
            "a gzip-encoded body (identity was asked)",
        ),  # fmt: skip
    ],
)
async def test_fetch_over_loopback(answer: bytes, expected: bytes | str) -> None:
    port, handle = await serve_once(answer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle)
        with trio.fail_after(10):
            if isinstance(expected, bytes):
                assert await fetch_exposition(target(port=port), 16) == expected
            else:
                with pytest.raises(ScrapeFailed) as info:
                    await fetch_exposition(target(port=port), 16)
                assert str(info.value).startswith(expected) or expected in str(info.value)


async def test_fetch_of_a_closed_port() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with pytest.raises(ScrapeFailed, match="^connect failed: "), trio.fail_after(10):
        await fetch_exposition(target(port=port), 1024)


# -- the re-export ------------------------------------------------------------------------------


def two_replicas() -> list[ScrapedFamilies]:
    families = parse_exposition(PAGE, 1000)
    other = parse_exposition(b"# TYPE mine counter\nmine_total 3\n# TYPE q gauge\nq 5\n", 100)
    return [
        ScrapedFamilies("llm", "r1", families),
        ScrapedFamilies("llm", "r2", families),
        ScrapedFamilies("tiny", "t1", other),
    ]


def by_name(text: str, parse: Callable[[str], object]) -> dict[str, object]:
    return {f.name: f for f in parse(text)}  # type: ignore[attr-defined]


def test_scraped_series_carry_deployment_and_replica() -> None:
    snap = MetricsSnapshot("test", scraped=tuple(two_replicas()))
    body, content_type = render(snap)
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    waiting = families["vllm:num_requests_waiting"]
    assert waiting.type == "gauge"
    assert waiting.documentation == "Number of requests waiting to be processed."
    seen = sorted((s.labels["replica"], s.labels["model_name"], s.value) for s in waiting.samples)
    assert seen == [("r1", "a", 3.0), ("r1", "b", 1.0), ("r2", "a", 3.0), ("r2", "b", 1.0)]
    assert {s.labels["deployment"] for s in waiting.samples} == {"llm"}
    # Their own deployment/replica labels are kept, renamed.
    mine = families["mine"]
    assert mine.type == "gauge"  # the first replica's type; tiny's counter "mine" is left out
    inside = [s for s in mine.samples if s.labels.get("exported_replica") == "inside"]
    assert len(inside) == 2 and inside[0].labels["exported_deployment"] == "theirs"
    assert any(math.isnan(s.value) for s in mine.samples)
    assert [s.value for s in families["vllm:prompt_tokens"].samples] == [120.0, 120.0]
    assert len(families["vllm:e2e_request_latency_seconds"].samples) == 8
    assert [(s.labels, s.value) for s in families["q"].samples] == [
        ({"deployment": "tiny", "replica": "t1"}, 5.0)
    ]
    # The replica's berth_build gauge is left out: only berthd's own berth_* series are there.
    assert "berth_build" not in families
    assert [s.labels for s in families["berth_build_info"].samples] == [{"version": "test"}]


def test_the_openmetrics_exposition_parses_too() -> None:
    snap = MetricsSnapshot("test", scraped=tuple(two_replicas()))
    body, content_type = render(snap, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    # Underscore escaping: the colon is an underscore, in the family and in its samples.
    waiting = families["vllm_num_requests_waiting"]
    assert len(waiting.samples) == 4 and {s.labels["replica"] for s in waiting.samples} == {
        "r1", "r2"
    }  # fmt: skip
    assert families["vllm_prompt_tokens"].type == "counter"
    assert "vllm_prompt_tokens_created" not in families  # the counter's own _created
    # Asked with UTF-8 names, the colons stay.
    body, content_type = render(
        snap, "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"
    )
    assert "escaping=allow-utf-8" in content_type
    assert "vllm:num_requests_waiting" in {f.name for f in openmetrics_families(body.decode())}


def test_a_series_written_twice_is_written_once() -> None:
    families = parse_exposition(b"# TYPE q gauge\nq 1\n", 10)
    merged = scraped_families([ScrapedFamilies("d", "r", families)] * 2)
    assert [len(f.samples) for f in merged] == [1]
