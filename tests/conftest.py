"""Fixtures: real gunicorn processes (gevent worker) on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from helpers import Server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One gunicorn with default settings (a known secret, rate limit off) for a test module."""
    srv = Server(env={"WSAPP_RATE_LIMIT": "0"}).start()
    yield srv
    srv.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start gunicorn with extra WSAPP_* settings: `start_server(WSAPP_SEND_QUEUE="4")`."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        srv = Server(env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
