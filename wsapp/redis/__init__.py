"""The Redis backplane: `connect` (the connection factory), `keys` (key, channel and node
naming, the presence write keys), `wire` (the envelope formats), `liveness` (which nodes
count) and `bus` (the Lua scripts and the operations on the keys), all shared with
`wsapp.emitter`; `subscriber` (the channels a node listens to) and `backplane` (the node:
presence, liveness, delivery and history across workers and hosts).

This `__init__` imports nothing (nor does it shadow the `redis` library: every module
here imports it absolutely).
"""
