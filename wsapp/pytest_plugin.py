"""pytest fixtures for apps built on wsapp (loaded through the `pytest11` entry point
when wsapp is installed; or `pytest -p wsapp.pytest_plugin`, or
`pytest_plugins = ["wsapp.pytest_plugin"]` in a root conftest.py).

* `ws_app`: the `WSApp` under test. By default the extension of your `app` fixture
  (`app.extensions["wsapp"]`); define `ws_app` yourself to choose another.
* `ws_client(path="/ws/chat", *, token=None, client_id=None, claims=None, headers=None,
  subprotocols=None, timeout=5.0)`: a connected `wsapp.testing.WebSocketTestClient`
  (see `wsapp.testing.connect`); every client still open is closed after the test.
* `ws_token(client_id="alice", claims=None, ttl_s=3600)`: a token the app accepts.

Nothing here imports Flask or gevent until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .extension import WSApp
    from .testing import WebSocketTestClient


@pytest.fixture
def ws_app(request: pytest.FixtureRequest) -> WSApp:
    """The WSApp under test: your `app` fixture's extension (override to choose)."""
    app = request.getfixturevalue("app")
    ext = app.extensions.get("wsapp")
    if ext is None:
        raise pytest.UsageError("the `app` fixture's app has no WSApp: call WSApp(app), or define a `ws_app` fixture")
    return ext  # type: ignore[no-any-return]


@pytest.fixture
def ws_token(ws_app: WSApp) -> Callable[..., str]:
    """`ws_token(client_id="alice", claims=None, ttl_s=3600)`: a token minted with the app's settings."""
    from .testing import mint_token

    def make(client_id: str = "alice", claims: dict[str, Any] | None = None, ttl_s: float = 3600) -> str:
        return mint_token(ws_app, client_id, claims, ttl_s)

    return make


@pytest.fixture
def ws_client(ws_app: WSApp) -> Iterator[Callable[..., WebSocketTestClient]]:
    """`ws_client(path="/ws/chat", client_id=..., ...)`: a connected client; all closed at the end."""
    from .testing import connect

    opened: list[WebSocketTestClient] = []

    def make(path: str = "/ws/chat", **kwargs: Any) -> WebSocketTestClient:
        client = connect(ws_app, path, **kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        if not client.closed:
            client.close(timeout=1)
