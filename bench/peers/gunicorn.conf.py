"""gunicorn settings for the peer apps (so they do not pick up wsapp's ./gunicorn.conf.py).

    gunicorn -c bench/peers/gunicorn.conf.py bench.peers.flask_sock_app:app
"""

bind = "127.0.0.1:0"
workers = 1
worker_class = "gevent"
worker_connections = 20000
graceful_timeout = 3
loglevel = "info"
control_socket_disable = True
