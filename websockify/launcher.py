"""The wrapped program: ``websockify [opts] PORT -- COMMAND ARGS…``.

COMMAND runs with ``rebind.so`` preloaded (see ``rebind/rebind.c``).  The shim moves
the program's listening TCP sockets to free loopback ports and appends one line per
listener to a report file that only this module reads::

    <pid> <original port> <127.0.0.1 | ::1> <loopback port>

so the target is read, never guessed.  By default every TCP bind to a non-zero port
is moved (the program's own port such as 5901, and websockify's port in upstream's
form); with ``program_port`` only that port and websockify's own are moved.

websockify makes itself a child subreaper, so everything the program starts stays
its descendant even when the program daemonizes: TigerVNC's ``vncserver`` forks, its
first process exits 0, Xtigervnc goes on serving.  The tree is every descendant of a
direct child that is the program or carries the report path in its environment
(orphans are re-parented to us).  gevent's event loop reaps every child (a child
watcher on pid 0), so nothing stays a zombie, and the status of the process that
*serves* (the one that reported the listener) decides ``--wrap-mode``:

* ``exit``: ``on_exit(status)`` is called; the server stops and calls ``stop()``;
* ``ignore``: websockify keeps running, clients get a TargetError;
* ``respawn``: what is left of the tree is stopped and the program started again,
  at once after the first quick death, then with a doubling back-off.

The status is the server's own when websockify reaps it (a daemon is re-parented
to us), else that of its parent in the tree, which reaped it (vncserver's session
process reaps Xtigervnc; ``sh -c`` passes its child's status on).  Before it
listens, the program has failed when COMMAND exits non-zero, and has ended when
its whole tree has.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.subprocess

from websockify.errors import LauncherError, TargetError

logger = logging.getLogger("websockify.launcher")

WRAP_MODES = ("exit", "ignore", "respawn")
#: Environment variables shared with rebind.so (rebind/rebind.c).
REPORT_ENV = "WEBSOCKIFY_REBIND_REPORT"
PORTS_ENV = "WEBSOCKIFY_REBIND_PORTS"
#: Where to find rebind.so when --rebind is not given.
REBIND_ENV = "WEBSOCKIFY_REBIND"
PACKAGED_REBIND = Path(__file__).resolve().parent / "rebind.so"

#: A run shorter than this (seconds) counts as a quick death for the respawn back-off.
QUICK_DEATH = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: How often the report file is read while nobody waits / while a client waits.
IDLE_POLL = 0.25
EAGER_POLL = 0.02
#: How long the exit status of the serving process is awaited after it is gone.
STATUS_WAIT = 1.0
#: Seconds between SIGTERM and SIGKILL when the tree is stopped.
GRACE = 5.0
#: How long processes get to disappear after SIGKILL.
KILL_WAIT = 5.0
#: Liveness check of the serving process when no pidfd can be had.
PIDFD_FALLBACK_POLL = 0.5

_PR_SET_CHILD_SUBREAPER = 36


def find_rebind(explicit: str | None) -> Path:
    """The rebind.so to preload: ``explicit``, else $WEBSOCKIFY_REBIND, else the packaged one.

    The packaged path is the same for an installed wheel (``pip install .`` builds it)
    and for a source tree (``make rebind`` builds it there); in the Debian package it
    is a link to /usr/lib/websockify/rebind.so.
    """
    if explicit:
        candidate, source = Path(explicit), "--rebind"
    elif os.environ.get(REBIND_ENV):
        candidate, source = Path(os.environ[REBIND_ENV]), f"${REBIND_ENV}"
    else:
        candidate, source = PACKAGED_REBIND, "the websockify package"
    if candidate == PACKAGED_REBIND and not candidate.is_file():
        raise LauncherError(
            f"the rebind.so shim is missing ({candidate}): this websockify was installed "
            "without a C compiler. Install one (apt install gcc libc6-dev) and reinstall "
            "websockify, or run `make rebind` in a source tree, or give --rebind FILE")
    if not candidate.is_file():
        raise LauncherError(
            f"rebind.so not found at {candidate} (from {source}); build it with "
            "`make rebind` in the source tree or reinstall with `pip install .`, "
            f"or point --rebind or ${REBIND_ENV} at a built rebind.so")
    path = candidate.resolve()
    if any(c in str(path) for c in " :"):
        raise LauncherError(f"{path}: LD_PRELOAD cannot hold a path with ':' or ' '")
    return path


@dataclass(frozen=True)
class Listener:
    """One line of the report file: a moved socket that listens."""

    pid: int
    original_port: int
    host: str
    port: int


def parse_report(data: bytes) -> list[Listener]:
    """The listeners in complete report lines; malformed lines are skipped."""
    found = []
    for line in data.decode("ascii", "replace").splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in ("127.0.0.1", "::1"):
            with contextlib.suppress(ValueError):
                found.append(Listener(int(fields[0]), int(fields[1]), fields[2], int(fields[3])))
    return found


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128 + the signal number."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0].decode()


def _process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, state letter)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] not in "ZX"


def _become_subreaper() -> None:
    """Keep orphans of the wrapped program as our children (Linux >= 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise LauncherError(f"cannot follow the wrapped program: prctl(PR_SET_CHILD_SUBREAPER) "
                            f"failed: {os.strerror(code)}")


class WrappedProgram:
    """The program websockify wraps, its whole process tree, and where it listens."""

    def __init__(self, command: Sequence[str], *, listen_port: int | None,
                 program_port: int | None, wrap_mode: str, rebind_path: str | None,
                 on_exit: Callable[[int], None]) -> None:
        """Check the command line and find rebind.so; nothing runs before ``start()``.

        ``listen_port`` is websockify's own port: a bind of the program to it is
        moved too (upstream's form).  ``program_port`` (--wrap-port) picks the
        listener to relay to and limits the moves to these two ports; without it
        every listening bind is moved and the first listener is the target.
        ``on_exit(status)`` is called in exit mode when the serving program ends.
        """
        if not command:
            raise LauncherError("no command to wrap")
        if wrap_mode not in WRAP_MODES:
            raise LauncherError(f"unknown wrap mode {wrap_mode!r}: use one of {WRAP_MODES}")
        self.command = list(command)
        self.program_port = program_port
        self.wrap_mode = wrap_mode
        self.rebind = find_rebind(rebind_path)
        self._on_exit = on_exit
        moved = {port for port in (program_port, listen_port) if port}
        self._ports = "*" if program_port is None else ",".join(map(str, sorted(moved)))
        self._dir: Path | None = None
        self._generation = 0
        self._root: gevent.subprocess.Popen | None = None
        self._started_at = 0.0
        self._report_offset = 0
        self._target: Listener | None = None
        self._target_parent = 0
        self._target_ready = gevent.event.Event()
        #: Wait statuses of the children reaped in this generation.
        self._statuses: dict[int, int] = {}
        self._last_failure = 0
        self._tree_changed = True
        self._wake = gevent.event.Event()
        self._waiters = 0
        self._ended = False
        self._stopping = False
        self._quick_deaths = 0
        self._child_watcher: Any = None
        self._monitor: gevent.Greenlet | None = None

    # -- the API the server uses -------------------------------------------------

    def start(self) -> None:
        """Become a subreaper, start reaping, spawn the program and follow it."""
        _become_subreaper()
        self._dir = Path(tempfile.mkdtemp(prefix="websockify-wrap-"))
        self._child_watcher = gevent.get_hub().loop.child(0, ref=False)
        self._child_watcher.start(self._on_child, self._child_watcher)
        try:
            self._spawn()
        except LauncherError:
            self._child_watcher.stop()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._monitor = gevent.spawn(self._follow)

    def wait_for_target(self, timeout: float) -> tuple[str, int]:
        """(host, port) of the program's listener, waiting at most ``timeout`` seconds."""
        if self._target is None and not self._ended:
            self._waiters += 1
            self._wake.set()
            try:
                self._target_ready.wait(timeout)
            finally:
                self._waiters -= 1
        target = self._target
        if target is not None:
            return target.host, target.port
        if self._ended:
            raise TargetError("the wrapped program has ended")
        raise TargetError(f"the wrapped program did not listen within {timeout:g}s")

    def stop(self, grace: float = GRACE) -> None:
        """SIGTERM the whole tree, SIGKILL what is left after ``grace`` seconds, reap it."""
        if self._stopping:
            return
        self._stopping = True
        self._ended = True
        self._target = None
        self._target_ready.set()
        monitor = self._monitor
        if monitor is not None and monitor is not gevent.getcurrent():
            monitor.kill(block=True)
        self._stop_tree(grace)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- spawning and following ----------------------------------------------------

    def _report_path(self) -> Path:
        assert self._dir is not None
        return self._dir / f"listeners-{self._generation}"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        preload = env.get("LD_PRELOAD", "").strip()
        env["LD_PRELOAD"] = f"{self.rebind}:{preload}" if preload else str(self.rebind)
        env[PORTS_ENV] = self._ports
        env[REPORT_ENV] = str(self._report_path())
        env.pop("WEBSOCKIFY_REBIND_TO", None)  # the rebind command's fixed port, not ours
        return env

    def _spawn(self) -> None:
        """Start a new generation of the program; raises LauncherError if it cannot run."""
        self._generation += 1
        self._report_offset = 0
        self._statuses = {}
        self._last_failure = 0
        self._tree_changed = True
        self._target = None
        self._target_ready.clear()
        logger.info("starting wrapped program: %s", shlex.join(self.command))
        try:
            self._root = gevent.subprocess.Popen(self.command, env=self._environment())
        except OSError as exc:
            raise LauncherError(f"cannot start {self.command[0]!r}: {exc.strerror}") from exc
        self._started_at = time.monotonic()

    def _on_child(self, watcher: Any) -> None:
        """Every child reaped by gevent's loop (orphans of the program included)."""
        self._statuses[watcher.rpid] = watcher.rstatus
        if self._root is not None and watcher.rpid == self._root.pid:
            logger.info("wrapped command (pid %d) exited with status %d",
                        watcher.rpid, exit_status(watcher.rstatus))
        if watcher.rstatus:
            self._last_failure = watcher.rstatus
        self._tree_changed = True
        self._wake.set()
        # libuv's loop forgets a pid-0 watcher after one event; libev keeps it.
        watcher.stop()
        watcher.start(self._on_child, watcher)

    def _follow(self) -> None:
        """Apply --wrap-mode each time the program that serves ends."""
        while True:
            status = self._wait_for_end()
            if self._stopping:
                return
            self._target = None
            self._target_ready.clear()
            if self.wrap_mode == "respawn":
                self._respawn()
                continue
            self._ended = True
            self._target_ready.set()
            if self.wrap_mode == "exit":
                logger.info("wrapped program ended with status %d: exiting", status)
                self._on_exit(status)
            else:
                logger.warning("wrapped program ended with status %d (--wrap-mode ignore)",
                               status)
            return

    def _respawn(self) -> None:
        """Stop what is left of this generation, back off if it died quickly, start anew."""
        self._stop_tree(GRACE)
        quick = time.monotonic() - self._started_at < QUICK_DEATH
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        delay = 0.0
        if self._quick_deaths > 1:
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._quick_deaths - 2))
        logger.info("restarting the wrapped program in %gs (--wrap-mode respawn)", delay)
        gevent.sleep(delay)
        try:
            self._spawn()
        except LauncherError as exc:
            logger.error("%s", exc)
            self._started_at = time.monotonic()
            self._last_failure = 127 << 8

    def _wait_for_end(self) -> int:
        """Follow one generation until its server (or, without one, its tree) ends."""
        server = self._wait_for_listener()
        if isinstance(server, int):
            return server
        self._wait_while_alive(server.pid)
        return self._server_status(server)

    def _wait_for_listener(self) -> Listener | int:
        """The generation's target once reported, or its exit status if it ends first."""
        while True:
            self._read_reports()
            if self._target is not None:
                return self._target
            root = self._root.pid if self._root is not None else 0
            if self._statuses.get(root):
                return exit_status(self._statuses[root])
            if self._tree_changed:
                self._tree_changed = False
                if not self._tree():
                    return exit_status(self._last_failure)
            self._wake.wait(EAGER_POLL if self._waiters else IDLE_POLL)
            self._wake.clear()

    def _wait_while_alive(self, pid: int) -> None:
        """Return once ``pid`` has ended: woken by its pidfd, or polling without one."""
        watch: Any = None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
            logger.debug("no pidfd for pid %d (%s): polling", pid, exc)
        else:
            watch = gevent.get_hub().loop.io(pidfd, 1)
            watch.start(self._wake.set)
        try:
            while _alive(pid):
                self._wake.wait(None if watch is not None else PIDFD_FALLBACK_POLL)
                self._wake.clear()
        finally:
            if watch is not None:
                watch.stop()
                watch.close()
                os.close(pidfd)

    def _server_status(self, server: Listener) -> int:
        """The exit status of the process that served, once reaped (bounded wait).

        It is ours to reap when it was orphaned; otherwise its parent in the tree
        reaps it and usually ends with the same status, as ``sh -c`` does.
        """
        # A parent that ended before the server cannot have reaped it: we did.
        parent = self._target_parent if self._target_parent not in self._statuses else 0
        deadline = time.monotonic() + STATUS_WAIT
        while time.monotonic() < deadline:
            for pid in (server.pid, parent):
                if pid in self._statuses:
                    return exit_status(self._statuses[pid])
            self._wake.wait(deadline - time.monotonic())
            self._wake.clear()
        logger.warning("exit status of the wrapped program (pid %d) unknown", server.pid)
        return 1

    def _read_reports(self) -> None:
        """Take in the listeners the shim reported since the last read."""
        try:
            with open(self._report_path(), "rb") as report:
                report.seek(self._report_offset)
                data = report.read()
        except FileNotFoundError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        self._report_offset += len(complete)
        for listener in parse_report(complete):
            logger.info("wrapped program (pid %d) listens on port %d, moved to %s port %d",
                        listener.pid, listener.original_port, listener.host, listener.port)
            wanted = self.program_port is None or listener.original_port == self.program_port
            if self._target is None and wanted:
                self._target = listener
                stat = _proc_stat(listener.pid)
                self._target_parent = stat[0] if stat and stat[0] != os.getpid() else 0
                self._target_ready.set()

    # -- the process tree -----------------------------------------------------------

    def _is_ours(self, pid: int) -> bool:
        """Whether a direct child of websockify belongs to the wrapped program."""
        if self._root is not None and pid == self._root.pid:
            return True
        marker = f"{REPORT_ENV}={self._dir}/".encode()
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                return any(var.startswith(marker) for var in environ.read().split(b"\0"))
        except OSError:
            return False

    def _tree(self) -> dict[int, str]:
        """The program's processes: pid -> state letter (zombies included)."""
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        # An unreaped child counts too (its environment is gone): stop() then waits
        # until the loop has reaped it.
        pending = [pid for pid in children.get(os.getpid(), [])
                   if table[pid][1] == "Z" or self._is_ours(pid)]
        tree: dict[int, str] = {}
        while pending:
            pid = pending.pop()
            if pid not in tree:
                tree[pid] = table[pid][1]
                pending.extend(children.get(pid, []))
        return tree

    def _stop_tree(self, grace: float) -> None:
        """SIGTERM every process of the tree (again for newcomers), SIGKILL after ``grace``."""
        if self._dir is None:
            return
        sig = signal.SIGTERM
        signalled: set[int] = set()
        kill_at = time.monotonic() + grace
        give_up = kill_at + KILL_WAIT
        while True:
            tree = self._tree()
            if not tree:
                return
            now = time.monotonic()
            if sig == signal.SIGTERM and now >= kill_at:
                logger.warning("wrapped processes %s ignored SIGTERM for %gs: SIGKILL",
                               sorted(tree), grace)
                sig = signal.SIGKILL
                signalled.clear()
            if now >= give_up:
                logger.error("wrapped processes %s outlived SIGKILL", sorted(tree))
                return
            for pid, state in tree.items():
                if pid in signalled or state in "ZX":
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                    # A stopped process acts on SIGTERM only once continued.
                    os.kill(pid, signal.SIGCONT)
                signalled.add(pid)
            gevent.sleep(0.02)
