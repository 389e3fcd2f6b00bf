"""/ws/echo: every message comes back unchanged, with its type."""

from __future__ import annotations

import os
import socket
import struct
import zlib

import websocket

from helpers import Server, make_token, raw_handshake, read_close, ws_connect


def test_text_comes_back_as_text(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    for text in ("hello", "héllo ✓ 🎉", "", "x" * 60000):
        ws.send(text)
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT and data.decode("utf-8") == text
    ws.close()


def test_binary_comes_back_as_binary(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    for payload in (b"\x00\x01\xff", os.urandom(65536)):
        ws.send_binary(payload)
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, payload)
    ws.close()


def test_fragmented_message_is_reassembled(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    ws.send_frame(websocket.ABNF.create_frame("abc", websocket.ABNF.OPCODE_TEXT, fin=0))
    ws.send_frame(websocket.ABNF.create_frame("def", websocket.ABNF.OPCODE_CONT, fin=1))
    assert ws.recv() == "abcdef"
    ws.close()


def test_ping_gets_pong(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    ws.ping(b"are you there")
    assert ws.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    ws.close()


def test_over_the_size_limit_closes_1009(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    ws.send_binary(b"x" * 65537)
    assert read_close(ws)[0] == 1009


def test_client_close_is_answered_with_its_code(server: Server) -> None:
    ws = ws_connect(server, "/ws/echo", make_token())
    ws.send_close(4000, b"done")
    assert read_close(ws) == (4000, "")


def _masked(opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode, 0x80 | len(payload))) + key + body


def _read_frames(sock: socket.socket, buf: bytes, count: int, timeout: float = 10) -> list[tuple[int, bytes]]:
    """Read `count` server frames (short ones) or until EOF."""
    sock.settimeout(timeout)
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
            n = buf[1] & 0x7F
            out.append((buf[0] & 0x0F, buf[2 : 2 + n]))
            buf = buf[2 + n :]
        if len(out) >= count:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return out


def _echo_socket(srv: Server, **headers: str) -> tuple[dict[str, str], bytes, socket.socket]:
    status, resp, rest, sock = raw_handshake(
        srv.port, "/ws/echo", {"Authorization": f"Bearer {make_token()}", **headers}
    )
    assert status == 101
    return resp, rest, sock


def test_a_valid_message_before_a_bad_frame_is_echoed_first(server: Server) -> None:
    # both in one write, so the server reads them together (Autobahn 3.2 and friends)
    _, rest, sock = _echo_socket(server)
    sock.sendall(_masked(0x1, b"Hello") + _masked(0x1, b"x", rsv1=True) + _masked(0x9, b"never"))
    got = _read_frames(sock, rest, 2)
    assert got[0] == (0x1, b"Hello")
    assert got[1][0] == 0x8 and struct.unpack("!H", got[1][1][:2])[0] == 1002
    sock.close()


def test_invalid_utf8_fails_at_its_fragment_not_at_the_end(server: Server) -> None:
    # the message is never finished: the server must fail it on the bad fragment alone
    _, rest, sock = _echo_socket(server)
    sock.sendall(_masked(0x1, "κόσμε".encode(), fin=False))
    sock.sendall(_masked(0x0, b"\xce\xba\xf4\x90\x80\x80", fin=False))
    [(opcode, payload)] = _read_frames(sock, rest, 1)
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1007
    sock.close()


def test_deflate_offer_with_server_max_window_bits_is_accepted(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_COMPRESSION="1")
    for bits in (8, 9, 12, 15):
        offer = f"permessage-deflate; server_max_window_bits={bits}; client_max_window_bits"
        resp, rest, sock = _echo_socket(srv, **{"Sec-WebSocket-Extensions": offer})
        ext = [p.strip() for p in resp["sec-websocket-extensions"].split(";")]
        assert ext[0] == "permessage-deflate" and f"server_max_window_bits={bits}" in ext
        c = zlib.compressobj(6, zlib.DEFLATED, -bits if bits > 8 else -9)
        body = b"window " * 10
        compressed = (c.compress(body) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        sock.sendall(_masked(0x2, compressed, rsv1=True))
        [(opcode, payload)] = _read_frames(sock, rest, 1)
        assert (opcode, payload) == (0x2, body)  # the server answers uncompressed
        sock.close()
    for bad in ("server_max_window_bits=16", "server_max_window_bits=7", "server_max_window_bits"):
        resp, _, sock = _echo_socket(srv, **{"Sec-WebSocket-Extensions": f"permessage-deflate; {bad}"})
        assert "sec-websocket-extensions" not in resp  # declined, the connection goes on uncompressed
        sock.close()
