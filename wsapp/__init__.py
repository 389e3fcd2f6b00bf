"""wsapp: real-time WebSockets for Flask on gevent, built to run in production.

The public API, in one import (see docs/extending.md)::

    from wsapp import WSApp, Connection, Identity, FrameError, blueprint

    app = Flask(__name__)
    ws = WSApp(app)                    # raises SettingsError naming every bad setting
    app.register_blueprint(blueprint(ws))  # the HTTP API, /healthz, /readyz, /metrics, /wsapp.js

- `WSApp`: the Flask extension (`@ws.route`, `@ws.on`, `ws.send`, `ws.test_client`)
- `Connection`: what a route's handler gets; `Identity`: who the token says it is
- `FrameError`: raise it in a frame handler to answer an `error` frame
- `blueprint(ws, static_folder=None, name="wsapp")`: the site (`wsapp.site.blueprint`)
- `Emitter`: pushes from a process that serves nothing (needs the `redis` extra)
- `on_starting`, `post_worker_init`: gunicorn hooks (the drain; `wsapp.server`)
- `SettingsError`, `Settings`: the settings' error and the validated settings
- `Sock`: the WebSocket route table, for an app that registers routes itself
- `CloseCode`: the close codes wsapp uses

Every name is imported on first use (a module `__getattr__`): gunicorn's master imports
`wsapp.server` for the hooks before the gevent worker monkey-patches, so importing
`wsapp` must not pull in Flask, ssl and friends; and `Emitter` needs redis, which a
deployment without `WSAPP_REDIS_URL` does not install. `wsapp.testing` (the test client)
and `wsapp.settings` are modules of their own.

As a library, wsapp logs to the `wsapp` logger and its children, which have a
`NullHandler` and no level: the app's logging set-up decides what is shown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time, `__getattr__` below
    from .auth import Identity
    from .emitter import Emitter
    from .errors import CloseCode
    from .extension import WSApp
    from .protocol import FrameError
    from .server import on_starting, post_worker_init
    from .session import Connection
    from .settings import Settings, SettingsError
    from .site import blueprint
    from .transport import Sock

__all__ = [
    "CloseCode",
    "Connection",
    "Emitter",
    "FrameError",
    "Identity",
    "Settings",
    "SettingsError",
    "Sock",
    "WSApp",
    "blueprint",
    "on_starting",
    "post_worker_init",
]

logging.getLogger("wsapp").addHandler(logging.NullHandler())

# public name -> (module, attribute); every entry is in __all__ and the other way round
_EXPORTS = {
    "WSApp": ("extension", "WSApp"),
    "Connection": ("session", "Connection"),
    "Identity": ("auth", "Identity"),
    "FrameError": ("protocol", "FrameError"),
    "CloseCode": ("errors", "CloseCode"),
    "Emitter": ("emitter", "Emitter"),
    "on_starting": ("server", "on_starting"),
    "post_worker_init": ("server", "post_worker_init"),
    "blueprint": ("site", "blueprint"),
    "Settings": ("settings", "Settings"),
    "SettingsError": ("settings", "SettingsError"),
    "Sock": ("transport", "Sock"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        module, attr = _EXPORTS[name]
        value = getattr(import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value  # once: the next lookup is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
