"""The gevent internals the handler depends on are named in one place, and exist.

``websockify.handler.GEVENT_HOOKS`` lists what the handler overrides or uses of
gevent.pywsgi.WSGIHandler beyond the WSGI API.  A gevent release that renames one
fails here, not in production; an override added without naming it fails too.
"""

from __future__ import annotations

import gevent
import pytest
from gevent import pywsgi, socket
from gevent.pywsgi import WSGIHandler

from websockify.handler import GEVENT_HOOKS, GEVENT_MODULE_NAMES, UpgradeHandler


def test_every_named_hook_exists_in_this_gevent() -> None:
    """Looked up on a real handler over a real socket pair (``rfile`` is made per
    connection, in gevent's __init__)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        handler = WSGIHandler(ours, ("127.0.0.1", 1), None)
        missing = [name for name in GEVENT_HOOKS if not hasattr(handler, name)]
        handler.rfile.close()
    assert missing == [], f"gevent {gevent.__version__} lacks {missing}"


def test_every_named_module_level_name_exists_in_this_gevent() -> None:
    missing = [name for name in GEVENT_MODULE_NAMES if not hasattr(pywsgi, name)]
    assert missing == [], f"gevent {gevent.__version__} lacks gevent.pywsgi.{missing}"


def test_every_gevent_attribute_the_handler_overrides_is_named() -> None:
    overridden = {name for name in vars(UpgradeHandler)
                  if hasattr(WSGIHandler, name) and not name.startswith("__")}
    assert overridden - set(GEVENT_HOOKS) == set()
    assert overridden, "the handler overrides gevent's methods: this test must see them"


def test_gunicorn_handler_keeps_ours_first() -> None:
    """gunicorn's handler class adds its access log; our overrides must win."""
    pytest.importorskip("gunicorn", reason="the gunicorn extra is not installed")
    from websockify.gunicorn_worker import GunicornUpgradeHandler

    for name in GEVENT_HOOKS:
        if name in vars(UpgradeHandler):
            assert getattr(GunicornUpgradeHandler, name) is getattr(UpgradeHandler, name), name
