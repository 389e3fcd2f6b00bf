"""The HTTP side an app may register (`wsapp.site` assembles it): `api` (send, broadcast,
clients, health, metrics) and `demo` (demo mode's token endpoint and the `token`
command).

This `__init__` imports nothing: gunicorn's master may import the package before the
gevent worker monkey-patches.
"""
