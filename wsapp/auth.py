"""Tokens: where a request carries one, whether it is valid, and minting new ones.

Pure functions of values: they take headers, query and cookies as mappings and return
`Identity` or raise `HandshakeRejected`. The accepted algorithms come from settings,
never from the token's header, so `alg: none` and HS/RS confusion cannot pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from .errors import HandshakeRejected
from .settings import Settings

MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class FoundToken:
    token: str
    source: str  # "subprotocol" | "header" | "query" | "cookie"
    # the value the 101 response must select in Sec-WebSocket-Protocol, if any
    subprotocol: str | None = None


@dataclass(frozen=True)
class Identity:
    client_id: str
    is_admin: bool
    expires_at: float  # unix seconds
    claims: Mapping[str, Any]


def offered_subprotocols(header: str | None) -> list[str]:
    if not header:
        return []
    return [p.strip() for p in header.split(",") if p.strip()]


def find_token(headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]) -> FoundToken | None:
    """The token of a request, first match wins (subprotocol, Bearer, ?token=, cookie).

    A browser cannot set headers on `new WebSocket()`, so it offers the raw token as a
    subprotocol (`[token]`, selected back as is) or the pair `["bearer", token]`
    (`bearer` is selected). Any other offered protocol is not ours and is ignored.
    `bearer` offered last, with no token after it, is a client that meant to send one
    and did not: 401 `missing_token` saying so, whatever else the request carries.
    """
    offered = offered_subprotocols(headers.get("Sec-WebSocket-Protocol"))
    if offered:
        lowered = [p.lower() for p in offered]
        if "bearer" in lowered:
            i = lowered.index("bearer")
            if i + 1 >= len(offered):
                raise HandshakeRejected("missing_token", "the 'bearer' subprotocol must be followed by the token")
            return FoundToken(offered[i + 1], "subprotocol", offered[i])
        for proto in offered:
            if _looks_like_jwt(proto):
                return FoundToken(proto, "subprotocol", proto)
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return FoundToken(value.strip(), "header")
    if query.get("token"):
        return FoundToken(query["token"], "query")
    if cookies.get("access_token"):
        return FoundToken(cookies["access_token"], "cookie")
    return None


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("ey")


def _verification_key(settings: Settings) -> str:
    return settings.jwt_public_key or settings.jwt_secret


class _PreparedKeys(Algorithm):
    """One of PyJWT's algorithms, remembering the keys it has prepared.

    PyJWT prepares the key on every decode: for HMAC it checks that the secret is not a
    PEM, SSH, DER or JWK key (two DER parses in `cryptography` and a JSON parse), for
    RS/ES/EdDSA it parses the PEM: about a third of a token's verification, for a key
    that is the settings' own and the same on every handshake. A key is prepared once
    per algorithm (a key the checks refuse is not kept: it raises every time, as
    before); signature, claims and every other rule stay PyJWT's."""

    _MAX_KEYS = 16  # keys come from settings (one or two per app), never from a token

    def __init__(self, alg: Algorithm) -> None:
        self._alg = alg
        self._prepared: dict[str | bytes, Any] = {}

    def prepare_key(self, key: Any) -> Any:
        if isinstance(key, (str, bytes)):
            prepared = self._prepared.get(key)
            if prepared is not None:
                return prepared
        prepared = self._alg.prepare_key(key)
        if isinstance(key, (str, bytes)) and len(self._prepared) < self._MAX_KEYS:
            self._prepared[key] = prepared
        return prepared

    def check_key_length(self, key: Any) -> str | None:
        return self._alg.check_key_length(key)

    def sign(self, msg: bytes, key: Any) -> bytes:
        return self._alg.sign(msg, key)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return self._alg.verify(msg, key, sig)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError


def _decoder() -> jwt.PyJWT:
    """A PyJWT of our own (PyJWT's defaults) whose algorithms keep their prepared keys."""
    decoder = jwt.PyJWT()
    jws = decoder._jws
    for name in list(jws.get_algorithms()):
        alg = jws.get_algorithm_by_name(name)
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, _PreparedKeys(alg))
    return decoder


_jwt = _decoder()


