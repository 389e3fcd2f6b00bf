"""The picows peer: picows' asyncio server (Cython framing), the same echo / chat service
as bench/peers/websockets_app.py (plain JSON, `?id=` instead of a token, no checks).

picows hands the listener frames, not messages: /ws/echo sends every data frame back
as it came (opcode, FIN), which echoes a fragmented message too. /ws/chat welcomes the
client, then writes each broadcast to every chat transport without waiting; like
`websockets.broadcast` it skips a connection whose unsent bytes are over 64 KiB, so a
never-reading subscriber does not grow the server's memory without bound. No HTTP API
(picows answers GET upgrades only; /healthz is its 200 "small endpoint").

    python bench/peers/picows_app.py [port]

It prints the two lines bench/run.py waits for (gunicorn's wording: "Listening at:",
"Booting worker with pid:"). One process, compression off (picows has none).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

WRITE_LIMIT = 64 * 1024
chat: set[WSTransport] = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Chat(WSListener):
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def on_ws_connected(self, transport: WSTransport) -> None:
        chat.add(transport)
        transport.send(WSMsgType.TEXT, json.dumps({"type": "welcome", "client_id": self.client_id}).encode())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        chat.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT or not frame.fin:
            return  # the load generator sends chat messages as one text frame
        msg = json.loads(frame.get_payload_as_bytes())
        if msg.get("type") == "broadcast":
            text = json.dumps({"type": "broadcast", "from": self.client_id, "data": msg.get("data"), "ts": time.time()})
            data = text.encode()
            for t in list(chat):
                if t.underlying_transport.get_write_buffer_size() <= WRITE_LIMIT:
                    t.send(WSMsgType.TEXT, data)


def route(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
    url = urlsplit(request.path.decode("latin-1"))
    if url.path == "/healthz":
        ok = WSUpgradeResponse.create_ok_response(b'{"status": "ok"}\n', {"Content-Type": "application/json"})
        return WSUpgradeResponseWithListener(ok, None)
    if url.path == "/ws/echo":
        return Echo()
    if url.path == "/ws/chat":
        return Chat(parse_qs(url.query).get("id", ["anonymous"])[0])
    return None  # 404


async def main(port: int) -> None:
    server = await ws_create_server(route, "127.0.0.1", port, max_frame_size=65536, backlog=2048)
    bound = server.sockets[0].getsockname()[1]
    print(f"Listening at: http://127.0.0.1:{bound}", flush=True)
    print(f"Booting worker with pid: {os.getpid()}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    except KeyboardInterrupt:
        pass
