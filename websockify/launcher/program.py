"""The wrapped program as the server sees it: start it, learn its target, apply
``--wrap-mode`` each time its server ends, stop its whole tree.

This module only ties the launcher's parts together: the process tree
(``process_tree``), the listener report (``listener_report``) and the decisions
(``wrap_policy``).  A generation is one run of the command: it gets a report file
of its own, so the listener of each new generation is learnt afresh.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gevent
import gevent.event

from websockify.errors import LauncherError, TargetError
from websockify.launcher.listener_report import (
    FIXED_PORT_ENV,
    REPORT_ENV,
    Listener,
    ListenerReport,
)
from websockify.launcher.process_tree import ProcessTree, ProcessWatch, tcp_listeners
from websockify.launcher.wrap_policy import (
    CANNOT_START_STATUS,
    UNKNOWN_STATUS,
    Action,
    decide,
    reaper_of,
    server_status,
    status_before_listening,
)
from websockify.settings import Target, TcpAddress, WrapMode

logger = logging.getLogger("websockify.launcher")

#: Where to find rebind.so when --rebind is not given.
REBIND_ENV = "WEBSOCKIFY_REBIND"
PACKAGED_REBIND = Path(__file__).resolve().parent.parent / "rebind.so"

#: How often the report file is read while nobody waits / while a client waits.
IDLE_POLL = 0.25
EAGER_POLL = 0.02
#: How long the exit status of the serving process is awaited after it is gone.
STATUS_WAIT = 1.0
#: Seconds between SIGTERM and SIGKILL when the tree is stopped.
GRACE = 5.0


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


class WrappedProgram:
    """The program websockify wraps, its whole process tree, and where it listens."""

    def __init__(self, command: Sequence[str], *, mode: WrapMode, on_exit: Callable[[int], None],
                 program_port: int | None = None, unix_target: str | None = None,
                 rebind_path: str | None = None, listen_port: int | None = None,
                 listen_timeout: float = 10.0) -> None:
        """Check the command line and find rebind.so; nothing runs before ``start()``.

        ``program_port`` (--wrap-port) names the program's port; without it the
        first TCP listener is the program's.  With ``unix_target`` the program
        listens on that unix socket, which is relayed to as it is.
        ``listen_port`` is websockify's own port (for the hint when the program
        is out of rebind.so's reach, logged after ``listen_timeout`` seconds
        without a listener).  ``on_exit(status)`` is called in exit mode when
        the serving program ends.
        """
        if not command:
            raise LauncherError("no command to wrap")
        if unix_target is not None and "\n" in unix_target:
            raise LauncherError("--unix-target: a path with a newline cannot be followed")
        self.command = list(command)
        self.mode = WrapMode(mode)
        self.program_port = program_port
        self.unix_target = unix_target
        self.rebind = find_rebind(rebind_path)
        self._listen_port = listen_port
        self._listen_timeout = listen_timeout
        self._on_exit = on_exit
        self._dir: Path | None = None
        self._tree: ProcessTree | None = None
        self._report: ListenerReport | None = None
        self._generation = 0
        self._root_pid = 0
        self._spawn_failed = False
        self._started_at = 0.0
        self._target: Listener | None = None
        self._target_ready = gevent.event.Event()
        self._wake = gevent.event.Event()
        self._waiters = 0
        self._ended = False
        self._stopping = False
        self._quick_deaths = 0
        self._monitor: gevent.Greenlet | None = None

    # -- the API the server uses -------------------------------------------------

    def start(self) -> None:
        """Become a subreaper, start reaping, spawn the program and follow it."""
        self._dir = Path(tempfile.mkdtemp(prefix="websockify-wrap-"))
        self._tree = ProcessTree(f"{REPORT_ENV}={self._dir}/", self._wake.set)
        try:
            self._tree.start_reaping()
            self._spawn()
        except LauncherError:
            self._tree.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._monitor = gevent.spawn(self._follow)

    def wait_for_target(self, timeout: float) -> Target:
        """Where the program listens, waiting at most ``timeout`` seconds."""
        if self._target is None and not self._ended:
            self._waiters += 1
            self._wake.set()
            try:
                self._target_ready.wait(timeout)
            finally:
                self._waiters -= 1
        listener = self._target
        if listener is not None:
            return listener.target
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
        if self._tree is not None:
            self._tree.stop(grace)
            self._tree.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- one generation ----------------------------------------------------------

    def _environment(self, report: ListenerReport) -> dict[str, str]:
        env = dict(os.environ)
        preload = env.get("LD_PRELOAD", "").strip()
        env["LD_PRELOAD"] = f"{self.rebind}:{preload}" if preload else str(self.rebind)
        env.update(report.environment(self.program_port, self.unix_target))
        env.pop(FIXED_PORT_ENV, None)  # the `rebind` command's, not ours
        return env

    def _spawn(self) -> None:
        """Start a new generation of the program; raises LauncherError if it cannot run."""
        assert self._dir is not None and self._tree is not None
        self._generation += 1
        self._report = ListenerReport(self._dir / f"listeners-{self._generation}")
        self._target = None
        self._target_ready.clear()
        self._started_at = time.monotonic()
        logger.info("starting wrapped program: %s", shlex.join(self.command))
        self._root_pid = self._tree.spawn(self.command, self._environment(self._report))

    def _follow(self) -> None:
        """Apply --wrap-mode each time a generation's server ends."""
        while True:
            status = self._run_generation()
            if self._stopping:
                return
            self._target = None
            self._target_ready.clear()
            decision = decide(self.mode, status, time.monotonic() - self._started_at,
                              self._quick_deaths)
            self._quick_deaths = decision.quick_deaths
            if decision.action is Action.RESTART:
                logger.info("wrapped program ended with status %d: starting it again in %gs "
                            "(--wrap-mode respawn)", status, decision.delay)
                self._restart(decision.delay)
                continue
            self._ended = True
            self._target_ready.set()
            if decision.action is Action.EXIT:
                logger.info("wrapped program ended with status %d: exiting", status)
                self._on_exit(status)
            else:
                logger.warning("wrapped program ended with status %d (--wrap-mode ignore)",
                               status)
            return

    def _restart(self, delay: float) -> None:
        """Stop what is left of this generation, wait ``delay`` seconds, start anew."""
        assert self._tree is not None
        self._tree.stop(GRACE)
        gevent.sleep(delay)
        self._spawn_failed = False
        try:
            self._spawn()
        except LauncherError as exc:
            logger.error("%s", exc)
            self._spawn_failed = True
            self._started_at = time.monotonic()

    def _run_generation(self) -> int:
        """Follow one generation until its server (or, without one, its tree) ends."""
        if self._spawn_failed:
            return CANNOT_START_STATUS
        server = self._wait_for_listener()
        if isinstance(server, int):
            return server
        assert self._tree is not None
        watch = ProcessWatch(server.pid)
        try:
            # The report names a pid: it is the server only while it is in our tree.
            parent_when_listening = self._tree.parent_of(server.pid)
            if server.pid not in self._tree.members():
                logger.warning("wrapped program: pid %d ended before it was followed",
                               server.pid)
            else:
                watch.wait()
        finally:
            watch.close()
        reaper = reaper_of(self._tree.parent_of(server.pid), parent_when_listening,
                           os.getpid(), server.pid in self._tree.reaped)
        return self._server_status(server.pid, reaper)

    def _server_status(self, server: int, reaper: int | None) -> int:
        """The exit status of the process that served, once reaped (bounded wait)."""
        assert self._tree is not None
        deadline = time.monotonic() + STATUS_WAIT
        while True:
            status = server_status(server, reaper, self._tree.reaped)
            if status is not None:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("exit status of the wrapped program (pid %d) unknown", server)
                return UNKNOWN_STATUS
            self._wake.wait(left)
            self._wake.clear()

    def _wait_for_listener(self) -> Listener | int:
        """The generation's listener once reported, or its exit status if it ends first."""
        assert self._tree is not None and self._report is not None
        warn_at = self._started_at + self._listen_timeout
        warned = False
        reaped_seen = -1
        tree_left = True
        while True:
            self._take_reports()
            if self._target is not None:
                return self._target
            command_status = self._tree.reaped.get(self._root_pid)
            # Walk the tree only once the command has exited (the tree is there
            # while it runs), and then only when a child was reaped.
            if command_status is not None and len(self._tree.reaped) != reaped_seen:
                reaped_seen = len(self._tree.reaped)
                tree_left = bool(self._tree.members())
            ended = status_before_listening(command_status, tree_left, self._tree.last_failure)
            if ended is not None:
                return ended
            now = time.monotonic()
            if not warned and now >= warn_at:
                warned = True
                self._explain_missing_listener()
            timeout = EAGER_POLL if self._waiters else IDLE_POLL
            if not warned:
                timeout = min(timeout, warn_at - now)
            self._wake.wait(max(0.0, timeout))
            self._wake.clear()

    def _take_reports(self) -> None:
        """Take in the listeners the shim reported since the last read."""
        assert self._report is not None
        for listener in self._report.new_listeners():
            logger.info("wrapped program: %s", listener)
            if self._target is None:
                self._target = listener
                self._target_ready.set()

    def _explain_missing_listener(self) -> None:
        """One error line when no listener was reported within --connect-timeout:
        the program may be out of rebind.so's reach, which says how to go on."""
        assert self._tree is not None
        name = os.path.basename(self.command[0])
        own = self._listen_port or "PORT"
        if self.unix_target is not None:
            logger.error(
                "wrapped program %r has not listened on unix:%s within %gs; if it is "
                "statically linked or written in Go, rebind.so cannot see it: run it on its "
                "own and use `websockify --unix-target=%s %s`", name, self.unix_target,
                self._listen_timeout, self.unix_target, own)
            return
        found = [(host, port) for host, port in tcp_listeners(self._tree.members())
                 if self.program_port in (None, port)]
        if not found:
            logger.error(
                "wrapped program %r has not listened within %gs; if it is statically linked "
                "or written in Go, rebind.so cannot move its port: run it on its own and use "
                "`websockify %s HOST:PORT` against that port", name, self._listen_timeout, own)
            return
        host, port = found[0]
        reach = TcpAddress({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)
        logger.error(
            "wrapped program %r listens on %s, but rebind.so could not move it (statically "
            "linked, Go and io_uring programs bypass LD_PRELOAD; a listener bound to port 0 "
            "is never moved): run it on its own and use `websockify %s %s` instead",
            name, TcpAddress(host, port), own, reach)
