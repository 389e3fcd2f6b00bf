"""What gunicorn's master does before any worker exists (gunicorn.conf.py's hooks).

Descriptor limit, SIGINT as a graceful stop, and log lines with no token and no control
character in gunicorn's own error and access logs. Workers inherit the first two from
the master at fork. No Flask here: the master must not import what the gevent worker
monkey-patches later.
"""

from __future__ import annotations

import logging
import resource
import sys
from typing import Any

from gunicorn.glogging import Logger

from .logsafe import SafeLogFilter


def graceful_sigint(arbiter: Any) -> None:
    """Make gunicorn's master treat SIGINT like SIGTERM (a graceful stop: its workers get
    SIGTERM and `WSAPP_SHUTDOWN_TIMEOUT` to drain) instead of its quick shutdown.

    The master looks its handlers up by name on the instance (`handle_int`) for each
    signal it dequeues; a second SIGINT while it waits for the workers still asks for
    the quick shutdown."""
    arbiter.handle_int = arbiter.handle_term


def raise_descriptor_limit() -> tuple[int, int] | None:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; (old, new) if it changed.

    Each WebSocket holds a descriptor; under systemd's default soft limit of 1024, a
    thousand idle sockets would make every new handshake fail at accept()."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # e.g. an infinite hard limit the kernel caps lower
        return None
    return soft, hard


RAISED = "wsapp: descriptor limit (RLIMIT_NOFILE) raised from %d to %d"


def raise_descriptor_limit_under_gunicorn() -> tuple[int, int] | None:
    """For `WSApp.init_app`: raise the limit in a gunicorn process (its arbiter module is
    loaded: the master with `--preload`, else the worker loading the app), and say so in
    gunicorn's error log. With wsapp's hooks the master has raised it already (a no-op
    here); this covers a plain `gunicorn -k gevent myapp:app`. Anywhere else (`flask
    run`, a script, tests in-process) nothing changes."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    raised = raise_descriptor_limit()
    if raised is not None:
        logging.getLogger("gunicorn.error").info(RAISED, *raised)
    return raised


class SafeLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's logger with a `SafeLogFilter` on every handler of its error and access
    logs: a malformed request line carrying `?token=` (which gunicorn logs whole, in its
    error log) shows `token=[redacted]`, and no request value can forge a line."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not any(isinstance(f, SafeLogFilter) for f in handler.filters):
                    handler.addFilter(SafeLogFilter())
