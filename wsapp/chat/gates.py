"""A connection's held streams (`registry.Gate`s) from the moment they are held to the
moment they are released: `hold_streams` (a `?resume=1` connection, before its first
frame), `gate` (a room held just before a resume joins it again), `open_gates` (released
without a replay), `release` (the session's end). The replay itself is `wsapp.chat.resume`'s.

Bounds: what a connection's gates hold, all its streams together, is bounded like its
send queue (`WSAPP_SEND_QUEUE` frames, `WSAPP_SEND_QUEUE_BYTES` bytes, `registry.Held`);
past it a gate has overflowed and the resume reads the history again. A `?resume=1`
connection has `WSAPP_RESUME_TIMEOUT` seconds to send `resume`; then (as when another
frame comes first) its held streams are released without a replay: what they hold goes
out in order and they are live, or, if one overflowed, the connection is closed
`1008 "resume needed"` (what it missed is in the history: it resumes on its next
connection).

Ownership: `peer.gates` is written by the connection's own greenlet (the session's
set-up and end, the resume) and by the resume timer, which acts only while the gates
are still `waiting` for the `resume` frame (a parsed `resume` frame ends that before
its first switch); the delivering greenlets only add to a gate (`registry.deliver`).
"""

from __future__ import annotations

import logging

import gevent

from ..errors import CloseCode
from ..history import stream_broadcast, stream_direct
from ..registry import Gate, Held, Peer

log = logging.getLogger("wsapp.chat.resume")

OVERFLOW_REASON = "resume needed"  # the 1008 of a held stream released without a replay, overflowed


def hold_streams(peer: Peer, timeout_s: float) -> None:
    """Hold a `?resume=1` connection's broadcast and direct streams, within its send
    queue's bounds, until its `resume` frame, another frame, or `timeout_s` seconds."""
    ws = peer.ws
    budget = Held(ws.max_queue, ws.max_queue_bytes)
    budget.waiting = True
    peer.gates = {stream_broadcast(): Gate(budget=budget), stream_direct(peer.client_id): Gate(budget=budget)}
    budget.timer = gevent.spawn_later(timeout_s, _timed_out, peer, budget, timeout_s)


def _timed_out(peer: Peer, budget: Held, timeout_s: float) -> None:
    """The resume timer: no `resume` frame came in time, so the held streams go live."""
    budget.timer = None
    if not budget.waiting or not peer.gates:
        return
    budget.waiting = False
    closed = open_gates(peer)
    log.info(
        "resume timeout client=%s conn=%s: no resume frame within %gs, held streams %s",
        peer.client_id,
        peer.conn_id,
        timeout_s,
        f'overflowed: closed 1008 "{OVERFLOW_REASON}"' if closed else "released",
    )


def stop_waiting(peer: Peer) -> None:
    """The `?resume=1` gates are no longer waiting for the `resume` frame: no timer."""
    for gate in (peer.gates or {}).values():
        budget = gate.budget
        budget.waiting = False
        if budget.timer is not None:
            budget.timer.kill(block=False)  # not started yet: it never runs (no switch here)
            budget.timer = None
        return  # one budget per connection


def release(peer: Peer) -> None:
    """The session is over: its gates and resume timer go (nothing will read them)."""
    stop_waiting(peer)
    peer.gates = None


def gate(peer: Peer, stream: str, limit: int, max_bytes: int) -> Gate:
    """A new closed gate for `stream`, sharing the bound of the connection's other gates."""
    gates = peer.gates if peer.gates is not None else {}
    peer.gates = gates
    budget = next(iter(gates.values())).budget if gates else Held(limit, max_bytes)
    gate = gates[stream] = Gate(budget=budget)
    return gate


def open_gates(peer: Peer) -> bool:
    """Release every held stream without a replay (a client that asked for `?resume=1`
    and then sent another frame first, a `resume` that left the stream out, the resume
    timeout): the held frames go out in order and the stream is live. If a held stream
    overflowed (what it missed is only in the history), nothing more is sent: the
    connection is closed 1008 "resume needed" and True returned."""
    stop_waiting(peer)
    gates = peer.gates or {}
    held = [(stream, gate) for stream, gate in gates.items() if gate.floor < 0]  # open ones only drop dups
    if any(gate.overflowed for _stream, gate in held):
        for stream, gate in held:
            gate.take()
            del gates[stream]
        if not gates:
            peer.gates = None
        peer.ws.close(CloseCode.POLICY_VIOLATION, OVERFLOW_REASON)
        return True
    for stream, gate in held:
        for _offset, frame in gate.take():
            peer.ws.send_frame(frame)
        del gates[stream]
    if not gates:
        peer.gates = None
    return False
