"""The Granian peer: an RSGI app on Granian's Rust server (hyper + tungstenite), the same
echo / chat service as bench/peers/websockets_app.py (plain JSON, `?id=` instead of a
token, no checks), plus `POST /api/broadcast` like bench/peers/flask_sock_app.py.

Each chat connection has a writer task and a 1,024-message queue (wsapp's benchmark
setting): a broadcast is put on every queue without waiting, a full queue drops it, so a
never-reading subscriber does not stall the others (awaiting `send_str` to it would).

    granian --interface rsgi --workers 1 --runtime-threads 1 --port PORT \
        bench.peers.granian_app:app

Granian prints "Listening at:" and "Spawning worker-1 with PID:" (bench/run.py reads
both; the worker process is the one measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

from granian.rsgi import WebsocketMessageType

QUEUE = 1024
chat: dict[int, asyncio.Queue[str]] = {}
_JSON = [("content-type", "application/json")]


def broadcast(sender: str, data: Any) -> int:
    text = json.dumps({"type": "broadcast", "from": sender, "data": data, "ts": time.time()})
    delivered = 0
    for q in list(chat.values()):
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(text)
            delivered += 1
    return delivered


async def writer(transport: Any, q: asyncio.Queue[str]) -> None:
    while True:
        await transport.send_str(await q.get())


async def ws_chat(transport: Any, client_id: str) -> None:
    q: asyncio.Queue[str] = asyncio.Queue(QUEUE)
    key = id(q)
    task = asyncio.ensure_future(writer(transport, q))
    chat[key] = q
    try:
        q.put_nowait(json.dumps({"type": "welcome", "client_id": client_id}))
        while True:
            msg = await transport.receive()
            if msg.kind == WebsocketMessageType.close:
                return
            parsed = json.loads(msg.data)
            if parsed.get("type") == "broadcast":
                broadcast(client_id, parsed.get("data"))
    finally:
        chat.pop(key, None)
        task.cancel()


async def ws_echo(transport: Any) -> None:
    while True:
        msg = await transport.receive()
        if msg.kind == WebsocketMessageType.close:
            return
        if msg.kind == WebsocketMessageType.string:
            await transport.send_str(msg.data)
        else:
            await transport.send_bytes(msg.data)


async def app(scope: Any, proto: Any) -> None:
    if scope.proto == "ws":
        if scope.path not in ("/ws/echo", "/ws/chat"):
            proto.close(1008)
            return
        transport = await proto.accept()
        try:
            if scope.path == "/ws/echo":
                await ws_echo(transport)
            else:
                await ws_chat(transport, parse_qs(scope.query_string).get("id", ["anonymous"])[0])
        except Exception:  # noqa: BLE001 - the client went away mid-send
            pass
        proto.close(1000)
        return
    if scope.path == "/healthz":
        proto.response_str(200, _JSON, '{"status": "ok"}\n')
    elif scope.path == "/api/broadcast" and scope.method == "POST":
        body = json.loads(await proto())
        proto.response_str(200, _JSON, json.dumps({"delivered": broadcast("api", body["data"])}))
    else:
        proto.response_str(404, _JSON, '{"error": "not found"}\n')
