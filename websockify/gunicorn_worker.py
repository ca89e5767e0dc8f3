"""A gunicorn worker whose handler speaks websockify's handshake.

gunicorn's gevent worker with :class:`websockify.handler.UpgradeHandler`: every
draft (RFC 6455 13/8/7, Hixie-76/75), the binary and base64 subprotocols, and the
handshake deadline and message limit of WEBSOCKIFY_ARGS (the same arguments
``websockify.wsgi:application`` reads).  The settings reach the handler through
the worker's server, so the application may be wrapped in any WSGI middleware.
Use it as ``gunicorn -k websockify.gunicorn_worker.WebsockifyWorker``.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from websockify import cli
from websockify.handler import UpgradeHandler, UpgradeServer, UpgradeSettings


class GunicornUpgradeHandler(UpgradeHandler, PyWSGIHandler):
    """Our upgrade handling, with gunicorn's access log and environ additions."""


class GunicornUpgradeServer(UpgradeServer, PyWSGIServer):
    """gunicorn's gevent WSGI server, telling our handler the worker's settings."""


class WebsockifyWorker(GeventPyWSGIWorker):
    """gunicorn's gevent worker running websockify's handler."""

    wsgi_handler = GunicornUpgradeHandler

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # Read once the application is loaded, so a wrong WEBSOCKIFY_ARGS has
        # already stopped the worker with the application's own one-line error.
        self._upgrade_settings = UpgradeSettings.from_settings(cli.parse_wsgi_environment())

    def server_class(self, *args: Any, **kwargs: Any) -> GunicornUpgradeServer:
        """gunicorn builds each listener's server through this."""
        server = GunicornUpgradeServer(*args, **kwargs)
        server.upgrade_settings = self._upgrade_settings
        return server
