"""What the handshake reads of a request: Flask's `request`, or a WSGI environ read the
way Werkzeug reads it (`EnvironRequest`, for the shortcuts that build no Flask request)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from werkzeug.datastructures import MultiDict
from werkzeug.http import parse_cookie

from .head import environ_key


class HandshakeRequest(Protocol):
    """What `WSApp.upgrade` reads of a request: Flask's `request` has it all."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Any: ...  # a case-insensitive Mapping[str, str]
    @property
    def args(self) -> Any: ...  # Mapping[str, str], first value per name
    @property
    def cookies(self) -> Any: ...
    @property
    def environ(self) -> dict[str, Any]: ...
    @property
    def remote_addr(self) -> str | None: ...
    @property
    def path(self) -> str: ...


class Fallback(Exception):
    """Something the shortcut does not handle: let Flask take the request."""


class EnvironHeaders(Mapping[str, str]):
    """Request headers read straight from the environ: `get` is one dict lookup (Werkzeug's
    raises and catches a KeyError for a header that is absent)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        return str(self._environ[environ_key(name)])

    def get(self, name: str, default: Any = None) -> Any:
        return self._environ.get(environ_key(name), default)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").title()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.replace("_", "-").title()

    def __len__(self) -> int:
        return sum(1 for _ in self)


class EnvironRequest:
    """`HandshakeRequest` over a WSGI environ; query and cookies parsed only if asked for,
    the way Werkzeug parses them."""

    __slots__ = ("_args", "_cookies", "environ", "headers", "method")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.headers = EnvironHeaders(environ)
        self._args: MultiDict[str, str] | None = None
        self._cookies: Mapping[str, str] | None = None

    @property
    def remote_addr(self) -> str | None:
        return self.environ.get("REMOTE_ADDR")

    @property
    def path(self) -> str:
        return str(self.environ.get("PATH_INFO", ""))

    @property
    def args(self) -> MultiDict[str, str]:
        if self._args is None:
            from urllib.parse import parse_qsl

            qs = str(self.environ.get("QUERY_STRING", ""))
            if not qs:
                self._args = MultiDict()
                return self._args
            try:  # as werkzeug.sansio.request.Request.args
                pairs = parse_qsl(qs.encode("latin1").decode(), keep_blank_values=True, errors="werkzeug.url_quote")
            except Exception:  # noqa: BLE001 - Flask's path decides what such a query is worth
                raise Fallback from None
            self._args = MultiDict(pairs)
        return self._args

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            raw = self.environ.get("HTTP_COOKIE")
            try:
                self._cookies = parse_cookie(raw) if raw else {}
            except Exception:  # noqa: BLE001
                raise Fallback from None
        return self._cookies
