"""wsapp: real-time WebSockets for Flask on gevent, built to run in production.

The public API (see docs/extending.md)::

    from wsapp import WSApp, Connection, Identity, FrameError

Imported lazily: `gunicorn.conf.py` reads `wsapp.settings` and `wsapp.server` in
gunicorn's master, before the gevent worker monkey-patches (importing Flask, ssl and
friends first would leave them unpatched).

As a library, wsapp logs to the `wsapp` logger and its children, which have a
`NullHandler` and no level: the app's logging set-up decides what is shown.
"""

import logging
from typing import Any

__all__ = ["Connection", "FrameError", "Identity", "Sock", "WSApp"]

logging.getLogger("wsapp").addHandler(logging.NullHandler())

_EXPORTS = {
    "WSApp": ("extension", "WSApp"),
    "Connection": ("session", "Connection"),
    "Identity": ("auth", "Identity"),
    "FrameError": ("protocol", "FrameError"),
    "Sock": ("transport", "Sock"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        module, attr = _EXPORTS[name]
        return getattr(import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(name)
