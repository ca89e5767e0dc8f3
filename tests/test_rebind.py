"""rebind.so on its own: real processes with the shim preloaded, real sockets.

Each test runs a small Python program with LD_PRELOAD=rebind.so (Python's socket
module calls libc's bind(), listen() and connect(), so the shim sees them as it
sees a VNC server's) and checks where its sockets ended up and what the report
file says.  Ports that must really be bound are free ports; 5901 is used only
where the shim moves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_support import build_rebind, free_port
from tests.support import TIMEOUT, TcpServer, echo, wait_until


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """The report file, created empty as websockify creates it."""
    path = tmp_path / "report"
    path.touch()
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something really listens on."""
    server = TcpServer(echo)
    yield server.port
    server.close()


def preloaded_env(rebind: Path, report: Path | None, port: str = "*",
                  unix: str = "") -> dict[str, str]:
    env = dict(os.environ, LD_PRELOAD=str(rebind), WEBSOCKIFY_REBIND_PORTS=port,
               WEBSOCKIFY_REBIND_UNIX=unix)
    env.pop("WEBSOCKIFY_REBIND_REPORT", None)
    env.pop("WEBSOCKIFY_REBIND_TO", None)
    if report is not None:
        env["WEBSOCKIFY_REBIND_REPORT"] = str(report)
    return env


PRELUDE = "import json, socket, os, sys\n"


def run(code: str, rebind: Path, report: Path | None, port: str = "*", unix: str = "",
        cwd: Path | None = None) -> object:
    """Run ``code`` under the shim; it prints one JSON value, which is returned.

    The shim must stay silent: anything on stderr fails the test.
    """
    done = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True,
                          env=preloaded_env(rebind, report, port, unix), timeout=TIMEOUT,
                          check=False, cwd=cwd)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    return json.loads(done.stdout)


def report_lines(report: Path) -> list[list[str]]:
    return [line.split() for line in report.read_text().splitlines()] if report.exists() else []


def listener_fields(report: Path) -> list[list[str]]:
    """The report's tcp lines without pid and inode: [original port, host, port]."""
    return [line[2:5] for line in report_lines(report) if line[1] == "tcp"]


@pytest.mark.parametrize(("family", "wildcard", "loopback"), [
    ("AF_INET", "0.0.0.0", "127.0.0.1"),
    ("AF_INET6", "::", "::1"),
])
def test_a_listener_moves_to_a_loopback_port_and_is_reported(
        rebind: Path, report: Path, family: str, wildcard: str, loopback: str) -> None:
    wanted = free_port()
    pid, inode, bound, (host, port) = run(f"""
s = socket.socket(socket.{family}, socket.SOCK_STREAM)
s.bind(({wildcard!r}, {wanted}))
bound = s.getsockname()[:2]
s.listen(1)
print(json.dumps([os.getpid(), os.fstat(s.fileno()).st_ino, bound, s.getsockname()[:2]]))
""", rebind, report)
    assert bound == [wildcard, wanted]  # bind() went where it was asked
    assert host == loopback
    assert port not in (0, wanted)
    assert report_lines(report) == [[str(pid), "tcp", str(wanted), loopback, str(port),
                                     str(inode)]]


def test_a_busy_port_moves_at_bind_and_is_reported_at_listen(
        rebind: Path, report: Path, busy_port: int) -> None:
    """As in upstream's form, where websockify itself listens on the program's port."""
    bound, reported_before_listen, listening = run(f"""
s = socket.socket()
s.bind(("0.0.0.0", {busy_port}))
bound = s.getsockname()[0]
before = open({str(report)!r}).read()
s.listen(1)
print(json.dumps([bound, before, s.getsockname()[:2]]))
""", rebind, report)
    assert bound == "127.0.0.1"
    assert reported_before_listen == ""
    assert listener_fields(report) == [[str(busy_port), "127.0.0.1", str(listening[1])]]


