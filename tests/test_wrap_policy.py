"""The wrap policy's decisions as tables: no processes, no clock, no I/O."""

from __future__ import annotations

import signal

import pytest

from websockify.launcher.wrap_policy import (
    Action,
    BackOff,
    Decision,
    decide,
    exit_status,
    reaper_of,
    server_status,
    status_before_listening,
)
from websockify.settings import WrapMode

EXITED_3 = 3 << 8
KILLED = int(signal.SIGKILL)


@pytest.mark.parametrize(("mode", "status", "ran_for", "quick_deaths", "expected"), [
    # exit and ignore pass the status on, whatever the history
    (WrapMode.EXIT, 3, 100.0, 0, Decision(Action.EXIT, 3)),
    (WrapMode.EXIT, 0, 0.1, 5, Decision(Action.EXIT, 0)),
    (WrapMode.IGNORE, 137, 0.1, 0, Decision(Action.KEEP_SERVING, 137)),
    # respawn: a long run resets the count and restarts at once
    (WrapMode.RESPAWN, 1, 10.0, 7, Decision(Action.RESTART, 1, 0.0, 0)),
    (WrapMode.RESPAWN, 1, 3600.0, 0, Decision(Action.RESTART, 1, 0.0, 0)),
    # the first quick death restarts at once, then 0.5 s, 1 s, 2 s ...
    (WrapMode.RESPAWN, 1, 9.9, 0, Decision(Action.RESTART, 1, 0.0, 1)),
    (WrapMode.RESPAWN, 1, 0.1, 1, Decision(Action.RESTART, 1, 0.5, 2)),
    (WrapMode.RESPAWN, 1, 0.1, 2, Decision(Action.RESTART, 1, 1.0, 3)),
    (WrapMode.RESPAWN, 1, 0.1, 3, Decision(Action.RESTART, 1, 2.0, 4)),
    # ... never longer than the maximum
    (WrapMode.RESPAWN, 1, 0.1, 7, Decision(Action.RESTART, 1, 30.0, 8)),
    (WrapMode.RESPAWN, 1, 0.1, 60, Decision(Action.RESTART, 1, 30.0, 61)),
    # a status of 0 is no different: the server ended
    (WrapMode.RESPAWN, 0, 0.1, 1, Decision(Action.RESTART, 0, 0.5, 2)),
])
def test_what_each_mode_does_when_the_server_ends(
        mode: WrapMode, status: int, ran_for: float, quick_deaths: int,
        expected: Decision) -> None:
    assert decide(mode, status, ran_for, quick_deaths) == expected


def test_the_back_off_can_be_tuned() -> None:
    backoff = BackOff(quick=1.0, first=2.0, maximum=5.0)
    assert decide(WrapMode.RESPAWN, 1, 1.5, 4, backoff) == Decision(Action.RESTART, 1, 0.0, 0)
    assert decide(WrapMode.RESPAWN, 1, 0.5, 1, backoff) == Decision(Action.RESTART, 1, 2.0, 2)
    assert decide(WrapMode.RESPAWN, 1, 0.5, 3, backoff) == Decision(Action.RESTART, 1, 5.0, 4)


@pytest.mark.parametrize(("wait_status", "expected"), [
    (0, 0), (EXITED_3, 3), (255 << 8, 255), (KILLED, 137), (int(signal.SIGTERM), 143),
])
def test_exit_status_follows_the_shell_convention(wait_status: int, expected: int) -> None:
    assert exit_status(wait_status) == expected


WEBSOCKIFY = 1


@pytest.mark.parametrize(("parent_now", "parent_when_listening", "reaped_by_us", "expected"), [
    # still a zombie: whoever is its parent now reaps it
    (20, 20, False, 20),
    (WEBSOCKIFY, 20, False, None),  # its parent died first: it became ours
    (WEBSOCKIFY, WEBSOCKIFY, False, None),
    # gone: reaped by us, or else by the parent it had
    (None, 20, True, None),
    (None, WEBSOCKIFY, False, None),
    (None, 20, False, 20),
    (None, None, False, None),
])
def test_who_reaps_the_server(parent_now: int | None, parent_when_listening: int | None,
                              reaped_by_us: bool, expected: int | None) -> None:
    assert reaper_of(parent_now, parent_when_listening, WEBSOCKIFY, reaped_by_us) == expected


@pytest.mark.parametrize(("reaper", "reaped", "expected"), [
    # websockify reaped the server itself (it was orphaned): its own status
    (None, {10: EXITED_3}, 3),
    (20, {10: KILLED, 20: 0}, 137),
    # its parent reaped it and passed the status on (sh -c, vncserver's session)
    (20, {20: EXITED_3}, 3),
    # not known yet: wait a little longer
    (20, {}, None),
    (None, {30: EXITED_3}, None),
])
def test_which_status_the_server_ended_with(
        reaper: int | None, reaped: dict[int, int], expected: int | None) -> None:
    assert server_status(10, reaper, reaped) == expected


@pytest.mark.parametrize(("command_status", "tree_left", "last_failure", "expected"), [
    # the command failed: the generation failed, whatever it left behind
    (EXITED_3, True, EXITED_3, 3),
    (KILLED, False, 0, 137),
    # still running, or exited 0 with a daemon left: not ended
    (None, True, 0, None),
    (0, True, EXITED_3, None),
    # exited 0 and the whole tree is gone: the last failure in it, else 0
    (0, False, EXITED_3, 3),
    (0, False, 0, 0),
    (None, False, 0, 0),
])
def test_how_a_generation_ends_before_it_listens(
        command_status: int | None, tree_left: bool, last_failure: int,
        expected: int | None) -> None:
    assert status_before_listening(command_status, tree_left, last_failure) == expected
