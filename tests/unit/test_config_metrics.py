"""`[[metrics.scrape]]` and `metric = "prometheus"`: field paths, defaults, the query subset,
and the ids (a spec without the new keys keeps its spec_id; a scrape on a new port changes
the template, one on the app port or a new path does not)."""

from __future__ import annotations

import pytest

from config.parse import parse_spec, spec_from_dict, spec_id, spec_to_dict, template_id
from config.parse_metrics import as_selector
from config.spec import MetricName, Scrape, SeriesSelector
from tests.unit.test_config_parse import make, problems_of

AUTOSCALED = "[replicas]\nmin = 1\nmax = 4\n"
QUEUE = """
[[autoscale.metrics]]
metric = "prometheus"
query = "vllm:num_requests_waiting"
target = 4
"""


def scrape(body: str = "") -> str:
    return f"[[metrics.scrape]]\n{body}\n"


def test_defaults_and_values() -> None:
    spec = parse_spec(
        make(
            AUTOSCALED
            + scrape()
            + scrape('port = 9100\npath = "/m?x=1"\nperiod = "2s"')
            + scrape('port = 9200\nperiod = "1m"\ntimeout = "30s"')
            + QUEUE
        )
    )
    assert spec.metrics.scrape == (
        Scrape(port=8080, path="/metrics", period=15.0, timeout=5.0),
        Scrape(port=9100, path="/m?x=1", period=2.0, timeout=2.0),  # the timeout fits the period
        Scrape(port=9200, path="/metrics", period=60.0, timeout=30.0),
    )
    [metric] = spec.autoscale.metrics
    assert metric.metric is MetricName.PROMETHEUS and metric.target == 4.0
    assert metric.query == SeriesSelector("vllm:num_requests_waiting")
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(spec_to_dict(spec, defaults=False)) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:num_requests_waiting", SeriesSelector("vllm:num_requests_waiting")),
        ("  tgi_queue_size  ", SeriesSelector("tgi_queue_size")),
        ('q{model_name="x"}', SeriesSelector("q", (("model_name", "x"),))),
        ('q{ b = "2" , a="1", }', SeriesSelector("q", (("a", "1"), ("b", "2")))),
        (r'q{a="say \"hi\"\\ \n"}', SeriesSelector("q", (("a", 'say "hi"\\ \n'),))),
        ("q{}", SeriesSelector("q")),
    ],
)
def test_the_query_subset(text: str, expected: SeriesSelector) -> None:
    selector = as_selector(text)
    assert selector == expected
    assert as_selector(str(selector)) == selector  # the canonical text reads back the same


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a metric name"),
        ("1abc", "must be a metric name"),
        ("rate(x[5m])", "must be a metric name"),
        ("sum(x)", "must be a metric name"),
        ('q{a=~"b.*"}', "only exact matchers"),
        ('q{a!="b"}', "only exact matchers"),
        ('q{__name__="b"}', "reserved"),
        ('q{a="1",a="2"}', "matched twice"),
        ('q{a="1" b="2"}', "separated by commas"),
        ('q{a="1"', "must end with }"),
        ("q{a=1}", "cannot read the matcher"),
        (r'q{a="\t"}', "unknown escape"),
        ('q{a="1"} > 3', "must end with }"),
    ],
)
def test_queries_outside_the_subset(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        as_selector(text)
    assert message in str(info.value)


BAD = [
    ("port 0", scrape("port = 0"), "metrics.scrape[0].port: must be between 1 and 65535"),
    ("path relative", scrape('path = "metrics"'), 'metrics.scrape[0].path: must start with "/"'),
    ("path space", scrape('path = "/a b"'), "metrics.scrape[0].path: must be printable ASCII"),
    ("path int", scrape("path = 3"), "metrics.scrape[0].path: must be a string"),
    ("period short", scrape('period = "500ms"'), "metrics.scrape[0].period: must be at least 1s"),
    ("period long", scrape('period = "2h"'), "metrics.scrape[0].period: must be at most 1h"),
    (
        "timeout over period",
        scrape('period = "5s"\ntimeout = "6s"'),
        "metrics.scrape[0].timeout: must be at most metrics.scrape[0].period (6s > 5s)",
    ),
    ("timeout zero", scrape('timeout = "0s"'), "metrics.scrape[0].timeout: must be longer than 0s"),
    ("unknown key", scrape("interval = 3"), "metrics.scrape[0].interval: unknown key"),
    ("unknown table key", "[metrics]\nlisten = 3\n", "metrics.listen: unknown key"),
    (
        "scrape not an array",
        "[metrics.scrape]\nport = 1\n",
        "metrics.scrape: must be an array of tables",
    ),
    (
        "same port and path",
        scrape("port = 9100") + scrape('port = 9100\npath = "/metrics"'),
        'metrics.scrape[1].path: same port and path as metrics.scrape[0] (got "/metrics")',
    ),
    (
        "too many",
        scrape() * 1 + "".join(scrape(f"port = {9000 + i}") for i in range(8)),
        "metrics.scrape: at most 8 entries (9 given)",
    ),  # fmt: skip
    (
        "query missing",
        scrape() + '[[autoscale.metrics]]\nmetric = "prometheus"\ntarget = 4\n',
        'autoscale.metrics[0].query: required for metric = "prometheus"',
    ),
    (
        "no scrape entry",
        QUEUE,
        "autoscale.metrics[0].query: no [[metrics.scrape]] entry",
    ),
    (
        "query on another metric",
        '[[autoscale.metrics]]\nmetric = "cpu"\nquery = "x"\ntarget = 50\n',
        'autoscale.metrics[0].query: only for metric = "prometheus"',
    ),
    (
        "bad query",
        scrape() + QUEUE.replace('"vllm:num_requests_waiting"', "'x{a=~\"b\"}'"),
        "autoscale.metrics[0].query: only exact matchers",
    ),
    (
        "target not a number",
        scrape() + QUEUE.replace("target = 4", 'target = "4"'),
        "autoscale.metrics[0].target: must be a number",
    ),
    (
        "target zero",
        scrape() + QUEUE.replace("target = 4", "target = 0"),
        "autoscale.metrics[0].target: must be > 0",
    ),
    (
        "p95 of a gauge",
        scrape() + QUEUE + 'summary = "p95"\n',
        "autoscale.metrics[0].summary: p95 is only for request_duration",
    ),
    (
        "same query twice",
        scrape() + QUEUE + QUEUE.replace("target = 4", "target = 8"),
        "autoscale.metrics[1].metric: same metric and query as autoscale.metrics[0]",
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), BAD, ids=[b[0] for b in BAD])
def test_problems_name_their_field_paths(case: str, body: str, expected: str) -> None:
    problems = problems_of(make(AUTOSCALED + body))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_broken_scrape_entry_is_not_also_a_missing_one() -> None:
    problems = problems_of(make(AUTOSCALED + scrape("port = 0") + QUEUE))
    assert problems == ["metrics.scrape[0].port: must be between 1 and 65535 (got 0)"]


def test_two_queries_on_different_labels_are_two_metrics() -> None:
    other = QUEUE.replace('"vllm:num_requests_waiting"', """'vllm:num_requests_waiting{m="a"}'""")
    spec = parse_spec(make(AUTOSCALED + scrape() + QUEUE + other))
    assert [str(m.query) for m in spec.autoscale.metrics] == [
        "vllm:num_requests_waiting",
        'vllm:num_requests_waiting{m="a"}',
    ]


def test_ids() -> None:
    plain = parse_spec(make(AUTOSCALED))
    # The ids of a spec without the new keys, as they were before them (spec_id stability).
    assert spec_to_dict(plain, defaults=False).keys() == {
        "name", "image", "port", "replicas", "endpoint"
    }  # fmt: skip
    on_app_port = parse_spec(make(AUTOSCALED + scrape()))
    assert spec_id(on_app_port) != spec_id(plain)
    assert template_id(on_app_port) == template_id(plain)  # nothing new to publish
    moved = parse_spec(make(AUTOSCALED + scrape('path = "/other"\nperiod = "5s"')))
    assert template_id(moved) == template_id(plain) and spec_id(moved) != spec_id(on_app_port)
    second_port = parse_spec(make(AUTOSCALED + scrape("port = 9100")))
    assert template_id(second_port) != template_id(plain)  # 9100 must be published
    other_path = parse_spec(make(AUTOSCALED + scrape('port = 9100\npath = "/x"')))
    assert template_id(other_path) == template_id(second_port)
    # Written differently, meaning the same: one id.
    same = parse_spec(make(AUTOSCALED + scrape('port = 8080\npath = "/metrics"\ntimeout = "5s"')))
    assert spec_id(same) == spec_id(on_app_port)
    spaced = QUEUE.replace('"vllm:num_requests_waiting"', """' vllm:q{b="1", a="2"}'""")
    tight = QUEUE.replace('"vllm:num_requests_waiting"', """'vllm:q{a="2",b="1"}'""")
    assert spec_id(parse_spec(make(AUTOSCALED + scrape() + spaced))) == spec_id(
        parse_spec(make(AUTOSCALED + scrape() + tight))
    )