def test_only_the_first_listener_moves_and_the_rest_of_the_tree_binds_where_it_asks(
        rebind: Path, report: Path) -> None:
    first, second, third = free_port(), free_port(), free_port()
    child = f"""
s = socket.socket()
s.bind(("0.0.0.0", {third}))
s.listen(1)
print(json.dumps(s.getsockname()[:2]))
"""
    moved, kept, in_child = run(f"""
import subprocess
a = socket.socket()
a.bind(("0.0.0.0", {first}))
a.listen(1)
b = socket.socket()
b.bind(("0.0.0.0", {second}))
b.listen(1)
out = subprocess.run([sys.executable, "-c", {PRELUDE + child!r}], capture_output=True,
                     check=True).stdout
print(json.dumps([a.getsockname()[:2], b.getsockname()[:2], json.loads(out)]))
""", rebind, report)
    assert moved[0] == "127.0.0.1"
    assert kept == ["0.0.0.0", second]
    assert in_child == ["0.0.0.0", third]
    assert listener_fields(report) == [[str(first), "127.0.0.1", str(moved[1])]]


def test_the_program_port_moves_even_after_other_listeners(rebind: Path, report: Path) -> None:
    """With --wrap-port: only that port is the program's, whichever listens first."""
    other, wanted = free_port(), free_port()
    kept, moved = run(f"""
a = socket.socket()
a.bind(("0.0.0.0", {other}))
a.listen(1)
b = socket.socket()
b.bind(("0.0.0.0", {wanted}))
b.listen(1)
print(json.dumps([a.getsockname()[:2], b.getsockname()[:2]]))
""", rebind, report, port=str(wanted))
    assert kept == ["0.0.0.0", other]
    assert listener_fields(report) == [[str(wanted), "127.0.0.1", str(moved[1])]]


def test_both_families_of_the_program_port_move_in_its_process(
        rebind: Path, report: Path) -> None:
    wanted = free_port()
    ports = run(f"""
v4 = socket.socket(socket.AF_INET)
v4.bind(("0.0.0.0", {wanted}))
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", {wanted}))
v4.listen(1)
v6.listen(1)
print(json.dumps([v4.getsockname()[1], v6.getsockname()[1]]))
""", rebind, report)
    assert listener_fields(report) == [[str(wanted), "127.0.0.1", str(ports[0])],
                                       [str(wanted), "::1", str(ports[1])]]


def test_reuseport_sockets_on_the_program_port_share_its_loopback_port(
        rebind: Path, report: Path) -> None:
    """As nginx's `reuseport`: each further socket joins the moved one's group."""
    wanted = free_port()
    ports = run(f"""
socks = []
for _ in range(3):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", {wanted}))
    s.listen(1)
    socks.append(s)
print(json.dumps([s.getsockname()[:2] for s in socks]))
""", rebind, report)
    host, port = ports[0]
    assert host == "127.0.0.1" and port != wanted
    assert ports == [[host, port]] * 3
    assert listener_fields(report) == [[str(wanted), host, str(port)]]


def test_a_client_bound_to_a_port_is_not_moved_and_connects(
        rebind: Path, report: Path, busy_port: int) -> None:
    for wanted in ("*", "the source port"):
        source = free_port()  # a new one each time: the last connection is in TIME_WAIT
        report.write_text("")
        bound, local, peer_echo = run(f"""
c = socket.socket()
c.bind(("0.0.0.0", {source}))
bound = c.getsockname()[:2]
c.connect(("127.0.0.1", {busy_port}))
c.sendall(b"hi")
print(json.dumps([bound, c.getsockname()[:2], c.recv(2).decode()]))
""", rebind, report, port="*" if wanted == "*" else str(source))
        assert bound == ["0.0.0.0", source]
        assert local == ["127.0.0.1", source]
        assert peer_echo == "hi"
        assert report.read_text() == ""


def test_a_client_that_asked_for_a_busy_port_fails_as_its_bind_would_have(
        rebind: Path, report: Path, busy_port: int) -> None:
    """Such a socket was moved at bind(); it must not connect from loopback."""
    error = run(f"""
c = socket.socket()
c.bind(("0.0.0.0", {busy_port}))
try:
    c.connect(("127.0.0.1", {busy_port}))
    print(json.dumps("connected"))
except OSError as exc:
    print(json.dumps(exc.errno))
""", rebind, report)
    assert error == 98  # EADDRINUSE
    assert report.read_text() == ""


