"""A development server with WebSockets: `flask --app myapp wsapp run --reload`.

`flask run` serves no WebSocket (its threaded server hands over no socket a greenlet can
keep: 501 `unsupported_server`). `flask ... wsapp run` serves the same app with
Werkzeug's development server in a gevent-patched process: its threads are greenlets,
its `werkzeug.socket` a gevent socket, so every handshake takes the app's normal Flask
path (`wsapp.handshake.takeover`). `--reload` is Werkzeug's reloader (a change to a
Python file of the app restarts the serving process); `--debug` Flask's debugger.

gevent must patch the standard library before the app (and Flask) is imported, and the
`flask` command has imported the app by the time one of its commands runs: the command
therefore starts `python -m wsapp.devserver` with the same app, which patches first and
imports the app after. For development only: production is gunicorn's gevent worker.

`WSApp.init_app` registers the `wsapp` command group on `app.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import click

STARTED = "wsapp dev server (pid %d): serving WebSockets on http://%s:%d/ (development only)"


@click.group("wsapp")
def cli() -> None:
    """wsapp's commands."""


@cli.command("run")
@click.option("--host", "-h", default="127.0.0.1", show_default=True, help="The interface to bind to.")
@click.option("--port", "-p", default=5000, show_default=True, type=int, help="The port to bind to.")
@click.option("--reload/--no-reload", default=False, help="Restart when a Python file of the app changes.")
@click.option("--debug/--no-debug", default=False, help="Flask's debug mode (the debugger on errors).")
@click.option(
    "--extra-files", multiple=True, type=click.Path(), help="More files that restart the server when they change."
)
@click.option(
    "--exclude-patterns", multiple=True, help="fnmatch patterns of files whose change restarts nothing (repeatable)."
)
def run_command(
    host: str, port: int, reload: bool, debug: bool, extra_files: tuple[str, ...], exclude_patterns: tuple[str, ...]
) -> None:
    """Serve the app with WebSockets for development (gevent; Werkzeug's reloader)."""
    from flask.cli import ScriptInfo

    info = click.get_current_context().find_object(ScriptInfo)
    argv = [sys.executable, "-m", "wsapp.devserver", "--host", host, "--port", str(port)]
    if info is not None and info.app_import_path:
        argv += ["--app", info.app_import_path]
    argv += ["--reload"] if reload else []
    argv += ["--debug"] if debug else []
    for path in extra_files:
        argv += ["--extra-file", path]
    for pattern in exclude_patterns:
        argv += ["--exclude-pattern", pattern]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # a fresh process, patched before the app is imported


def _request_handler() -> type:
    """Werkzeug's request handler, told that a connection taken over by a WebSocket (the
    `ConnectionError` of `wsapp.handshake.takeover`) is no longer its own: without this
    its keep-alive loop reads the next request from a socket it no longer has (EBADF)."""
    from werkzeug.serving import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
            self.close_connection = True

    return Handler


def serve(
    app_path: str | None,
    host: str,
    port: int,
    reload: bool,
    debug: bool,
    extra: list[str],
    exclude: list[str] | None = None,
) -> None:
    """Patch, import the app the way `flask --app` finds it, serve it (and reload)."""
    from gevent import monkey

    monkey.patch_all()
    from flask.cli import ScriptInfo
    from werkzeug.serving import is_running_from_reloader, run_simple

    from .settings import SettingsError, report_and_exit

    app: Any = None  # the reloader's watching process serves nothing: it needs no app
    if not reload or is_running_from_reloader():
        try:
            app = ScriptInfo(app_import_path=app_path).load_app()
        except SettingsError as exc:  # the reloader's process exits with the same status
            report_and_exit(exc)
        if debug:
            app.debug = True
        # the process that serves (the reloader's child, or the only one): one line a
        # developer (or a test) can tell a restart by
        sys.stderr.write(STARTED % (os.getpid(), host, port) + "\n")
        sys.stderr.flush()
    run_simple(
        host,
        port,
        app,
        use_reloader=reload,
        use_debugger=debug,
        threaded=True,  # a thread per request: a greenlet, once patched
        extra_files=extra or None,
        exclude_patterns=exclude or None,
        reloader_type="stat",
        request_handler=_request_handler(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsapp.devserver", description=__doc__.split("\n")[0])
    parser.add_argument("--app", default=None, help="the app, as `flask --app` takes it (default: app.py or wsgi.py)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--extra-file", action="append", default=[])
    parser.add_argument("--exclude-pattern", action="append", default=[])
    args = parser.parse_args(argv)
    serve(args.app, args.host, args.port, args.reload, args.debug, args.extra_file, args.exclude_pattern)
    return 0


if __name__ == "__main__":
    sys.exit(main())
