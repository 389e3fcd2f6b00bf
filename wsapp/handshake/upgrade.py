"""The one upgrade every handshake path runs: checks, slot, 101, session; or the refusal.

Flask's view (`WSApp.handshake`), the fast path (`wsapp.handshake.fast`, no Flask
request) and the early path (`wsapp.handshake.early`, before gunicorn's parser) all call
`Upgrader.upgrade` with a `HandshakeRequest`; so the checks, their order, the slot, the
101 and the session are the same whichever path a handshake takes. `refused` is the one
answer to a refusal: a log line, the metric, the JSON body.

The upgrader owns the slot between `Registry.reserve` and the session greenlet's start;
from then on the session greenlet owns the socket and its link releases the slot,
however the greenlet ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
from flask import Response

from ..errors import HandshakeRejected, WsappError, http_error_response
from ..http.demo import host_is_loopback, loopback_message
from ..proxy import client_address
from ..registry import Slot
from ..service import Service
from . import takeover
from .checks import Accepted, check_handshake, switching_protocols
from .request import HandshakeRequest

log = logging.getLogger("wsapp")

# run_session(sock, accepted, route, handler, args, kwargs, resume): the connection's life
SessionRunner = Callable[..., None]


class Upgrader:
    """One per app. `run_session` runs a connection from its 101 to its end (in a greenlet
    this class spawns)."""

    def __init__(self, service: Service, run_session: SessionRunner) -> None:
        self.service = service
        self.run_session = run_session

    def upgrade(
        self,
        handler: Callable[..., Any],
        route: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        req: HandshakeRequest,
        *,
        via: str = "flask",
        peeked: int = 0,
    ) -> None:
        """The handshake on `req`: every check, the slot, the 101, the session; the caller
        then answers the WSGI request as one whose socket was taken. `via` names the path
        (the `wsapp_upgrades` metric); `peeked`: bytes of the request still unread in the
        kernel (the early path only peeked), consumed before the 101. Raises `WsappError`
        (a refusal, for the caller to answer with `refused`) or `takeover.UnsupportedServer`,
        both before anything is reserved or written; touches no Flask context."""
        service = self.service
        settings = service.settings
        headers = req.headers
        if settings.generated_secret and not host_is_loopback(headers.get("Host")):
            raise HandshakeRejected("host_not_allowed", loopback_message(headers.get("Host")))
        if service.registry.draining:
            raise HandshakeRejected("shutting_down")
        accepted = check_handshake(
            method=req.method,
            headers=headers,  # case-insensitive .get()
            query=req.args,
            cookies=req.cookies,
            settings=settings,
        )
        raw = takeover.cooperative_socket(req.environ)
        if raw is None:
            raise takeover.UnsupportedServer()
        client_id = accepted.identity.client_id
        slot = service.registry.reserve(client_id, elsewhere=service.hub.connections_elsewhere(client_id))
        service.metrics.connection_slots.inc()
        remote = client_address(req.remote_addr or "", headers.get("X-Forwarded-For"), settings.trusted_proxies)
        accepted = dataclasses.replace(accepted, remote_addr=remote)
        try:
            sock = takeover.take_over(raw, switching_protocols(accepted), unread=peeked)
        except OSError as exc:
            self._release(slot)
            log.info("upgrade failed client=%s addr=%s: %s", client_id, remote, exc)
            return
        except BaseException:
            self._release(slot)
            raise
        service.metrics.upgrades[via].inc()
        resume = req.args.get("resume") == "1"  # hold broadcast/direct until the `resume` frame
        self._start(sock, accepted, route, handler, args, kwargs, resume, slot)

    def _start(
        self,
        sock: socket.socket,
        accepted: Accepted,
        route: Any,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        resume: bool,
        slot: Slot,
    ) -> None:
        session = gevent.spawn(self.run_session, sock, accepted, route, handler, args, kwargs, resume)
        session.link(functools.partial(self._release_after, slot))  # however the greenlet ends

    def _release_after(self, slot: Slot, _session: gevent.Greenlet[Any, Any]) -> None:
        """The session greenlet's link (a partial, not a closure: kept per connection)."""
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        if slot.release():
            self.service.metrics.connection_slots.dec()

    def refused(self, err: WsappError, req: HandshakeRequest) -> Response:
        """One line per refused handshake: status, code, reason and the client's address;
        the JSON answer.

        The path never carries the query string (where `?token=` lives); every value is
        escaped and any token redacted by the service's `SafeLogFilter`."""
        settings = self.service.settings
        if isinstance(err, HandshakeRejected):
            self.service.metrics.handshakes_refused.labels(err.code).inc()
        addr = client_address(req.remote_addr or "", req.headers.get("X-Forwarded-For"), settings.trusted_proxies)
        log.info(
            "refused %s %s status=%d error=%s addr=%s reason=%s",
            req.method,
            req.path,
            err.status,
            err.code,
            addr,
            err.message,
        )
        return http_error_response(err)