@pytest.mark.parametrize("copy", ["dup", "dup2 to fd 5000", "F_DUPFD 3000"])
def test_descriptor_copies_and_high_descriptors_work(
        rebind: Path, report: Path, copy: str) -> None:
    wanted = free_port()
    make_copy = {
        "dup": "os.dup(s.fileno())",
        "dup2 to fd 5000": "os.dup2(s.fileno(), 5000)",
        "F_DUPFD 3000": "fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 3000)",
    }[copy]
    fd, port, answer = run(f"""
import fcntl, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
s = socket.socket()
s.bind(("0.0.0.0", {wanted}))
copy = socket.socket(fileno={make_copy})
s.close()
copy.listen(1)
port = copy.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
conn, _ = copy.accept()
conn.sendall(b"ok")
print(json.dumps([copy.fileno(), port, c.recv(2).decode()]))
""", rebind, report)
    assert answer == "ok"
    assert listener_fields(report) == [[str(wanted), "127.0.0.1", str(port)]]
    if copy != "dup":
        assert fd >= 3000


def test_a_listener_dup_ed_then_closed_still_holds_the_port(rebind: Path, report: Path) -> None:
    """The program's port stays taken while any copy of its listener listens."""
    wanted = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + f"""
s = socket.socket()
s.bind(("0.0.0.0", {wanted}))
s.listen(1)
keep = socket.socket(fileno=os.dup(s.fileno()))
s.close()
sys.stdin.read()
"""], stdin=subprocess.PIPE, env=preloaded_env(rebind, report))
    try:
        wait_until(lambda: report.read_text().endswith("\n"), "the listener's report")
        assert run(probe_bind(wanted), rebind, report) == ["Address already in use"] * 2
    finally:
        listener.communicate(b"", timeout=TIMEOUT)


def test_many_threads_listening_at_once_move_exactly_one(rebind: Path, report: Path) -> None:
    ports = [free_port() for _ in range(24)]
    where = run(f"""
import threading
barrier = threading.Barrier({len(ports)})
found = {{}}
socks = []

def listen(port):
    s = socket.socket()
    socks.append(s)
    barrier.wait()
    s.bind(("0.0.0.0", port))
    s.listen(1)
    found[port] = s.getsockname()[:2]

threads = [threading.Thread(target=listen, args=(p,)) for p in {ports}]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(found))
""", rebind, report)
    moved = [int(port) for port, (host, _) in where.items() if host == "127.0.0.1"]
    assert len(moved) == 1
    assert all(where[str(port)] == ["0.0.0.0", port] for port in ports if port not in moved)
    assert listener_fields(report) == [[str(moved[0]), "127.0.0.1",
                                        str(where[str(moved[0])][1])]]


def test_many_processes_listening_at_once_move_exactly_one(
        rebind: Path, report: Path) -> None:
    """Forked workers released together: the report file's lock picks one."""
    ports = [free_port() for _ in range(8)]
    where = run(f"""
go_read, go_write = os.pipe()
results_read, results_write = os.pipe()
for port in {ports}:
    if os.fork() == 0:
        s = socket.socket()
        os.read(go_read, 1)
        s.bind(("0.0.0.0", port))
        s.listen(1)
        os.write(results_write, json.dumps([port, s.getsockname()[0]]).encode() + b"\\n")
        os._exit(0)
os.write(go_write, b"x" * {len(ports)})
for _ in {ports}:
    os.wait()
os.close(results_write)
lines = os.fdopen(results_read).read().splitlines()
print(json.dumps(dict(json.loads(line) for line in lines)))
""", rebind, report)
    moved = [port for port, host in where.items() if host == "127.0.0.1"]
    assert len(where) == len(ports)
    assert len(moved) == 1
    assert [line[2] for line in report_lines(report)] == moved


def test_socket_options_and_flags_survive_the_move(rebind: Path, report: Path) -> None:
    wanted = free_port()
    seen = run(f"""
import fcntl
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
s.bind(("0.0.0.0", {wanted}))
s.listen(1)
print(json.dumps({{
    "moved": s.getsockname()[0],
    "reuseaddr": s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
    "keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "nodelay": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "rcvbuf kept": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rcvbuf,
    "nonblocking": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
    "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
}}))
""", rebind, report)
    assert seen == {"moved": "127.0.0.1", "reuseaddr": 1, "keepalive": 1, "nodelay": 1,
                    "rcvbuf kept": True, "nonblocking": True, "cloexec": True}


