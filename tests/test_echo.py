"""/ws/echo: every message comes back unchanged, with its type."""

from __future__ import annotations

import os

import websocket

from helpers import Server, make_token, read_close, ws_connect


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
