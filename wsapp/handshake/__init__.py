"""The WebSocket handshake, from the first bytes of a connection to its 101 or refusal.

`checks` (pure: what a request must pass), `upgrade` (the one upgrade every path runs:
checks, slot, 101, session; and the one refusal answer), `request` (what the upgrade
reads of a request), and the two shortcuts for accepted handshakes, taken only where
`shortcut` finds them indistinguishable from Flask's path: `fast` (no Flask request)
and `early` (before gunicorn's HTTP parser, with `head`, its strict head reader).

This `__init__` imports nothing: gunicorn's master may import the package before the
gevent worker monkey-patches.
"""
