"""rebind.so on its own: real processes with the shim preloaded, real sockets.

Each test runs a small Python program with LD_PRELOAD=rebind.so (Python's socket
module calls libc's bind() and listen(), so the shim sees them as it sees a VNC
server's) and checks where its sockets ended up and what the report file says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_support import build_rebind, wait_until
from tests.support import TIMEOUT, TcpServer, echo


@pytest.fixture(scope="module")
def rebind(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rebind(tmp_path_factory.mktemp("rebind"))


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something really listens on: a moved bind to it must still succeed."""
    server = TcpServer(echo)
    yield server.port
    server.close()


def preloaded_env(rebind: Path, report: Path | None, ports: str = "*") -> dict[str, str]:
    env = dict(os.environ, LD_PRELOAD=str(rebind), WEBSOCKIFY_REBIND_PORTS=ports)
    env.pop("WEBSOCKIFY_REBIND_REPORT", None)
    if report is not None:
        env["WEBSOCKIFY_REBIND_REPORT"] = str(report)
    return env


def run(code: str, rebind: Path, report: Path | None, ports: str = "*") -> object:
    """Run ``code`` under the shim; it prints one JSON value, which is returned.

    The shim must stay silent: anything on stderr fails the test.
    """
    prelude = "import json, socket, os, sys\n"
    done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          env=preloaded_env(rebind, report, ports), timeout=TIMEOUT, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    return json.loads(done.stdout)


def report_lines(report: Path) -> list[list[str]]:
    return [line.split() for line in report.read_text().splitlines()] if report.exists() else []


@pytest.mark.parametrize(("family", "wildcard", "loopback"), [
    ("AF_INET", "0.0.0.0", "127.0.0.1"),
    ("AF_INET6", "::", "::1"),
])
def test_a_listening_bind_moves_to_a_loopback_port_and_is_reported(
        rebind: Path, tmp_path: Path, busy_port: int, family: str, wildcard: str,
        loopback: str) -> None:
    report = tmp_path / "report"
    pid, (host, port) = run(f"""
s = socket.socket(socket.{family}, socket.SOCK_STREAM)
s.bind(({wildcard!r}, {busy_port}))
s.listen(1)
print(json.dumps([os.getpid(), s.getsockname()[:2]]))
""", rebind, report)
    assert host == loopback
    assert port not in (0, busy_port)
    assert report_lines(report) == [[str(pid), str(busy_port), loopback, str(port)]]


