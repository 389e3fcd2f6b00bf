"""The Redis backplane: `bus` (the connection factory, key layout, wire format and Lua
scripts, shared with `wsapp.emitter`), `subscriber` (the channels a node listens to)
and `backplane` (the node: presence, liveness, delivery and history across workers and
hosts).

This `__init__` imports nothing (nor does it shadow the `redis` library: every module
here imports it absolutely).
"""