def test_the_unix_target_is_reported_not_moved(rebind: Path, report: Path,
                                               tmp_path: Path) -> None:
    """With --unix-target; a relative path is resolved against the working directory,
    whose absolute name may be longer than a socket address can hold."""
    directory = tmp_path / ("d" * 100)
    directory.mkdir()
    path = directory / "program.sock"
    assert len(str(path)) > 108
    tcp_port = free_port()
    pid, tcp = run(f"""
s = socket.socket(socket.AF_UNIX)
s.bind("program.sock")
s.listen(1)
other = socket.socket()
other.bind(("0.0.0.0", {tcp_port}))
other.listen(1)
print(json.dumps([os.getpid(), other.getsockname()[:2]]))
""", rebind, report, port="", unix=str(path), cwd=directory)
    assert path.is_socket()
    assert tcp == ["0.0.0.0", tcp_port]
    assert report.read_text() == f"{pid} unix {path}\n"


def test_unix_sockets_udp_and_port_zero_pass_through(rebind: Path, report: Path,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "sock"
    udp_port = free_port()
    unix, udp, ephemeral = run(f"""
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind({str(path)!r})
u.listen(1)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.bind(("0.0.0.0", {udp_port}))
e = socket.socket()
e.bind(("0.0.0.0", 0))
e.listen(1)
print(json.dumps([u.getsockname(), d.getsockname(), e.getsockname()[0]]))
""", rebind, report)
    assert unix == str(path)
    assert udp == ["0.0.0.0", udp_port]
    assert ephemeral == "0.0.0.0"
    assert report.read_text() == ""


ERRNO_PROBE = """
import ctypes, errno, struct
libc = ctypes.CDLL(None, use_errno=True)

def call(name, *args):
    ctypes.set_errno(1234)
    result = getattr(libc, name)(*args)
    return [result, ctypes.get_errno()]

def bind(sock, port):
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + bytes(12)
    return call("bind", sock.fileno(), addr, len(addr))

busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen(1)
wanted = socket.socket()
early = socket.socket()
client = socket.socket()
results = {
    "busy, before any listener": bind(early, busy.getsockname()[1]),
    "bound": bind(wanted, WANTED),
    "bound again": bind(wanted, WANTED),
    "moved": call("listen", wanted.fileno(), 1),
    "program port, in use": bind(socket.socket(), WANTED),
    "busy, after the listener": bind(socket.socket(), busy.getsockname()[1]),
    "connect": call("connect", client.fileno(), struct.pack("=H", socket.AF_INET)
                    + struct.pack("!H", busy.getsockname()[1]) + bytes([127, 0, 0, 1])
                    + bytes(8), 16),
}
print(json.dumps(results))
"""


def test_errno_is_kept_on_success_and_set_only_on_failure(rebind: Path, tmp_path: Path) -> None:
    for wanted in ("*", "port"):
        report = tmp_path / f"report-{wanted}"
        report.touch()
        port = free_port()
        results = run(ERRNO_PROBE.replace("WANTED", str(port)), rebind, report,
                      port="*" if wanted == "*" else str(port))
        expected = {
            # Moved at bind() where the program's listener could still be on it.
            "busy, before any listener": [0, 1234] if wanted == "*" else [-1, 98],
            "bound": [0, 1234],
            "bound again": [-1, 22],  # EINVAL: the socket is bound already
            "moved": [0, 1234],
            "program port, in use": [-1, 98],  # EADDRINUSE
            "busy, after the listener": [-1, 98],
            "connect": [0, 1234],
        }
        assert results == expected, wanted


def probe_bind(port: int) -> str:
    """Code that tries to bind ``port`` in both families, as vncserver probes."""
    return f"""
def try_bind(family, host):
    try:
        socket.socket(family).bind((host, {port}))
        return "free"
    except OSError as exc:
        return exc.strerror
print(json.dumps([try_bind(socket.AF_INET, "0.0.0.0"), try_bind(socket.AF_INET6, "::")]))
"""


def test_the_program_port_is_in_use_exactly_while_its_listener_listens(
        rebind: Path, report: Path) -> None:
    """As TigerVNC's vncserver probes "is Xtigervnc up?" by binding its port.

    Taken while the socket listens, free once it is closed although the process
    that reported it lives on.
    """
    wanted = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + f"""
s = socket.socket()
s.bind(("0.0.0.0", {wanted}))
s.listen(1)
sys.stdin.readline()
s.close()
print("closed", flush=True)
sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=preloaded_env(rebind, report))
    assert listener.stdin is not None and listener.stdout is not None
    try:
        wait_until(lambda: report.read_text().endswith("\n"), "the listener's report")
        assert run(probe_bind(wanted), rebind, report) == ["Address already in use"] * 2
        listener.stdin.write(b"close\n")
        listener.stdin.flush()
        assert listener.stdout.readline() == b"closed\n"
        assert listener.poll() is None
        assert run(probe_bind(wanted), rebind, report) == ["free", "free"]
    finally:
        listener.communicate(b"", timeout=TIMEOUT)


def test_a_reused_pid_cannot_keep_the_program_port_taken(
        rebind: Path, report: Path) -> None:
    """A report line whose pid is alive (ours) but whose socket is gone."""
    wanted = free_port()
    report.write_text(f"{os.getpid()} tcp {wanted} 127.0.0.1 {free_port()} 4242\n")
    assert run(probe_bind(wanted), rebind, report) == ["free", "free"]


def test_without_a_report_file_nothing_moves(rebind: Path, tmp_path: Path) -> None:
    """The report file is the tree's shared state: once websockify has removed it
    (it stopped), processes left behind bind where they ask."""
    wanted = free_port()
    code = f"""
s = socket.socket()
s.bind(("0.0.0.0", {wanted}))
s.listen(1)
print(json.dumps(s.getsockname()[0]))
"""
    assert run(code, rebind, None) == "0.0.0.0"
    assert run(code, rebind, tmp_path / "removed") == "0.0.0.0"
    assert not (tmp_path / "removed").exists()


def test_a_fixed_loopback_port_without_a_report_as_the_rebind_command_asks(
        rebind: Path) -> None:
    """`rebind OLD_PORT NEW_PORT COMMAND`: the listener on OLD_PORT listens on
    127.0.0.1:NEW_PORT; a client bound to OLD_PORT and other listeners stay."""
    old, new, other = free_port(), free_port(), free_port()
    env = dict(preloaded_env(rebind, None, port=str(old)), WEBSOCKIFY_REBIND_TO=str(new))
    code = PRELUDE + f"""
client = socket.socket()
client.bind(("0.0.0.0", {old}))
client_bound = client.getsockname()[:2]
client.close()
s = socket.socket()
s.bind(("0.0.0.0", {old}))
s.listen(1)
o = socket.socket()
o.bind(("0.0.0.0", {other}))
o.listen(1)
print(json.dumps([client_bound, s.getsockname()[:2], o.getsockname()[:2]]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env,
                          timeout=TIMEOUT, check=True)
    assert json.loads(done.stdout) == [["0.0.0.0", old], ["127.0.0.1", new],
                                       ["0.0.0.0", other]]


def test_a_shim_that_cannot_find_the_real_calls_fails_them_with_enosys(
        rebind: Path) -> None:
    """dlopen()ed instead of preloaded: RTLD_NEXT finds no bind() after it."""
    code = f"""
import ctypes, errno
shim = ctypes.CDLL({str(rebind)!r}, use_errno=True)
ctypes.set_errno(0)
s = socket.socket()
result = shim.listen(s.fileno(), 1)
print(json.dumps([result, errno.errorcode.get(ctypes.get_errno())]))
"""
    done = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True,
                          timeout=TIMEOUT, check=True)
    assert json.loads(done.stdout) == [-1, "ENOSYS"]


def test_the_debug_build_traces_moves(tmp_path: Path, report: Path) -> None:
    debug = build_rebind(tmp_path, debug=True)
    code = f"import socket\ns = socket.socket()\ns.bind(('0.0.0.0', {free_port()}))\ns.listen(1)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=preloaded_env(debug, report), timeout=TIMEOUT, check=True)
    assert "rebind.so: pid" in done.stderr
    assert "listens on 127.0.0.1 port" in done.stderr
