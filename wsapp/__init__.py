"""wsapp: real-time WebSockets for Flask on gevent, built to run in production.

`create_app` lives in `wsapp.factory`; it is imported lazily here so that
`gunicorn.conf.py` can read `wsapp.settings` before the gevent worker monkey-patches
(importing Flask, ssl and friends first would leave them unpatched).
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .factory import create_app

        return create_app
    raise AttributeError(name)
