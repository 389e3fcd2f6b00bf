"""The three handshake paths answer alike: the early path (a whole head, read before
gunicorn's parser), the fast path (gunicorn parses, no Flask request) and Flask's own
(`WSAPP_FAST_HANDSHAKES=off`), on apps that guard their views in the ways real apps do
(tests/apps/guarded.py). Each app runs under real gunicorn once per path setting; the
same handshakes go to each, and every answer (status and body) must be the same as
Flask's. A shortcut that skipped a guard would answer 101 where Flask refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import Server, http, make_token, raw_handshake

MODES = ("early", "fast", "off")

# (guard, what Flask answers a handshake without X-Staff on /ws/chat and /ws/echo)
APPS = {
    "plain": (101, 101),
    "before_request": (403, 403),
    "wrapped": (403, 403),
    "replaced": (101, 101),  # until /lockdown replaces the views, then 423
    "subclass": (403, 403),
    "subclass_dispatch": (403, 403),
    "instance_override": (403, 403),
    "trusted_hosts": (101, 101),  # with a trusted Host; an untrusted one gets 400
    "blueprint_hook": (101, 403),  # the hook is on /ws/echo's blueprint only
    "middleware_before": (401, 401),
    "middleware_after": (401, 401),
}

# the path that serves an accepted handshake on /ws/chat, per app, under `early`
EARLY_SERVES = {
    "plain": "early",
    "blueprint_hook": "early",
    "middleware_after": "fast",  # the middleware runs first, then wsapp's fast path inside it
    "replaced": "early",  # until /lockdown: then Flask, for every handshake
}


def answer(port: int, path: str, *, staff: bool, host: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    if staff:
        headers["X-Staff"] = "yes"
    if host is not None:
        headers["Host"] = host
    status, _headers, body, sock = raw_handshake(port, path, headers)
    try:
        if status == 101:
            return status, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("latin-1")
    finally:
        sock.close()


def script(server: Server, guard: str) -> tuple[list[tuple[str, int, Any]], list[dict[str, int]]]:
    """The same handshakes, in the same order, for every path; each answer, and the
    paths that had served the accepted ones after each round."""
    port = server.port
    answers: list[tuple[str, int, Any]] = []
    counts: list[dict[str, int]] = []

    def rounds(tag: str) -> None:
        for path in ("/ws/chat", "/ws/echo"):
            for staff in (False, True):
                answers.append((f"{tag} {path} staff={staff}", *answer(port, path, staff=staff)))
        for host in ("evil.example", "127.0.0.1.evil.example", "[::1]"):
            answers.append((f"{tag} host={host}", *answer(port, "/ws/chat", staff=True, host=host)))

    rounds("first")
    counts.append(served(server))
    if guard == "replaced":
        assert http(server.url, "POST", "/lockdown").status == 200
        rounds("after lockdown")
        counts.append(served(server))
    return answers, counts


def served(server: Server) -> dict[str, int]:
    got = http(server.url, "GET", "/paths")
    assert got.status == 200, got
    return {path: int(n) for path, n in got.body.items()}


@pytest.mark.parametrize("guard", list(APPS))
def test_every_path_answers_a_guarded_app_as_flask_does(guard: str) -> None:
    results: dict[str, list[tuple[str, int, Any]]] = {}
    paths: dict[str, list[dict[str, int]]] = {}
    for mode in MODES:
        server = Server(
            app="guarded:app",
            args=("--pythonpath", "tests/apps"),
            env={"GUARD": guard, "WSAPP_FAST_HANDSHAKES": mode},
            health="/paths",
        ).start()
        try:
            results[mode], paths[mode] = script(server, guard)
        finally:
            server.stop()

    flask = results["off"]
    # the guard is real: Flask's own answers are what the app says
    chat, echo = APPS[guard]
    by_name = {name: status for name, status, _body in flask}
    assert (by_name["first /ws/chat staff=False"], by_name["first /ws/echo staff=False"]) == (chat, echo)
    assert by_name["first /ws/chat staff=True"] == 101
    if guard == "trusted_hosts":
        assert by_name["first host=evil.example"] == 400
    if guard == "replaced":
        assert by_name["after lockdown /ws/chat staff=False"] == 423
        assert by_name["after lockdown /ws/chat staff=True"] == 101

    # the differential: every path answers every handshake as Flask does
    assert results["early"] == flask
    assert results["fast"] == flask

    # and each path was really taken where it may be, and nowhere else
    first = {mode: counts[0] for mode, counts in paths.items()}
    assert first["off"]["early"] == first["off"]["fast"] == 0
    accepted = sum(1 for name, status, _body in flask if status == 101 and name.startswith("first"))
    assert sum(first["off"].values()) == accepted
    early_path = EARLY_SERVES.get(guard, "flask")
    if early_path == "early":
        assert first["early"]["early"] > 0 and first["fast"]["early"] == 0 and first["fast"]["fast"] > 0
    elif early_path == "fast":
        assert first["early"]["early"] == 0 and first["early"]["fast"] > 0
    else:
        assert first["early"]["early"] == first["early"]["fast"] == first["fast"]["fast"] == 0
    if guard == "replaced":  # after the views were replaced, Flask's path only
        for mode in MODES:
            before, after = paths[mode]
            assert (after["early"], after["fast"]) == (before["early"], before["fast"])
            assert after["flask"] > before["flask"]
