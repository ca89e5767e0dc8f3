"""A TCP echo server on a fixed port, as a wrapped program of the launcher tests.

It binds the port it is given (IPv4, IPv6 or both, on the wildcard address) as a
VNC server binds 5901, so rebind.so has to move it.  A client line ``EXIT n``
makes it exit with status n; ``PORT?`` answers ``PORT p``, the port the listener
that accepted the client was bound to.  ``--helper`` starts a long-lived child in a
session of its own (as a VNC session script would be) that must not outlive
websockify; ``--stubborn-helper`` starts one that ignores SIGTERM.  ``--delay``
waits before listening (clients must wait for it).  ``--unix PATH`` listens on a
unix socket instead of ports.  ``--then-serve PORT`` starts, once listening, a
second server of this kind on PORT from a child process (as a user starts a
development server from a terminal in a VNC desktop).
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import time

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def listeners(port: int, family: str) -> list[socket.socket]:
    socks = []
    if family in ("4", "both"):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v4.bind(("0.0.0.0", port))
        socks.append(v4)
    if family in ("6", "both"):
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))
        socks.append(v6)
    for sock in socks:
        sock.listen(16)
    return socks


def unix_listener(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)  # left by an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


def serve(socks: dict[socket.socket, int]) -> int:
    """Echo on every listener; ``socks`` maps each to the port it was bound to."""
    selector = selectors.DefaultSelector()
    for sock, port in socks.items():
        selector.register(sock, selectors.EVENT_READ, port)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock in socks:
                conn, _ = sock.accept()
                selector.register(conn, selectors.EVENT_READ, key.data)
                continue
            data = sock.recv(65536)
            if not data:
                selector.unregister(sock)
                sock.close()
            elif data.startswith(b"EXIT "):
                return int(data.split()[1])
            elif data == b"PORT?":
                sock.sendall(b"PORT %d" % key.data)
            else:
                sock.sendall(data)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, action="append", default=[])
    parser.add_argument("--unix", metavar="PATH")
    parser.add_argument("--then-serve", type=int, metavar="PORT")
    parser.add_argument("--family", choices=("4", "6", "both"), default="4")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--helper", action="store_true")
    parser.add_argument("--stubborn-helper", action="store_true")
    parser.add_argument("--pidfile", help="append this process's pid (and its helper's)")
    args = parser.parse_args()
    pids = [os.getpid()]
    if args.helper:
        pids.append(subprocess.Popen(["sleep", "600"], start_new_session=True).pid)
    if args.stubborn_helper:
        pids.append(subprocess.Popen([sys.executable, "-c", STUBBORN]).pid)
    if args.pidfile:
        with open(args.pidfile, "a") as out:
            out.write("".join(f"{pid}\n" for pid in pids))
    time.sleep(args.delay)
    socks = {sock: port for port in args.port for sock in listeners(port, args.family)}
    if args.unix:
        socks[unix_listener(args.unix)] = 0
    if args.then_serve:
        subprocess.Popen([sys.executable, __file__, "--port", str(args.then_serve)])
    return serve(socks)


if __name__ == "__main__":
    sys.exit(main())
