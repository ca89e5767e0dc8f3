"""The Prometheus registry, checked by prometheus_client's own parser and over HTTP."""

from __future__ import annotations

import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import TIMEOUT
from websockify.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    Registry,
    ServerMetrics,
    wsgi_app,
)


def parsed(text: str) -> dict[str, object]:
    """{family name: (type, help, {(sample name, sorted labels): value})}"""
    families = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = (family.type, family.documentation, samples)
    return families


def test_exposition_is_what_prometheus_reads() -> None:
    """Simulated traffic: three connections, two handshake failures; what the
    exposition says is what happened, read back by a third-party parser."""
    metrics = ServerMetrics.create()
    for duration, outcome, up, down in [(0.05, "client_closed", 10, 2000),
                                        (42.0, "client_closed", 300, 4),
                                        (7200.0, "idle_timeout", 0, 1 << 40)]:
        metrics.connections_open.inc()
        metrics.bytes.inc(up, direction="to_target")
        metrics.bytes.inc(down, direction="to_client")
        metrics.connections.inc(outcome=outcome)
        metrics.connection_duration.observe(duration)
        metrics.connections_open.dec()
    metrics.connections_open.inc()  # one still open
    metrics.handshake_failures.inc(reason="400")
    metrics.handshake_failures.inc(reason="timeout")

    families = parsed(metrics.registry.exposition())
    assert families["websockify_connections_open"] == (
        "gauge", "WebSocket connections being relayed now.",
        {("websockify_connections_open", ()): 1.0})
    kind, _, samples = families["websockify_connections"]  # the parser drops _total
    assert kind == "counter"
    assert samples == {
        ("websockify_connections_total", (("outcome", "client_closed"),)): 2.0,
        ("websockify_connections_total", (("outcome", "idle_timeout"),)): 1.0}
    _, _, samples = families["websockify_bytes"]
    assert samples == {("websockify_bytes_total", (("direction", "to_client"),)): 2004 + 2 ** 40,
                       ("websockify_bytes_total", (("direction", "to_target"),)): 310.0}
    _, _, samples = families["websockify_handshake_failures"]
    assert sorted(dict(labels)["reason"] for _, labels in samples) == ["400", "timeout"]
    kind, _, samples = families["websockify_connection_duration_seconds"]
    assert kind == "histogram"
    buckets = {dict(labels)["le"]: value for (name, labels), value in samples.items()
               if name.endswith("_bucket")}
    assert buckets["0.1"] == 1 and buckets["60"] == 2 and buckets["3600"] == 2
    assert buckets["14400"] == 3 and buckets["+Inf"] == 3
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    name = "websockify_connection_duration_seconds"
    assert samples[(f"{name}_count", ())] == 3
    assert samples[(f"{name}_sum", ())] == pytest.approx(7242.05)


def test_exposition_text_exactly() -> None:
    registry = Registry()
    registry.counter("demo_total", "A help\\text\nover lines.", ["path"]).inc(
        2, path='C:\\dir "quoted"\nnext')
    registry.gauge("demo_temperature", "Degrees.").set(-1.5)
    histogram = registry.histogram("demo_seconds", "Durations.", [1, 0.5], ["kind"])
    histogram.observe(0.7, kind="a")
    histogram.observe(math.inf, kind="a")
    assert registry.exposition() == (
        '# HELP demo_total A help\\\\text\\nover lines.\n'
        '# TYPE demo_total counter\n'
        'demo_total{path="C:\\\\dir \\"quoted\\"\\nnext"} 2\n'
        '# HELP demo_temperature Degrees.\n'
        '# TYPE demo_temperature gauge\n'
        'demo_temperature -1.5\n'
        '# HELP demo_seconds Durations.\n'
        '# TYPE demo_seconds histogram\n'
        'demo_seconds_bucket{kind="a",le="0.5"} 0\n'
        'demo_seconds_bucket{kind="a",le="1"} 1\n'
        'demo_seconds_bucket{kind="a",le="+Inf"} 2\n'
        'demo_seconds_sum{kind="a"} +Inf\n'
        'demo_seconds_count{kind="a"} 2\n')
    # The escapes are undone by Prometheus' parser: the label value comes back whole.
    _, documentation, samples = parsed(registry.exposition())["demo"]
    assert documentation == "A help\\text\nover lines."
    assert list(samples) == [("demo_total", (("path", 'C:\\dir "quoted"\nnext'),))]


@pytest.mark.parametrize("make", [
    lambda r: r.counter("bad name", "x"),
    lambda r: r.counter("ok", "x", ["__reserved"]),
    lambda r: r.histogram("ok", "x", [1], ["le"]),
    lambda r: r.counter("ok", "x").inc(-1),
    lambda r: r.counter("ok", "x", ["a"]).inc(b="1"),
    lambda r: (r.gauge("twice", "x"), r.gauge("twice", "x")),
    lambda r: r.histogram("ok", "x", [1]).observe(math.nan),
])
def test_misuse_is_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make(Registry())  # type: ignore[operator]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[tuple[ServerMetrics, str]]:
    """The WSGI app on a real HTTP server on 127.0.0.1 port 0."""
    metrics = ServerMetrics.create()
    server = make_server("127.0.0.1", 0, wsgi_app(metrics.registry),
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)


def test_scraped_over_http_while_values_change(
        metrics_server: tuple[ServerMetrics, str]) -> None:
    metrics, url = metrics_server
    for expected in (1, 2):
        metrics.connections.inc(outcome="target_closed")
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            families = parsed(response.read().decode())
        _, _, samples = families["websockify_connections"]
        assert samples == {
            ("websockify_connections_total", (("outcome", "target_closed"),)): expected}
    request = urllib.request.Request(url, method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert refused.value.code == 405
