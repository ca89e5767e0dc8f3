"""The wrapped program's processes: spawned, reaped, walked, signalled, awaited.

websockify makes itself a child subreaper, so everything the program starts
stays its descendant even when the program daemonizes (TigerVNC's ``vncserver``
forks Xtigervnc and exits): orphans are re-parented to websockify instead of
init.  The tree is every descendant of a direct child that is the command or
carries the generation's marker in its environment (an orphan).  gevent's loop
reaps every child (a child watcher on pid 0) and records its wait status, so
nothing stays a zombie.

Nothing here polls ``/proc`` in a loop: the tree is walked when something
happened (a child was reaped, a process of the tree ended, a deadline passed),
and waiting for a process to end uses its pidfd.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.select
import gevent.subprocess

from websockify.errors import LauncherError
from websockify.launcher.wrap_policy import exit_status

logger = logging.getLogger("websockify.launcher")

_PR_SET_CHILD_SUBREAPER = 36
#: How often a process is checked on when the kernel gives no pidfd (Linux < 5.3).
NO_PIDFD_POLL = 0.5
#: How long processes get to disappear after SIGKILL.
KILL_WAIT = 5.0


def become_subreaper() -> None:
    """Keep orphans of the wrapped program as our children (Linux >= 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise LauncherError(f"cannot follow the wrapped program: prctl(PR_SET_CHILD_SUBREAPER) "
                            f"failed: {os.strerror(code)}")


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


class ProcessTree:
    """The processes of the wrapped program, one generation after another."""

    def __init__(self, marker: str, on_change: Callable[[], None]) -> None:
        """``marker``: an environment entry prefix (``NAME=value``) that every
        process of the program inherits.  ``on_change()`` is called from the loop
        each time a child is reaped."""
        self._marker = marker.encode()
        self._on_change = on_change
        self._changed = gevent.event.Event()
        self._watcher: Any = None
        self.root: gevent.subprocess.Popen | None = None
        #: Wait statuses of the children reaped since the last spawn.
        self.reaped: dict[int, int] = {}
        #: The last non-zero wait status among them (0 if none).
        self.last_failure = 0

    def start_reaping(self) -> None:
        become_subreaper()
        self._watcher = gevent.get_hub().loop.child(0, ref=False)
        self._watcher.start(self._on_child, self._watcher)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def spawn(self, command: Sequence[str], env: dict[str, str]) -> int:
        """Start ``command``; raises LauncherError if it cannot run."""
        self.reaped = {}
        self.last_failure = 0
        try:
            self.root = gevent.subprocess.Popen(list(command), env=env)
        except OSError as exc:
            raise LauncherError(f"cannot start {command[0]!r}: {exc.strerror}") from exc
        return self.root.pid

    def _on_child(self, watcher: Any) -> None:
        """Every child reaped by gevent's loop (orphans of the program included)."""
        self.reaped[watcher.rpid] = watcher.rstatus
        if self.root is not None and watcher.rpid == self.root.pid:
            logger.info("wrapped command (pid %d) exited with status %d",
                        watcher.rpid, exit_status(watcher.rstatus))
        if watcher.rstatus:
            self.last_failure = watcher.rstatus
        self._changed.set()
        self._on_change()
        # libuv's loop forgets a pid-0 watcher after one event; libev keeps it.
        watcher.stop()
        watcher.start(self._on_child, watcher)

    # -- walking -----------------------------------------------------------------

    def _is_ours(self, pid: int) -> bool:
        """Whether a direct child of websockify belongs to the wrapped program."""
        if self.root is not None and pid == self.root.pid:
            return True
        # A child that is exiting has let its memory go before it turns zombie: its
        # environment then reads empty or fails with ESRCH.  It counts, or stop()
        # could return (and websockify exit) while it still ends, leaving it to init.
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                variables = environ.read()
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return not variables or any(
            var.startswith(self._marker) for var in variables.split(b"\0"))

    def members(self) -> dict[int, str]:
        """The program's processes now: pid -> state letter (zombies included)."""
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

    @staticmethod
    def parent_of(pid: int) -> int | None:
        """The parent of ``pid`` (a zombie has one until reaped); None once it is gone."""
        stat = _proc_stat(pid)
        return stat[0] if stat is not None else None

    # -- stopping ------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """SIGTERM every process of the tree (newcomers too), SIGKILL what is left
        after ``grace`` seconds, and return once all are gone and reaped, or after
        KILL_WAIT more seconds (logged).  Wakes on pidfds and child exits only."""
        sig = signal.SIGTERM
        signalled: set[int] = set()
        kill_at = time.monotonic() + grace
        give_up = kill_at + KILL_WAIT
        while True:
            tree = self.members()
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
            running = [pid for pid, state in tree.items() if state not in "ZX"]
            for pid in running:
                if pid not in signalled:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                        # A stopped process acts on SIGTERM only once continued.
                        os.kill(pid, signal.SIGCONT)
                    signalled.add(pid)
            deadline = kill_at if sig == signal.SIGTERM else give_up
            self._wait_for_any_end(running, deadline - time.monotonic())

    def _wait_for_any_end(self, pids: Iterable[int], timeout: float) -> None:
        """Until one of ``pids`` ends, a child is reaped, or ``timeout`` passes."""
        watches = [ProcessWatch(pid, self._changed) for pid in pids]
        try:
            if any(watch.ended_already for watch in watches):
                return
            polling = any(not watch.has_pidfd for watch in watches)
            self._changed.wait(min(timeout, NO_PIDFD_POLL) if polling else max(0.0, timeout))
            self._changed.clear()
        finally:
            for watch in watches:
                watch.close()


class ProcessWatch:
    """Waits for one process to end on its pidfd (or checks every NO_PIDFD_POLL
    seconds where the kernel has none)."""

    def __init__(self, pid: int, wake: gevent.event.Event | None = None) -> None:
        self.pid = pid
        self._wake = wake if wake is not None else gevent.event.Event()
        self._pidfd = -1
        self._io: Any = None
        self.ended_already = False
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                self.ended_already = True
            else:
                logger.debug("no pidfd for pid %d (%s): polling", pid, exc)
            return
        self._io = gevent.get_hub().loop.io(self._pidfd, 1)
        self._io.start(self._wake.set)

    @property
    def has_pidfd(self) -> bool:
        return self._pidfd >= 0

    def running(self) -> bool:
        """Whether the process still runs (a zombie has ended)."""
        if self.ended_already:
            return False
        if self.has_pidfd:
            ended, _, _ = gevent.select.select([self._pidfd], [], [], 0)
            return not ended
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] not in "ZX"

    def wait(self) -> None:
        """Return once the process has ended."""
        while self.running():
            self._wake.wait(None if self.has_pidfd else NO_PIDFD_POLL)
            self._wake.clear()

    def close(self) -> None:
        if self._io is not None:
            self._io.stop()
            self._io.close()
            self._io = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


# -- what the tree listens on, for a program out of rebind.so's reach ----------------

def tcp_listeners(pids: Iterable[int]) -> list[tuple[str, int]]:
    """(host, port) of the TCP sockets that processes ``pids`` hold and listen on.

    Read from /proc (each process's socket inodes, then /proc/net/tcp{,6}): this
    finds listeners the shim never saw, such as those of a static binary.
    """
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[9]) in inodes:
                    address, port = fields[1].split(":")
                    found.append((_proc_net_address(address, family), int(port, 16)))
    return sorted(set(found))


def _proc_net_address(hex_address: str, family: int) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) \
        if sys.byteorder == "little" else raw
    return socket.inet_ntop(family, words)
