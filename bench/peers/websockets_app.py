"""The python `websockets` peer: its asyncio server, the same echo / chat service as
bench/peers/flask_sock_app.py (plain JSON, `?id=` instead of a token, no checks).

Compression off and `max_size` 65536, as issue 14 asks; one process (the benchmark pins
it to one core like the gunicorn workers). `websockets.broadcast` writes a broadcast to
every connection without waiting on any (it skips one whose buffer is over its write
limit), so a never-reading subscriber does not stall the others.

    python bench/peers/websockets_app.py [port]

It prints the two lines bench/run.py waits for (gunicorn's wording: "Listening at:",
"Booting worker with pid:") and answers GET /healthz with 200 before any upgrade.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

clients: dict[int, ServerConnection] = {}
_numbers = itertools.count()


def healthz(conn: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return conn.respond(HTTPStatus.OK, '{"status": "ok"}\n')
    return None


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def chat(ws: ServerConnection, client_id: str) -> None:
    number = next(_numbers)
    clients[number] = ws
    try:
        await ws.send(json.dumps({"type": "welcome", "client_id": client_id}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "broadcast":
                text = json.dumps({"type": "broadcast", "from": client_id, "data": msg.get("data"), "ts": time.time()})
                broadcast(list(clients.values()), text)
    finally:
        clients.pop(number, None)


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    url = urlsplit(ws.request.path)
    try:
        if url.path == "/ws/echo":
            await echo(ws)
        elif url.path == "/ws/chat":
            await chat(ws, parse_qs(url.query).get("id", ["anonymous"])[0])
        else:
            await ws.close(1008, "no such route")
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    opts: dict[str, Any] = {"compression": None, "max_size": 65536, "process_request": healthz, "backlog": 2048}
    async with serve(handler, "127.0.0.1", port, **opts) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"Listening at: http://127.0.0.1:{bound}", flush=True)
        print(f"Booting worker with pid: {os.getpid()}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    except KeyboardInterrupt:
        pass
