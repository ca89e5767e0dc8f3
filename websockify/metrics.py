"""A small Prometheus registry: counters, gauges, histograms, and their text exposition.

No third-party dependency: Prometheus' text format (version 0.0.4) is a few lines
of ``# HELP``, ``# TYPE`` and ``name{label="value"} number``, and websockify needs
only the three metric types here.  Updates are plain arithmetic on dicts, cheap
enough for the relay's hot path; every greenlet of a process shares one registry
(gevent runs one at a time, so no lock is needed), and each process under
``--workers`` or gunicorn has its own, so scrape each or aggregate in Prometheus.

``ServerMetrics`` names what websockify reports (the hook points, for the wiring
that needs the connection state machine's counters and endings):

- ``connections_open``: +1 when the relay starts, -1 when it ends (relay.py);
- ``connections``: at a connection's end, by ``outcome`` (its ending: client
  closed, target closed, protocol error, idle timeout, shutdown …);
- ``bytes``: at a connection's end (or periodically), by ``direction``
  (``to_target``, ``to_client``), from the connection's counters;
- ``handshake_failures``: in the handler, by ``reason`` (the HandshakeError's
  status: ``400``, ``426``, ``503`` …, or ``timeout``);
- ``connection_duration``: at a connection's end, its life in seconds.

``wsgi_app(registry)`` serves the exposition; ``--metrics ADDR:PORT`` is meant to
run it on a WSGIServer of its own, apart from the clients' port.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelValues = tuple[str, ...]


class Metric:
    """What every metric has: a name, a help text, label names, one value per label set."""

    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, "
                             f"not {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) for the exposition."""
        raise NotImplementedError


class _Valued(Metric):
    """A metric holding one number per label set (counters and gauges)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelValues, float] = {} if labelnames else {(): 0.0}

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for key, value in sorted(self._values.items()):
            yield self.name, dict(zip(self.labelnames, key, strict=True)), value


class Counter(_Valued):
    """A number that only goes up (restarts reset it; Prometheus' rate() knows)."""

    kind = "counter"

    def inc(self, amount: float = 1, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Valued):
    """A number that goes up and down, such as the open connections."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = value

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, buckets: Iterable[float],
                 labelnames: Sequence[str] = ()) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is the histogram's own label")
        super().__init__(name, documentation, labelnames)
        self.buckets = (*sorted(float(b) for b in buckets if b != math.inf), math.inf)
        # Per label set: the count in each bucket (not cumulative), then the sum.
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}
        if not labelnames:
            self._counts[()] = [0] * len(self.buckets)
            self._sums[()] = 0.0

    def observe(self, value: float, **labels: str) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * len(self.buckets))
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
                break
        self._sums[key] = self._sums.get(key, 0.0) + value

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for key, counts in sorted(self._counts.items()):
            labels = dict(zip(self.labelnames, key, strict=True))
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                cumulative += count
                yield f"{self.name}_bucket", {**labels, "le": _number(bound)}, cumulative
            yield f"{self.name}_sum", labels, self._sums[key]
            yield f"{self.name}_count", labels, cumulative


class Registry:
    """The metrics of one process, in the order they were made."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: Metric) -> Any:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, documentation, labelnames))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self.register(Gauge(name, documentation, labelnames))

    def histogram(self, name: str, documentation: str, buckets: Iterable[float],
                  labelnames: Sequence[str] = ()) -> Histogram:
        return self.register(Histogram(name, documentation, buckets, labelnames))

    def exposition(self) -> str:
        """Every metric in Prometheus' text format."""
        lines = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {_escape_help(metric.documentation)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for sample, labels, value in metric.samples():
                lines.append(f"{sample}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"'
                          for name, value in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(float(value))


#: Connection lifetimes: a failed attempt, a look, a session, a working day.
DURATION_BUCKETS = (0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """websockify's metrics; see the module docstring for where each is updated."""

    registry: Registry
    connections_open: Gauge
    connections: Counter
    bytes: Counter
    handshake_failures: Counter
    connection_duration: Histogram

    @classmethod
    def create(cls, registry: Registry | None = None) -> ServerMetrics:
        registry = registry or Registry()
        return cls(
            registry=registry,
            connections_open=registry.gauge(
                "websockify_connections_open", "WebSocket connections being relayed now."),
            connections=registry.counter(
                "websockify_connections_total", "WebSocket connections ended, by how they "
                "ended.", ["outcome"]),
            bytes=registry.counter(
                "websockify_bytes_total", "Payload bytes relayed, by direction.",
                ["direction"]),
            handshake_failures=registry.counter(
                "websockify_handshake_failures_total", "Upgrade requests refused, by reason.",
                ["reason"]),
            connection_duration=registry.histogram(
                "websockify_connection_duration_seconds", "How long WebSocket connections "
                "lasted.", DURATION_BUCKETS),
        )


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]


def wsgi_app(registry: Registry) -> WsgiApp:
    """A WSGI application answering GET (and HEAD) with the exposition, 405 otherwise."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Length", "0")])
            return []
        body = registry.exposition().encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    return application
