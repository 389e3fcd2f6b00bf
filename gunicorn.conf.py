"""gunicorn settings for wsapp, all taken from the WSAPP_* environment (see the README).

`gunicorn -c gunicorn.conf.py app:app`. Settings are validated here, before any worker
starts, so a bad value stops the master with a message naming the variable; so does a
demo secret that is not private (see `wsapp.demo_secret`).

This file runs in the master: it imports nothing that imports Flask (the gevent worker
monkey-patches after the fork, and modules imported before that would stay unpatched).
"""

import atexit
import os
import shutil
import tempfile

from wsapp.demo_secret import instance_folder, load_or_create_secret
from wsapp.server import gunicorn_timeouts
from wsapp.settings import Settings, SettingsError, report_and_exit

try:
    _settings = Settings.from_env()
    if _settings.demo_mode:  # made here, once, before the workers that read it
        load_or_create_secret(instance_folder(_settings))
except SettingsError as exc:
    report_and_exit(exc)

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "gevent"
# HTTP requests in flight; WebSocket sessions leave gunicorn's pool after the 101
worker_connections = _settings.worker_connections
# SIGTERM: the app closes its clients within WSAPP_SHUTDOWN_TIMEOUT (wsapp.server's drain)
graceful_timeout, keepalive = gunicorn_timeouts(_settings.shutdown_timeout_s)
timeout = 30
# never %(r)s or %(q)s: the request line carries ?token= when a client uses it
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
errorlog = "-"
loglevel = "info"
# both logs escape control characters and redact tokens (gunicorn's error log shows a
# malformed request line whole, query string included)
logger_class = "wsapp.startup.SafeLogger"
# gunicorn's control socket is one per user by default: several instances (tests, two
# "hosts" on one machine) would fight over it, and wsapp does not use it
control_socket_disable = True

# prometheus-client's multiprocess mode: each worker writes its metrics to this folder
# and /metrics merges them. It must be set before any worker imports prometheus_client.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics_dir = tempfile.mkdtemp(prefix="wsapp-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    _master_pid = os.getpid()
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(_metrics_dir, ignore_errors=True))


# the drain on SIGTERM/SIGINT and the descriptor limit: the one line a gunicorn config of
# one's own needs too (docs/extending.md)
from wsapp.server import on_starting, post_worker_init  # noqa: E402, F401, I001


def child_exit(server, worker):
    from wsapp import metrics

    metrics.mark_dead(worker.pid)