class VerifiedTokens:
    """Identities of tokens that passed `verify_token` recently, until their `exp`.

    A reconnect storm brings back the tokens a worker verified minutes ago; PyJWT's
    decode (base64, JSON, HMAC or RSA, claims) was a tenth of a handshake (docs/performance.md).
    Verification is a function of the token's exact text and the settings that verify
    it (key, algorithms, issuer, audience, client-id claim: part of the cache's key), so
    for a token seen before only what depends on the clock can change, and it is checked
    again on every hit: `exp` exactly as PyJWT checks it (`int(exp) <= now - leeway`:
    expired, the entry dropped). `nbf` and `iat` only ever become true with time, and a
    token is stored only once they were. Refusals are never stored. wsapp has no token
    revocation list; one added later must be checked before this cache.

    Bounds: `MAX_ENTRIES` per verifying configuration (the oldest stored is dropped
    first), tokens up to `MAX_CACHED_CHARS` only, `MAX_CONFIGS` configurations (one per
    app in practice). An entry holds the token's text and its `Identity`, which the
    connection holds anyway: about 0.5 KiB for a typical 250-character token. The
    worker's greenlets share it; no lock (no yield inside `get`/`put`)."""

    MAX_ENTRIES = 10_000
    MAX_CACHED_CHARS = 2048
    MAX_CONFIGS = 8

    def __init__(self) -> None:
        self._by_config: dict[tuple[Any, ...], dict[str, Identity]] = {}

    @staticmethod
    def config(settings: Settings) -> tuple[Any, ...]:
        return (
            _verification_key(settings),
            settings.jwt_algorithms,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.jwt_client_id_claim,
        )

    def get(self, token: str, settings: Settings, now: float) -> Identity | None:
        entries = self._by_config.get(self.config(settings))
        identity = entries.get(token) if entries is not None else None
        if identity is None:
            return None
        if int(identity.expires_at) <= now - settings.jwt_leeway_s:  # PyJWT's own exp rule
            del entries[token]  # type: ignore[union-attr]
            return None
        return identity

    def put(self, token: str, settings: Settings, identity: Identity) -> None:
        if len(token) > self.MAX_CACHED_CHARS:
            return
        key = self.config(settings)
        entries = self._by_config.get(key)
        if entries is None:
            if len(self._by_config) >= self.MAX_CONFIGS:
                return
            entries = self._by_config[key] = {}
        if len(entries) >= self.MAX_ENTRIES and token not in entries:
            del entries[next(iter(entries))]  # the oldest stored
        entries[token] = identity

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_config.values())

    def clear(self) -> None:
        self._by_config.clear()


verified_tokens = VerifiedTokens()


def verify_token(token: str, settings: Settings, now: float | None = None) -> Identity:
    """Check signature, algorithm, exp (required), nbf, iss and aud; return the identity.

    A token verified before under the same settings comes from `verified_tokens`, its
    `exp` checked again at `now` (default: the clock)."""
    cached = verified_tokens.get(token, settings, time.time() if now is None else now)
    if cached is not None:
        return cached
    identity = _verify(token, settings)
    verified_tokens.put(token, settings, identity)
    return identity


def _verify(token: str, settings: Settings) -> Identity:
    if len(token) > MAX_TOKEN_CHARS:
        raise HandshakeRejected("invalid_token", "the token is too long")
    options: dict[str, Any] = {"require": ["exp"], "verify_aud": bool(settings.jwt_audience)}
    try:
        claims = _jwt.decode(
            token,
            _verification_key(settings),
            algorithms=list(settings.jwt_algorithms),
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            leeway=settings.jwt_leeway_s,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise HandshakeRejected("token_expired") from None
    except jwt.ImmatureSignatureError:
        raise HandshakeRejected("token_not_yet_valid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise HandshakeRejected("invalid_token", f"the token has no {exc.claim!r} claim") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
        raise HandshakeRejected("invalid_token", f"the token is not valid: {exc}") from None
    except jwt.InvalidAlgorithmError:
        raise HandshakeRejected("invalid_token", "the token's algorithm is not accepted") from None
    except jwt.InvalidSignatureError:
        raise HandshakeRejected("invalid_token", "the token's signature does not verify") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise HandshakeRejected("invalid_token", "the token is malformed") from None

    raw_id = claims.get(settings.jwt_client_id_claim)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
        raise HandshakeRejected("invalid_token", f"the token has no usable {settings.jwt_client_id_claim!r} claim")
    client_id = str(raw_id)
    if len(client_id) > 256:
        raise HandshakeRejected("invalid_token", "the client id is too long")
    if not client_id.isascii():  # a lone surrogate would pass JSON decoding and fail every frame that names it
        try:
            client_id.encode("utf-8")
        except UnicodeEncodeError:
            raise HandshakeRejected("invalid_token", "the client id is not valid Unicode text") from None
    return Identity(client_id, is_admin(claims), float(claims["exp"]), claims)


def is_admin(claims: Mapping[str, Any]) -> bool:
    """The contract's admin role: the string "admin" in the `roles` list, or `role` == "admin".

    Exact and case-sensitive: `roles: "admin"` (a string, not a list), `roles: {"admin": 1}`,
    `[["admin"]]`, `["Admin"]` or `role: ["admin"]` are not admin."""
    roles = claims.get("roles")
    return (isinstance(roles, list) and "admin" in roles) or claims.get("role") == "admin"


def mint_token(settings: Settings, client_id: str, admin: bool = False, ttl_s: float = 3600) -> str:
    """An HS256 token for `client_id`: the `token` command and the demo route use it."""
    key = settings.jwt_secret
    if not key:
        raise RuntimeError("minting needs WSAPP_JWT_SECRET (or demo mode's generated secret)")
    if "HS256" not in settings.jwt_algorithms:
        raise RuntimeError("minting makes HS256 tokens, which WSAPP_JWT_ALGORITHMS does not accept")
    now = int(time.time())
    claims: dict[str, Any] = {
        settings.jwt_client_id_claim: client_id,
        "iat": now,
        "exp": now + int(ttl_s),
        "roles": ["admin"] if admin else [],
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, key, algorithm="HS256")
