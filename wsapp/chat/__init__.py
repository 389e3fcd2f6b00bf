"""The built-in chat: its frame types (`builtins`: `broadcast`, `direct`, `room`, `join`,
`leave`, `resume`, `refresh`, registered like an app's own), the resume of a reconnecting
client (`resume`) and the held streams it replays (`gates`).

This `__init__` imports nothing: gunicorn's master may import the package before the
gevent worker monkey-patches.
"""
