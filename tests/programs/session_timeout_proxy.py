"""A console proxy shaped like nova's, under eventlet's monkey-patching or plain threads.

``session_timeout_proxy.py MODE TARGET_PORT SECONDS``: MODE is "eventlet" (patch
everything first, as nova's eventlet mode does) or "threads".  Each connection's
handler starts a ``threading.Timer`` that shuts the target down after SECONDS, as
nova's enforced session timeout does, then calls ``do_proxy``.  The timer can only
fire if the relay's wait lets it run: green under eventlet, a real thread otherwise.
The listening port is printed as "PORT n".
"""

from __future__ import annotations

import sys

MODE = sys.argv[1]
if MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()

import socket  # noqa: E402 (after monkey-patching, as nova does)
import threading  # noqa: E402

import websockify  # noqa: E402
from websockify import websockifyserver  # noqa: E402


class SessionHandler(websockify.ProxyRequestHandler):
    def new_websocket_client(self) -> None:
        if MODE == "eventlet":
            eventlet.hubs.use_hub()  # nova does this first in every connection's process
        tsock = websockifyserver.WebSockifyServer.socket("127.0.0.1", self.server.echo_port,
                                                         connect=True)
        timer = threading.Timer(self.server.session_seconds, tsock.shutdown, [socket.SHUT_RDWR])
        timer.start()
        try:
            self.do_proxy(tsock)
        finally:
            timer.cancel()
            tsock.close()


class SessionProxy(websockify.WebSocketProxy):
    def __init__(self, **kwargs: object) -> None:
        self.echo_port = kwargs.pop("echo_port")
        self.session_seconds = kwargs.pop("session_seconds")
        super().__init__(**kwargs)

    def started(self) -> None:
        super().started()
        print("PORT", self.server_address[1], flush=True)


if __name__ == "__main__":
    SessionProxy(RequestHandlerClass=SessionHandler, listen_host="127.0.0.1", listen_port=0,
                 echo_port=int(sys.argv[2]), session_seconds=float(sys.argv[3])).start_server()
