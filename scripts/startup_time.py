"""Start-up to listening, measured from outside, as a CI job sees it.

    .venv/bin/python scripts/startup_time.py [--runs N] [--upstream PATH/TO/websockify]

For our websockify: the time from spawning ``websockify 0 127.0.0.1:1 --port-file F``
until F exists (written atomically once the socket listens).  With ``--upstream``
both servers are also timed the same way, side by side (they take turns): from
spawning ``websockify 127.0.0.1:PORT 127.0.0.1:1`` until a TCP connect succeeds,
since upstream has no port file.  Every wait polls each millisecond, bounded by 10 s.
Medians, minimums and maximums in milliseconds; the machine is noisy, so compare the
servers within one run.
"""

from __future__ import annotations

import argparse
import functools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LIMIT = 10.0
HERE = Path(__file__).resolve().parent.parent


def timed_start(command: list[str], ready: Callable[[], bool]) -> float:
    """Seconds from spawning ``command`` until ``ready()``; the server is then stopped."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            if time.perf_counter() - start > LIMIT or proc.poll() is not None:
                raise SystemExit(f"{command[0]}: not listening after {LIMIT:g} s "
                                 f"(exit status {proc.poll()})")
            time.sleep(0.001)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(LIMIT)
        except subprocess.TimeoutExpired:  # upstream 0.13 sometimes ignores SIGTERM
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def until_port_file(ours: str, runs: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            port_file = Path(tmp) / f"port-{run}"
            times.append(timed_start([ours, "0", "127.0.0.1:1", "--port-file", str(port_file)],
                                     port_file.exists))
    return times


def until_connect(servers: dict[str, str], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(runs):
        for name, exe in servers.items():
            port = free_port()
            times[name].append(timed_start([exe, f"127.0.0.1:{port}", "127.0.0.1:1"],
                                           functools.partial(accepts, port)))
    return times


def summary(times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (f"median {statistics.median(ms):.0f} ms, min {min(ms):.0f} ms, "
            f"max {max(ms):.0f} ms ({len(ms)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--ours", default=str(HERE / ".venv" / "bin" / "websockify"))
    parser.add_argument("--upstream", help="upstream's websockify command, to compare")
    opts = parser.parse_args()
    print(f"ours, spawn to --port-file: {summary(until_port_file(opts.ours, opts.runs))}")
    if opts.upstream:
        servers = {"ours": opts.ours, "upstream": opts.upstream}
        for name, times in until_connect(servers, opts.runs).items():
            print(f"{name}, spawn to first TCP connect: {summary(times)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
