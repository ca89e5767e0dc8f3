"""websockify as a WSGI application: ``websockify.wsgi:application``.

The arguments are websockify's own, without the listening address (the WSGI
server listens), taken from the environment variable WEBSOCKIFY_ARGS::

    WEBSOCKIFY_ARGS="--web /usr/share/novnc localhost:5900" \\
        gunicorn -k websockify.gunicorn_worker.WebsockifyWorker -b 127.0.0.1:6080 \\
        websockify.wsgi:application

With ``-k websockify.gunicorn_worker.WebsockifyWorker`` our handler answers the
handshake: RFC 6455 and Hixie, binary and base64, our limits.  gevent-websocket's
stock worker (``-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker``) works
too, for RFC 6455 with binary frames; the relay reads the frames either way.

The application is built when this module is imported, so a wrong WEBSOCKIFY_ARGS
stops the worker at boot with websockify's one-line error.
"""

from __future__ import annotations

from websockify import cli, logsetup
from websockify.app import WebsockifyApp, create_app


def application_from_environment() -> WebsockifyApp:
    """The application that $WEBSOCKIFY_ARGS describes; -v, --log-file, --syslog and
    --log-format set up logging (otherwise the WSGI server's logging stays)."""
    settings = cli.parse_wsgi_environment()
    ops = settings.operations
    if settings.verbose or settings.log_file or ops.syslog or ops.log_format != "text":
        logsetup.configure(settings)
    return create_app(settings)


application = application_from_environment()
