"""What an app adds to its connections: frame handlers, the room rule, connect and
disconnect hooks. `WSApp` fills an `AppHooks` (`@ws.on`, `@ws.authorize_join`,
`@ws.on_connect`, `@ws.on_disconnect`); the layers below (`session`, `chat`, `resume`)
read it through the app's `Service`, so nothing below `extension.py` knows `WSApp`.
Registration happens at import and set-up time, before any connection: no lock.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .auth import Identity

# the hooks take a `wsapp.session.Connection` (typed Any here: the session module is above
# this one, since it reads the hooks through the `Service`)
FrameHandler = Callable[[Any, dict[str, Any]], "int | None"]
ConnectionHook = Callable[[Any], Any]
JoinRule = Callable[[Identity, str], bool]


@dataclass
class AppHooks:
    frame_handlers: dict[str, FrameHandler] = field(default_factory=dict)
    connect_hooks: list[ConnectionHook] = field(default_factory=list)
    disconnect_hooks: list[ConnectionHook] = field(default_factory=list)
    join_rule: JoinRule | None = None
    rooms_claim: str = ""  # WSAPP_ROOMS_CLAIM, set by `WSApp.init_app`

    def on(self, frame_type: str) -> Callable[[FrameHandler], FrameHandler]:
        """Register `f(conn, frame) -> int | None` for chat frames of `frame_type`."""

        def decorator(f: FrameHandler) -> FrameHandler:
            self.frame_handlers[frame_type] = f
            return f

        return decorator

    def may_join(self, identity: Identity, room: str) -> bool:
        """The room rule: the `authorize_join` hook, else the `WSAPP_ROOMS_CLAIM` claim
        (room names or fnmatch patterns; admins may join any room), else any room."""
        if self.join_rule is not None:
            return bool(self.join_rule(identity, room))
        claim = self.rooms_claim
        if not claim or identity.is_admin:
            return True
        allowed = identity.claims.get(claim)
        if isinstance(allowed, str):
            allowed = [allowed]
        if not isinstance(allowed, list):
            return False
        return any(isinstance(p, str) and fnmatch.fnmatchcase(room, p) for p in allowed)
