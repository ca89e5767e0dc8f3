"""websockify: a WebSocket-to-TCP bridge on gevent.

It is also upstream websockify's Python API: ``websockify.WebSocketProxy``,
``websockify.ProxyRequestHandler``, ``websockify.WebSocket`` and the modules
``websocketproxy``, ``websockifyserver``, ``websocket``, ``websocketserver``,
``token_plugins`` and ``auth_plugins``.  Those names are loaded on first use, so
``import websockify`` stays cheap for the command line and never imports gevent.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.14.0"

#: Upstream's package-level names and the module each comes from.
_LIBRARY_NAMES = {
    "WebSocket": "websocket",
    "WebSocketWantReadError": "websocket",
    "WebSocketWantWriteError": "websocket",
    "ProxyRequestHandler": "websocketproxy",
    "WebSocketProxy": "websocketproxy",
    "SSL_OPTIONS": "websocketproxy",
    "select_ssl_version": "websocketproxy",
    "websockify_init": "websocketproxy",
}
_LIBRARY_MODULES = frozenset((
    "websocket", "websocketproxy", "websockifyserver", "websocketserver",
    "token_plugins", "auth_plugins",
))


def __getattr__(name: str) -> Any:
    if name in _LIBRARY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module_name = _LIBRARY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LIBRARY_NAMES, *_LIBRARY_MODULES})
