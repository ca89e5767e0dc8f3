"""websockify: a WebSocket-to-TCP bridge on gevent."""

__version__ = "0.14.0"
