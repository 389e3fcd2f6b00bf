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
from types import FrameType
from typing import Any

from gunicorn.glogging import Logger

from .logsafe import SafeLogFilter
from .settings import SettingsError, report_and_exit


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


# ---- a user's app under gunicorn or `flask` (no wsapp config, no wsapp hooks) ----------


def _on_stack(cls: type) -> Any | None:
    """The nearest caller's `self` that is a `cls`, or None."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, cls):
            return obj
        frame = frame.f_back
    return None


def gunicorn_worker() -> Any | None:
    """The gunicorn worker loading the app (`init_app` runs inside its `init_process`),
    else None: a master with `--preload`, `flask`, a script, tests in-process."""
    if "gunicorn.workers.base" not in sys.modules:
        return None
    from gunicorn.workers.base import Worker

    return _on_stack(Worker)


def gunicorn_arbiter() -> Any | None:
    """gunicorn's arbiter loading the app (the master with `--preload`, or a worker's copy
    of it, forked), else None."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    from gunicorn.arbiter import Arbiter

    return _on_stack(Arbiter)


def under_gunicorn_master() -> bool:
    """The app is being loaded by gunicorn's master itself (`--preload`)."""
    return gunicorn_worker() is None and gunicorn_arbiter() is not None


def under_flask_command() -> bool:
    """The app is being loaded by the `flask` command (`flask --app myapp run|token|...`)."""
    if "flask.cli" not in sys.modules:
        return False
    import click
    from flask.cli import ScriptInfo

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.find_object(ScriptInfo) is not None


APP_LOAD_ERROR = 4  # gunicorn.arbiter.Arbiter.APP_LOAD_ERROR: the master stops instead of respawning


def stop_on_bad_settings(exc: SettingsError) -> None:
    """For `WSApp.init_app`'s `SettingsError` in a user's own app: under gunicorn or the
    `flask` command, one line per problem on stderr and an exit, never a traceback.
    Anywhere else (a script, tests in-process) it returns and the caller re-raises.

    The exit status is 2, except in a gunicorn worker: a worker's status is read by its
    master, which respawns a worker that exits 2 forever; exiting 4 (gunicorn's "App
    failed to load") stops the master instead, with status 4 (gunicorn's own choice; the
    master cannot be made to exit 2 from a worker). With `--preload`, or with wsapp's
    gunicorn.conf.py, the master reads the settings itself and exits 2."""
    if gunicorn_worker() is not None:
        report_and_exit(exc, APP_LOAD_ERROR)
    if under_gunicorn_master() or under_flask_command():
        report_and_exit(exc)
