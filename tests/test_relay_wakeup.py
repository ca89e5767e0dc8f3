"""The relay's wake-up object, in gevent but without sockets.

gevent's reusable ``Waiter`` keeps a value switched to it while nobody waits, and
every later ``get()`` then returns that value at once: a relay woken while it was
busy elsewhere (a log handler writing to a socket yields to the hub) would spin.
"""

from __future__ import annotations

import gevent
from gevent import get_hub

from websockify.relay import Wakeup


def test_a_wake_while_busy_is_kept_for_one_wait_only() -> None:
    hub = get_hub()
    wake = Wakeup()

    def relay() -> list[int]:
        seen = []
        gevent.sleep(0.01)  # busy elsewhere (yields to the hub) while the wake arrives
        seen.append(wake.wait(hub))
        timer = hub.loop.timer(0.05)
        timer.start(wake.set, 16)
        try:
            seen.append(wake.wait(hub))  # must sleep until the timer, not return at once
        finally:
            timer.close()
        return seen

    greenlet = gevent.spawn(relay)
    gevent.sleep(0)
    hub.loop.run_callback(wake.set, 4)
    assert greenlet.get(timeout=5) == [4, 16]


def test_wakes_before_a_wait_are_collected_together() -> None:
    hub = get_hub()
    wake = Wakeup()

    def relay() -> int:
        gevent.sleep(0.01)
        return wake.wait(hub)

    greenlet = gevent.spawn(relay)
    gevent.sleep(0)
    hub.loop.run_callback(wake.set, 1)
    hub.loop.run_callback(wake.set, 8)
    assert greenlet.get(timeout=5) == 9
