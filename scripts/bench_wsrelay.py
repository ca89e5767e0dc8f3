"""A minimal WebSocket-to-TCP relay on python-websockets (asyncio): the benchmark's peer.

    python scripts/bench_wsrelay.py LISTEN_HOST:PORT TARGET_HOST:PORT

What a developer would write in thirty lines with the best-known asyncio library:
``websockets.serve`` plus ``asyncio.open_connection``, binary frames both ways,
subprotocol ``binary``.  Kept fair to it: no compression and no keepalive pings
(websockify sends neither by default), and the same listen backlog as websockify.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

READ_SIZE = 256 << 10


async def relay(ws: ServerConnection, target: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*target)

    async def client_to_target() -> None:
        async for message in ws:
            writer.write(message if isinstance(message, bytes) else message.encode())
            await writer.drain()
        writer.close()

    async def target_to_client() -> None:
        while data := await reader.read(READ_SIZE):
            await ws.send(data)
        await ws.close()

    tasks = [asyncio.create_task(client_to_target()), asyncio.create_task(target_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()


async def main(listen: str, target: str) -> None:
    host, port = listen.rsplit(":", 1)
    target_host, target_port = target.rsplit(":", 1)
    async with serve(lambda ws: relay(ws, (target_host, int(target_port))), host, int(port),
                     subprotocols=[Subprotocol("binary")], compression=None, ping_interval=None,
                     backlog=1024) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
