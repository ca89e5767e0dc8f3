"""A gunicorn worker whose handler speaks websockify's handshake.

gunicorn's gevent worker with :class:`websockify.handler.UpgradeHandler`: every
draft (RFC 6455 13/8/7, Hixie-76/75), the binary and base64 subprotocols, and the
handshake deadline and message limit of the application's settings.
Use it as ``gunicorn -k websockify.gunicorn_worker.WebsockifyWorker``.
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from websockify.handler import UpgradeHandler


class GunicornUpgradeHandler(UpgradeHandler, PyWSGIHandler):
    """Our upgrade handling, with gunicorn's access log and environ additions."""


class WebsockifyWorker(GeventPyWSGIWorker):
    """gunicorn's gevent worker running websockify's handler."""

    wsgi_handler = GunicornUpgradeHandler