def test_both_families_of_one_port_get_two_moved_sockets(rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    ports = run("""
v4 = socket.socket(socket.AF_INET)
v4.bind(("0.0.0.0", 5901))
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", 5901))
v4.listen(1)
v6.listen(1)
print(json.dumps([v4.getsockname()[1], v6.getsockname()[1]]))
""", rebind, report)
    assert [line[1:] for line in report_lines(report)] == [
        ["5901", "127.0.0.1", str(ports[0])], ["5901", "::1", str(ports[1])]]


def test_the_report_is_written_at_listen_not_at_bind(rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    before_listen = run(f"""
s = socket.socket()
s.bind(("0.0.0.0", 5901))
print(json.dumps(os.path.exists({str(report)!r})))
""", rebind, report)
    assert before_listen is False
    assert not report.exists()


def test_a_socket_beyond_the_descriptor_table_is_reported_at_bind(
        rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    port = run("""
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
s = socket.socket()
fd = os.dup2(s.fileno(), 5000)
high = socket.socket(fileno=fd)
high.bind(("0.0.0.0", 5901))
print(json.dumps(high.getsockname()[1]))
""", rebind, report)
    assert [line[1:] for line in report_lines(report)] == [["5901", "127.0.0.1", str(port)]]


def test_unix_sockets_pass_through(rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    path = tmp_path / "sock"
    bound = run(f"""
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind({str(path)!r})
s.listen(1)
print(json.dumps(s.getsockname()))
""", rebind, report)
    assert bound == str(path)
    assert path.is_socket()
    assert not report.exists()


def test_udp_passes_through(rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    wanted, bound = run("""
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.bind(("0.0.0.0", 0))
port = probe.getsockname()[1]
probe.close()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print(json.dumps([port, s.getsockname()]))
""", rebind, report)
    assert bound == ["0.0.0.0", wanted]
    assert not report.exists()


def test_unlisted_ports_and_port_zero_pass_through(rebind: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    other, ephemeral, listed = run("""
probe = socket.socket()
probe.bind(("0.0.0.0", 0))
port = probe.getsockname()[1]
probe.close()
other = socket.socket()
other.bind(("0.0.0.0", port))
other.listen(1)
ephemeral = socket.socket()
ephemeral.bind(("0.0.0.0", 0))
ephemeral.listen(1)
listed = socket.socket()
listed.bind(("0.0.0.0", 5901))
listed.listen(1)
print(json.dumps([[port, other.getsockname()], ephemeral.getsockname(), listed.getsockname()]))
""", rebind, report, ports="5901,6080")
    assert other[1] == ["0.0.0.0", other[0]]
    assert ephemeral[0] == "0.0.0.0"
    assert listed[0] == "127.0.0.1"
    assert [line[1:3] for line in report_lines(report)] == [["5901", "127.0.0.1"]]


ERRNO_PROBE = """
import ctypes, errno, struct
libc = ctypes.CDLL(None, use_errno=True)

def bind(sock, port):
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + bytes(12)
    ctypes.set_errno(1234)
    result = libc.bind(sock.fileno(), addr, len(addr))
    return [result, ctypes.get_errno()]

busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen(1)
moved = socket.socket()
results = {
    "moved": bind(moved, 5901),
    "moved again": bind(moved, 5901),
    "passed through, in use": bind(socket.socket(), busy.getsockname()[1]),
}
print(json.dumps(results))
"""


def test_errno_is_kept_on_success_and_set_by_the_real_bind_on_failure(
        rebind: Path, tmp_path: Path) -> None:
    results = run(ERRNO_PROBE, rebind, tmp_path / "report", ports="5901")
    assert results == {
        "moved": [0, 1234],
        "moved again": [-1, 22],  # EINVAL: the socket is bound already
        "passed through, in use": [-1, 98],  # EADDRINUSE
    }


def test_a_moved_port_is_in_use_while_the_tree_listens_on_it(
        rebind: Path, tmp_path: Path) -> None:
    """As TigerVNC's vncserver probes "is Xtigervnc up?" by binding its port."""
    report = tmp_path / "report"
    listener = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\ns = socket.socket()\n"
         "s.bind(('0.0.0.0', 5901))\ns.listen(1)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, env=preloaded_env(rebind, report))
    try:
        wait_until(report.exists, "the listener's report")
        probe = """
def try_bind(family, host):
    try:
        socket.socket(family).bind((host, 5901))
        return "free"
    except OSError as exc:
        return exc.strerror
print(json.dumps([try_bind(socket.AF_INET, "0.0.0.0"), try_bind(socket.AF_INET6, "::")]))
"""
        assert run(probe, rebind, report) == ["Address already in use", "free"]
    finally:
        listener.communicate(b"", timeout=TIMEOUT)
    assert run(probe, rebind, report) == ["free", "free"]


def test_without_a_report_path_binds_still_move(rebind: Path) -> None:
    host = run("""
s = socket.socket()
s.bind(("0.0.0.0", 5901))
s.listen(1)
print(json.dumps(s.getsockname()[0]))
""", rebind, None)
    assert host == "127.0.0.1"


def test_the_debug_build_traces_moves(tmp_path: Path) -> None:
    debug = build_rebind(tmp_path, debug=True)
    code = "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 5901))\ns.listen(1)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=preloaded_env(debug, tmp_path / "report"), timeout=TIMEOUT,
                          check=True)
    assert "rebind.so: pid" in done.stderr
    assert "port 5901 listens on 127.0.0.1" in done.stderr
