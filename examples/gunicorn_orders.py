"""gunicorn settings for examples/orders.py: the gevent worker, and wsapp's drain."""

worker_class = "gevent"
bind = "127.0.0.1:8000"
graceful_timeout = 12  # longer than WSAPP_SHUTDOWN_TIMEOUT (10 s by default)

from wsapp.server import on_starting, post_worker_init  # noqa: E402, F401
