"""Fixtures: real gunicorn processes (gevent worker) and redis-server, on free ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from helpers import REDIS_SERVER, RedisProcess, Server, unavailable


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


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free port for a test module; in CI it must exist."""
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    srv = RedisProcess()
    srv.start()
    yield srv
    srv.stop()
