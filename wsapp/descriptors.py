"""Descriptor exhaustion: sockets that have not completed a handshake are shed, oldest first.

Each socket holds a descriptor from the moment gunicorn's gevent worker accepts it. With
the soft `RLIMIT_NOFILE` reached (`wsapp.startup` raises it to the hard limit, but the
hard limit may be low too, e.g. systemd's `LimitNOFILE=1024`), `accept()` fails with
`EMFILE` and gevent's server retries after a delay, again and again, while idle sockets
that never send a request hold every descriptor until gunicorn's keep-alive time ends
them: a valid client could not even be accepted (1,100 idle sockets under a 1,024 limit
blocked every handshake for 3 s, "Too many open files" ×11 in the log).

`install(worker, apps)` (from `wsapp.server.post_worker_init`, after
`wsapp.handshake.early`, so it is outermost) wraps the worker's `handle(listener,
client, addr)`, which gunicorn's pool runs once per accepted socket, tracks those
sockets in flight (`InFlight`: accepted, not yet finished nor taken over by a WebSocket
session) in the order they came, and sheds the oldest of them (`shutdown`, so their
greenlets read end-of-file, end quietly and close them):

* proactively, as each socket arrives: when the descriptors in use come within
  `reserve` of the soft limit, as many of the oldest are shed as bring them back under
  `soft - reserve`. In use counts at least every descriptor below the new one (Linux
  hands out the lowest free number) and at least those the worker held at start, the
  sockets in flight and the sessions (`Shedder.in_use`), less those shed and still
  closing. The reserve (`reserve_for`: an eighth of the limit, 4 to 64) is what stays
  free for everything else the worker opens (Redis, files, logs).
* on `EMFILE`/`ENFILE` at `accept()` (a burst accepted before any greenlet ran, or
  descriptors held by something else): the worker's listening socket (`Listener`)
  sheds up to `reserve` of the oldest and raises `DescriptorsShed`, which gevent's hub
  does not print; the server retries the accept after its delay (10 ms), by when the
  shed sockets are closed.

Shed are plain HTTP requests and idle keep-alive connections as much as handshakes not
yet complete: the oldest socket in flight is the one most likely to be idle, and a
client with a token completes its handshake within milliseconds. Established WebSocket
sessions are never shed: a session's descriptor was detached from gunicorn's socket
(`wsapp.handshake.takeover`), and `WSAPP_MAX_CONNECTIONS` bounds them (the worker warns
at start if that many would not fit under its limit). One log line per 10 s at most says how
many were shed. Each connection costs O(1): an insertion and a removal in an ordered
dict, a few additions and comparisons.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import gevent
import gevent.socket

T = TypeVar("T")
Handle = Callable[[Any, Any, Any], None]

LOG_EVERY_S = 10.0
_SHORT = (errno.EMFILE, errno.ENFILE)


def reserve_for(soft: int) -> int:
    """Descriptors kept free below the soft limit: an eighth of it, at least 4, at most 64."""
    return max(4, min(64, soft // 8))


class InFlight(Generic[T]):
    """Items (client sockets) in the order they arrived; the oldest are shed first.

    `add` when accepted, `done` when finished (whether or not it was shed); `shed(n)`
    takes up to `n` of the oldest still waiting and calls `shut` on each: True if it
    shut it (it then counts as `pending` until its `done`), False if there was nothing to
    shut (taken over, already closed: it is dropped without counting). Each item is
    added, shed and done at most once: O(1) per item."""

    def __init__(self, shut: Callable[[T], bool]) -> None:
        self._shut = shut
        self._waiting: OrderedDict[T, None] = OrderedDict()
        self._shed: set[T] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def pending(self) -> int:
        """Shed, and not yet done (their descriptors are not free yet)."""
        return len(self._shed)

    def add(self, item: T) -> None:
        self._waiting[item] = None

    def done(self, item: T) -> None:
        if item in self._waiting:
            del self._waiting[item]
        else:
            self._shed.discard(item)

    def shed(self, n: int) -> int:
        """Shut up to `n` of the oldest waiting items; how many were shut."""
        count = 0
        while count < n and self._waiting:
            item, _ = self._waiting.popitem(last=False)
            if self._shut(item):
                self._shed.add(item)
                count += 1
        return count


def shut(sock: Any) -> bool:
    """Shut a client socket down both ways, if it is still the server's: its greenlet's
    read returns end-of-file (gevent's own `shutdown` would throw EBADF into it, which
    gunicorn logs with a traceback), the handler returns and the server closes it."""
    if sock.closed:  # detached by `take_over` (a session now) or closed already
        return False
    try:
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more: its greenlet is ending anyway
        return False
    return True


class DescriptorsShed(Exception):
    """From `Listener._accept`: out of descriptors, sockets were shed; gevent's server
    retries the accept after its delay. Not printed (the hub's `NOT_ERROR`)."""


class Shedder:
    """One per worker: the sockets in flight and the rule for shedding them."""

    def __init__(
        self,
        soft: int,
        log: Any,
        reserve: int | None = None,
        base: int = 0,
        sessions: Callable[[], int] = lambda: 0,
    ) -> None:
        self.soft = soft
        self.reserve = reserve_for(soft) if reserve is None else reserve
        self.threshold = soft - self.reserve
        self.base = base  # descriptors the worker held before serving (listener, logs, ...)
        self.sessions = sessions  # WebSocket sessions (and slots reserved) of the worker's apps
        self.inflight: InFlight[Any] = InFlight(shut)
        self.log = log
        self.unlogged = 0
        self.next_log = 0.0

    def wrap(self, handle: Handle) -> Handle:
        """`handle` with its client socket tracked while it runs."""

        def tracked(listener: Any, client: Any, addr: Any) -> None:
            self.make_room(client.fileno())
            self.inflight.add(client)
            try:
                handle(listener, client, addr)
            finally:
                self.inflight.done(client)

        return tracked

    def in_use(self, fd: int) -> int:
        """Descriptors in use once those shed are closed, with a new socket as `fd` (not
        yet in flight): at least every one below `fd` (Linux hands out the lowest free
        number) and at least the worker's own, its sockets in flight and its sessions."""
        pending = self.inflight.pending
        return max(fd + 1 - pending, self.base + len(self.inflight) + self.sessions() + 1)

    def make_room(self, fd: int) -> int:
        """A socket was accepted as descriptor `fd`: shed as many as are in use past
        `threshold` (`in_use`)."""
        over = self.in_use(fd) - self.threshold
        return self.shed(over) if over > 0 else 0

    def shed(self, n: int) -> int:
        count = self.inflight.shed(n)
        if count:
            self.unlogged += count
            now = time.monotonic()
            if now >= self.next_log:
                self.next_log = now + LOG_EVERY_S
                self.log.warning(
                    "wsapp: descriptors short (limit %d, %d kept free): shed %d sockets that had not "
                    "completed a handshake, oldest first",
                    self.soft,
                    self.reserve,
                    self.unlogged,
                )
                self.unlogged = 0
        return count

    def out_of_descriptors(self) -> bool:
        """`accept()` failed for want of descriptors: True if waiting can help (sockets
        were shed now, or earlier and are still being closed)."""
        want = self.reserve - self.inflight.pending
        return (want > 0 and self.shed(want) > 0) or self.inflight.pending > 0


class _RawListener(gevent.socket.socket._gevent_sock_class):  # type: ignore[misc]  # gevent: no types
    """The native socket inside `Listener`: gevent's server unwraps its listener to it and
    calls its `_accept` when the listener is readable (in the hub: nothing here blocks)."""

    __slots__ = ("shedder",)

    def _accept(self) -> tuple[int, Any]:
        try:
            return super()._accept()  # type: ignore[no-any-return]
        except OSError as exc:
            shedder: Shedder | None = getattr(self, "shedder", None)
            if exc.errno not in _SHORT or shedder is None or not shedder.out_of_descriptors():
                raise
            raise DescriptorsShed() from None


class Listener(gevent.socket.socket):  # type: ignore[misc]  # gevent ships no type hints
    """The worker's listening socket, whose accept sheds sockets when descriptors are out."""

    _gevent_sock_class = _RawListener

    def __init__(self, sock: Any, shedder: Shedder) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._sock.shedder = shedder


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: no count
        return 0


def install(worker: Any, apps: Iterable[Any] = ()) -> Shedder | None:
    """Track and shed the worker's client sockets (gunicorn's gevent worker, whose `run`
    serves `worker.sockets` with `worker.handle` after `post_worker_init`). `apps`: the
    worker's WSApps (`wsapp.server`'s), whose sessions hold descriptors too."""
    if getattr(worker, "server_class", None) is not None:  # the pywsgi flavour: no `handle`
        return None
    apps = list(apps)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    registries = [ext.service.registry for ext in apps]
    shedder = Shedder(soft, worker.log, base=_open_descriptors(), sessions=lambda: sum(r.held for r in registries))
    listeners = []
    for sock in worker.sockets:
        listeners.append(Listener(sock, shedder))
    worker.sockets = listeners
    worker.handle = shedder.wrap(worker.handle)
    hub = gevent.get_hub()
    if not issubclass(DescriptorsShed, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, DescriptorsShed)
    worker.log.info(
        "wsapp: descriptor limit %d (hard %d): sockets that have not completed a handshake are "
        "shed, oldest first, when fewer than %d are left",
        soft,
        hard,
        shedder.reserve,
    )
    sessions = sum(ext.settings.max_connections for ext in apps)
    room = shedder.threshold - shedder.base
    if sessions > room:
        worker.log.warning(
            "wsapp: WSAPP_MAX_CONNECTIONS allows %d WebSockets in this worker but its descriptor "
            "limit leaves room for about %d: past that, new connections fail at accept (raise "
            "LimitNOFILE, docs/deployment.md)",
            sessions,
            max(0, room),
        )
    return shedder
