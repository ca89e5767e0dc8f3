"""What to do when the wrapped program ends, as plain decisions without I/O.

The program module gathers the facts (who was reaped with which wait status,
how long the generation ran, whether anything of it is left) and acts on the
decision; this module only decides, so every case is a row in a table test:

* which exit status a generation ended with: the serving process's own when
  websockify reaped it, else that of its parent in the tree, which reaped it and
  usually passes it on (``sh -c``, vncserver's session); before anything listens,
  the command's own failure, or the last failure of a tree that is gone;
* what ``--wrap-mode`` makes of it: exit with that status, keep serving without
  a target, or start again, at once after a first quick death and then with a
  doubling back-off so a program that cannot start does not spin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from websockify.settings import WrapMode

#: The status when the serving process ended but nobody saw how (it was reaped
#: by a process outside websockify's view).
UNKNOWN_STATUS = 1
#: The status of a generation whose command could not be started (as a shell says).
CANNOT_START_STATUS = 127


class Action(Enum):
    EXIT = "exit websockify"
    KEEP_SERVING = "keep serving without a target"
    RESTART = "start the program again"


@dataclass(frozen=True)
class BackOff:
    """The respawn back-off: a run shorter than ``quick`` seconds is a quick death;
    the second quick death in a row waits ``first`` seconds, each next one twice as
    long, never more than ``maximum``."""

    quick: float = 10.0
    first: float = 0.5
    maximum: float = 30.0


@dataclass(frozen=True)
class Decision:
    action: Action
    #: The program's exit status (websockify's own with EXIT).
    status: int
    #: Seconds to wait before RESTART.
    delay: float = 0.0
    #: Quick deaths in a row so far, to pass to the next decision.
    quick_deaths: int = 0


def decide(mode: WrapMode, status: int, ran_for: float, quick_deaths: int,
           backoff: BackOff = BackOff()) -> Decision:
    """What ``mode`` does about a generation that ended with ``status`` after
    ``ran_for`` seconds, ``quick_deaths`` quick deaths in a row before it."""
    if mode is WrapMode.EXIT:
        return Decision(Action.EXIT, status)
    if mode is WrapMode.IGNORE:
        return Decision(Action.KEEP_SERVING, status)
    quick_deaths = quick_deaths + 1 if ran_for < backoff.quick else 0
    delay = 0.0
    if quick_deaths > 1:
        delay = min(backoff.maximum, backoff.first * 2 ** (quick_deaths - 2))
    return Decision(Action.RESTART, status, delay, quick_deaths)


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128 + the signal number."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def reaper_of(parent_now: int | None, parent_when_listening: int | None, websockify: int,
              reaped_by_websockify: bool) -> int | None:
    """Which process reaps the server that just ended; None for websockify itself.

    ``parent_now``: the ended server's parent as /proc shows it (None once it is
    reaped and gone).  While it is a zombie, that parent reaps it.  Once gone, it
    was reaped by websockify, or else by the parent it had when it listened (had
    that parent died first, the server would have become websockify's).
    """
    if parent_now is not None:
        return None if parent_now == websockify else parent_now
    if reaped_by_websockify or parent_when_listening == websockify:
        return None
    return parent_when_listening


def server_status(server: int, reaper: int | None, reaped: Mapping[int, int]) -> int | None:
    """The exit status of the serving process, or None while it is not known yet.

    ``reaped`` maps the pids websockify reaped to their wait statuses.  ``reaper``
    (see ``reaper_of``) reaped the server and, when it ends too, usually passes
    its status on.
    """
    for pid in (server, reaper):
        if pid is not None and pid in reaped:
            return exit_status(reaped[pid])
    return None


def status_before_listening(command_status: int | None, tree_left: bool,
                            last_failure: int) -> int | None:
    """The status of a generation that ends before it listens, or None while it runs.

    ``command_status``: the wait status of the command websockify started, None
    while it runs.  A command that fails has failed, whatever it left behind (it is
    stopped).  One that exits 0 may have daemonized: the generation ends only with
    its whole tree, with the last failure seen in it (``last_failure``, a wait
    status, 0 if none).
    """
    if command_status:
        return exit_status(command_status)
    if tree_left:
        return None
    return exit_status(last_failure)
