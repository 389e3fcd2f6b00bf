"""How a WebSocket leaves the WSGI server: the connection's socket, taken over.

* `cooperative_socket(environ)`: the connection's socket, if the server hands over a
  gevent socket (gunicorn's gevent worker: `gunicorn.socket`; Werkzeug's server in a
  gevent-patched process, or a test client given one: `werkzeug.socket`). Anything
  else (`flask run`'s threaded development server, gunicorn's sync worker) cannot carry
  a connection that lives on in a greenlet of its own: the handshake is refused with
  501 `unsupported_server` before any 101, and the app's log says why in one sentence.
* `take_over(sock, head, unread)`: the socket's file descriptor is detached from the
  server's socket object (which the server closes, now harmlessly, when the WSGI request
  ends) and wrapped anew; the request's bytes that were only peeked at are consumed; the
  101 is written on it.
* `after_upgrade()` / `answer_upgraded(...)`: the WSGI answer once the socket is ours:
  gunicorn is told the request was handled (`StopIteration`), Werkzeug's server that
  the connection is gone (`ConnectionError`, which it ignores quietly), so neither
  writes on it.

Nothing here imports Flask at module level (`after_upgrade` makes its class on first use).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import gevent.socket

if TYPE_CHECKING:
    from flask import Response

UNSUPPORTED_SERVER = (
    "wsapp: WebSockets need gunicorn's gevent worker; this server ({server}) cannot serve them, "
    "so the handshake was refused (501): run it as `gunicorn -k gevent {app}:app` instead"
)


class UnsupportedServer(Exception):
    """The WSGI server handed over no socket a greenlet can keep (see `cooperative_socket`)."""


def cooperative_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The connection's socket if it can live on in a greenlet (a gevent socket), else None."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    return sock if isinstance(sock, gevent.socket.socket) else None


def server_name(environ: dict[str, Any]) -> str:
    if "gunicorn.socket" in environ:
        return "gunicorn without the gevent worker"
    return str(environ.get("SERVER_SOFTWARE") or "this WSGI server")


def take_over(server_sock: socket.socket, head: bytes, unread: int = 0) -> socket.socket:
    """Detach the socket from the server, consume the `unread` bytes of the request that
    were only peeked at (`wsapp.handshake.early`), write the 101 (`head`) and hand the
    socket back."""
    sock = type(server_sock)(fileno=server_sock.detach())
    try:
        sock.settimeout(None)
        while unread > 0:  # already in the kernel's buffer: no wait
            got = len(sock.recv(unread))
            if not got:
                raise ConnectionResetError("connection closed during the handshake")
            unread -= got
        sent = sock.send(head)  # a fresh socket's buffer takes the whole 101 at once
        if sent < len(head):
            sock.sendall(head[sent:])
    except OSError:
        sock.close()
        raise
    return sock


def _leave_the_socket(environ: dict[str, Any]) -> None:
    """Tell the server the socket is ours now: gunicorn and Werkzeug's server each have an
    exception for it; a test client has none (it gets an empty answer)."""
    if "gunicorn.socket" in environ:
        raise StopIteration()  # gunicorn's signal that the socket was handled
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("Werkzeug/"):
        raise ConnectionError("the WebSocket session owns the socket")  # dropped quietly


def answer_upgraded(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """`after_upgrade()`'s answer as a plain WSGI call, for a request Flask never saw
    (`wsapp.fastpath`): no Response object to build per handshake."""
    _leave_the_socket(environ)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", "0")])
    return []


_after_upgrade: type[Response] | None = None


def after_upgrade() -> Response:
    """The WSGI answer once the socket has been taken over: the server must not touch it."""
    global _after_upgrade
    if _after_upgrade is None:
        from flask import Response

        class AfterUpgrade(Response):
            def __call__(self, environ: Any, start_response: Any) -> Any:
                _leave_the_socket(environ)
                return super().__call__(environ, start_response)  # a test client: an empty answer

        _after_upgrade = AfterUpgrade
    return _after_upgrade()  # one per request: after_request hooks may change it
