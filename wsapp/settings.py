"""Every setting of the service: one catalogue, parsed once, validated as a whole.

Each `Option` has one environment name, one default and one line of doc; the README's
settings table is generated from `OPTIONS` (`python -m wsapp.settings --table`) and a
test checks that the two agree. `Settings.from_env` collects every problem before it
fails, so a bad deployment learns all of its mistakes at once: one line per problem,
naming the variable, the bad value and what is allowed. Every entry point (gunicorn's
config, `app.py` for `flask --app app ...`, `WSApp.init_app` under gunicorn or `flask`,
`python -m wsapp.settings`) prints those lines with `report_and_exit` and exits 2, never
a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """One or more settings are invalid; `problems` names each variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def lines(self) -> list[str]:
        """One line per problem, as every entry point prints them."""
        return [f"wsapp: invalid setting {problem}" for problem in self.problems]


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < lo or (hi is not None and value > hi):
            span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"must be {span}")
        return value

    return parse


def _float(lo: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not value >= lo:  # also refuses NaN
            raise ValueError(f"must be a number of at least {lo}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


def _str(raw: str) -> str:
    return raw.strip()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (any case)")
    return level


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _origins(raw: str) -> tuple[str, ...]:
    origins = _csv(raw)
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com or *")
    return tuple(o.rstrip("/").lower() for o in origins)


def _networks(raw: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part, strict=False) for part in _csv(raw))


_LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"  # WSAPP_METRICS_ALLOW's default
_LOOPBACK_HOSTS = "127.0.0.1/32,::1/128"  # WSAPP_TRUSTED_PROXIES' default


def _algorithms(raw: str) -> tuple[str, ...]:
    allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}
    algs = tuple(a.upper() for a in _csv(raw))
    bad = [a for a in algs if a not in allowed]
    if bad or not algs:
        raise ValueError(f"must list algorithms from {sorted(allowed)}; 'none' is never accepted")
    return algs


def _public_key(raw: str) -> str:
    """A PEM text, or the path of a file holding one."""
    text = raw.strip()
    if text and "-----BEGIN" not in text:
        with open(text, encoding="ascii") as f:
            text = f.read()
    if text and "PUBLIC KEY-----" not in text:
        raise ValueError("must be a PEM public key or the path of a file holding one")
    return text


def _path(raw: str) -> str:
    value = raw.strip()
    if value and (not value.startswith("/") or any(c.isspace() for c in value)):
        raise ValueError("must be empty or a path starting with / and without spaces")
    return value


@dataclass(frozen=True)
class Option:
    env: str
    field: str
    default: str
    parse: Callable[[str], Any]
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option("WSAPP_HOST", "host", "127.0.0.1", _str, "Address gunicorn binds to."),
    Option("WSAPP_PORT", "port", "8000", _int(0, 65535), "Port gunicorn binds to."),
    Option(
        "WSAPP_WORKERS",
        "workers",
        "",
        _str,
        "gunicorn workers. Empty: 1 without Redis, one per core with Redis. More than 1 needs `WSAPP_REDIS_URL`.",
    ),
    Option(
        "WSAPP_WORKER_CONNECTIONS",
        "worker_connections",
        "20000",
        _int(1),
        "gunicorn `worker_connections`: HTTP requests in flight per worker (WebSockets leave "
        "gunicorn's pool after the 101; `WSAPP_MAX_CONNECTIONS` caps them).",
    ),
    Option(
        "WSAPP_JWT_SECRET",
        "jwt_secret",
        "",
        _str,
        "HS256 secret, at least 32 bytes. Without it (and without a public key) the service "
        "refuses to start unless `WSAPP_DEMO=1`.",
    ),
    Option(
        "WSAPP_JWT_PUBLIC_KEY",
        "jwt_public_key",
        "",
        _public_key,
        "PEM public key (or a path to one) for RS256/ES256 tokens; replaces the secret.",
    ),
    Option(
        "WSAPP_JWT_ALGORITHMS",
        "jwt_algorithms",
        "",
        _str,
        "Accepted algorithms, comma list. Empty: `HS256`, or `RS256,ES256` with a public key.",
    ),
    Option("WSAPP_JWT_ISSUER", "jwt_issuer", "", _str, "Required `iss` claim, when set."),
    Option("WSAPP_JWT_AUDIENCE", "jwt_audience", "", _str, "Required `aud` claim, when set."),
    Option(
        "WSAPP_JWT_CLIENT_ID_CLAIM",
        "jwt_client_id_claim",
        "sub",
        _str,
        "Claim that holds the client id (`ID` for gin-vue-admin tokens).",
    ),
    Option("WSAPP_JWT_LEEWAY", "jwt_leeway_s", "10", _float(0), "Seconds of clock skew allowed on `exp`/`nbf`/`iat`."),
    Option(
        "WSAPP_ALLOWED_ORIGINS",
        "allowed_origins",
        "",
        _origins,
        "Comma list of exact origins, or `*`. Empty: no Origin, or Origin equal to Host.",
    ),
    Option(
        "WSAPP_MAX_CONNECTIONS",
        "max_connections",
        "10000",
        _int(1),
        "WebSocket connections one worker holds before answering 503 `server_busy`.",
    ),
    Option(
        "WSAPP_MAX_CONNECTIONS_PER_CLIENT",
        "max_connections_per_client",
        "10",
        _int(1),
        "Connections one client id may hold before 429 (with Redis: across nodes).",
    ),
    Option(
        "WSAPP_MAX_MESSAGE_BYTES",
        "max_message_bytes",
        "65536",
        _int(125, 64 * 1024 * 1024),
        "Largest message (after decompression) and HTTP API body; over it: close 1009 / 413.",
    ),
    Option(
        "WSAPP_RATE_LIMIT",
        "rate_limit",
        "50",
        _float(0),
        "Messages per second a connection may send; `0` turns the limit off.",
    ),
    Option(
        "WSAPP_RATE_BURST", "rate_burst", "", _str, "Burst allowed above the rate, in messages. Empty: twice the rate."
    ),
    Option(
        "WSAPP_API_RATE_LIMIT",
        "api_rate_limit",
        "",
        _str,
        "HTTP API requests per second per client id (the token's; admin tokens too), per worker; "
        "over it: 429 `rate_limited` with `Retry-After`. Empty: `WSAPP_RATE_LIMIT`'s value; `0` turns it off.",
    ),
    Option(
        "WSAPP_API_RATE_BURST",
        "api_rate_burst",
        "",
        _str,
        "Burst of HTTP API requests allowed above `WSAPP_API_RATE_LIMIT`. Empty: twice the rate.",
    ),
    Option(
        "WSAPP_SEND_QUEUE",
        "send_queue",
        "256",
        _int(1),
        "Messages queued for one connection before it is closed 1008 as a slow consumer.",
    ),
    Option(
        "WSAPP_SEND_QUEUE_BYTES",
        "send_queue_bytes",
        "0",
        _int(0),
        "Bytes queued for one connection before it is closed 1008 as a slow consumer. "
        "`0`: 4 × `WSAPP_MAX_MESSAGE_BYTES` + 64 KiB.",
    ),
    Option(
        "WSAPP_MAX_ROOMS",
        "max_rooms",
        "100",
        _int(1),
        "Rooms one connection may be in at once; a join past it gets a `too_many_rooms` error frame.",
    ),
    Option("WSAPP_PING_INTERVAL", "ping_interval_s", "25", _float(0.05), "Seconds between server pings."),
    Option(
        "WSAPP_PING_TIMEOUT",
        "ping_timeout_s",
        "20",
        _float(0.05),
        "Seconds to wait for a pong before closing the connection.",
    ),
    Option(
        "WSAPP_SHUTDOWN_TIMEOUT",
        "shutdown_timeout_s",
        "10",
        _float(0.1),
        "Seconds a worker takes at most to close its clients and exit on SIGTERM "
        "(gunicorn's keep-alive becomes min(5, this - 3)).",
    ),
    Option("WSAPP_COMPRESSION", "compression", "0", _bool, "Negotiate permessage-deflate when a client offers it."),
    Option(
        "WSAPP_DEMO",
        "demo",
        "0",
        _bool,
        "Demo mode, only with no secret and no public key: a generated secret, anyone may mint "
        "tokens at `POST /api/demo/token`, only loopback `Host` values are served. "
        "`scripts/run.sh` sets it when no key is set. Never in production.",
    ),
    Option(
        "WSAPP_DEMO_TOKENS",
        "demo_tokens",
        "0",
        _bool,
        "Serve `POST /api/demo/token` even with a real secret (tests only, never in production; "
        "not with a public key).",
    ),
    Option(
        "WSAPP_REDIS_URL",
        "redis_url",
        "",
        _str,
        "Redis backplane, e.g. `redis://127.0.0.1:6379/0`, or a Redis Cluster through any of its nodes: "
        "`redis+cluster://10.0.0.5:7000` (`rediss+cluster://` with TLS), or the primary Redis Sentinel "
        "names: `redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster/0` (`rediss+sentinel://` with "
        "TLS to the primary). Empty: in-process registry.",
    ),
    Option(
        "WSAPP_REDIS_HEARTBEAT",
        "redis_heartbeat_s",
        "5",
        _float(0.05),
        "Seconds between a node's heartbeats in Redis (renews its presence, cleans up dead nodes).",
    ),
    Option(
        "WSAPP_REDIS_PRESENCE_TTL",
        "redis_presence_ttl_s",
        "15",
        _float(0.1),
        "Seconds after its last heartbeat that a dead node stops counting; at least twice the heartbeat.",
    ),
    Option(
        "WSAPP_HISTORY_SIZE",
        "history_size",
        "100",
        _int(0),
        "Messages kept per stream (a room, a client id's direct messages, broadcasts) for resume; "
        "`0` turns history off (no positions, no stored direct messages).",
    ),
    Option(
        "WSAPP_HISTORY_TTL",
        "history_ttl_s",
        "300",
        _float(0),
        "Seconds a message is kept for resume, and a client id counts as seen; `0` turns history off.",
    ),
    Option(
        "WSAPP_HISTORY_STREAMS",
        "history_streams",
        "10000",
        _int(1),
        "Streams kept per worker (in-process history); past it the least recently used goes.",
    ),
    Option(
        "WSAPP_HISTORY_BYTES",
        "history_bytes",
        "67108864",
        _int(4096),
        "Bytes of history per worker (in-process: frames plus bookkeeping); past it the least "
        "recently used streams go.",
    ),
    Option(
        "WSAPP_HISTORY_BYTES_PER_CLIENT",
        "history_bytes_per_client",
        "1048576",
        _int(0),
        "With Redis: bytes of history one client id's chat messages may add per `WSAPP_HISTORY_TTL` window, "
        "cluster-wide (JSON text plus 214 bytes per message); past it its messages are delivered but not kept. "
        "Admin tokens and the server's own publishes (`ws.send`, the HTTP API, the Emitter) are not counted. "
        "`0`: no bound.",
    ),
    Option(
        "WSAPP_IDEMPOTENCY_KEYS",
        "idempotency_keys",
        "10000",
        _int(1),
        "In-process: idempotency keys a worker remembers (each for `WSAPP_HISTORY_TTL`); past it the oldest "
        "is forgotten. With Redis each key is a Redis key with that TTL.",
    ),
    Option(
        "WSAPP_IDEMPOTENCY_KEYS_PER_CLIENT",
        "idempotency_keys_per_client",
        "1000",
        _int(0),
        "`Idempotency-Key`s one client id may use on the HTTP API per `WSAPP_HISTORY_TTL` window, per worker; "
        "past it `429 rate_limited`. `0`: no bound.",
    ),
    Option(
        "WSAPP_HISTORY_READ_LIMIT",
        "history_read_limit",
        "100",
        _int(1),
        "Most messages one `GET /api/history` answer (or `ws.history`) returns; `limit` may ask for fewer.",
    ),
    Option(
        "WSAPP_MEMBERS_LIMIT",
        "members_limit",
        "1000",
        _int(0),
        "Most client ids `GET /api/rooms/<room>` lists (`count` is always exact).",
    ),
    Option(
        "WSAPP_STORE_OFFLINE",
        "store_offline",
        "0",
        _bool,
        "`1`: a direct message to any client id is stored for its resume, not only to ids seen within the history TTL.",
    ),
    Option(
        "WSAPP_RESUME_TIMEOUT",
        "resume_timeout_s",
        "10",
        _float(0.05),
        "Seconds a `?resume=1` chat connection has to send its `resume` frame; then its held "
        "streams go live (or, if more arrived than its send queue's bounds, it is closed 1008).",
    ),
    Option(
        "WSAPP_METRICS_ALLOW",
        "metrics_allow",
        _LOOPBACK_NETWORKS,
        _networks,
        "Networks allowed to read `/metrics` (comma list of CIDRs; empty: nobody). "
        "Loopback only by default: add your Prometheus server's network.",
    ),
    Option(
        "WSAPP_TRUSTED_PROXIES",
        "trusted_proxies",
        _LOOPBACK_HOSTS,
        _networks,
        "Proxies whose `X-Forwarded-For`/`-Proto` are believed.",
    ),
    Option(
        "WSAPP_INSTANCE_PATH",
        "instance_path",
        "",
        _str,
        "Folder for the demo-mode secret. Empty: Flask's instance folder.",
    ),
    Option(
        "WSAPP_LOG_LEVEL",
        "log_level",
        "INFO",
        _log_level,
        "Log level of the `wsapp` logger: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    ),
    Option(
        "WSAPP_CHAT_PATH",
        "chat_path",
        "/ws/chat",
        _path,
        "Path of the built-in chat route. Empty: no chat route.",
    ),
    Option(
        "WSAPP_FAST_HANDSHAKES",
        "fast_handshakes",
        "early",
        _choice("early", "fast", "off"),
        "Shortcuts an accepted handshake may take where Flask's path could not be told apart "
        "(docs/performance.md): `early` (before gunicorn's parser, and without a Flask request), "
        "`fast` (without a Flask request only), `off` (Flask's path for every handshake).",
    ),
    Option(
        "WSAPP_ROOMS_CLAIM",
        "rooms_claim",
        "",
        _str,
        "Token claim listing the rooms (names or fnmatch patterns) a client may join, when "
        "no `authorize_join` hook is set. Empty: any room.",
    ),
    Option(
        "WSAPP_AUTOJOIN_CLAIM",
        "autojoin_claim",
        "",
        _str,
        "Token claim listing rooms the built-in chat joins at connect, after `welcome`, each under the room "
        "rule and `WSAPP_MAX_ROOMS` (a refused one: the `error` frame a refused `join` gets). Empty: off.",
    ),
    Option(
        "WSAPP_PRESENCE_CLAIMS",
        "presence_claims",
        "",
        _csv,
        "Comma list of token claims a room member's entry carries (`info` in `joined`, `presence` and "
        "`GET /api/rooms/<room>`). Empty: none.",
    ),
    Option(
        "WSAPP_PRESENCE_INFO_BYTES",
        "presence_info_bytes",
        "256",
        _int(2, 4096),
        "Most bytes of JSON one member's `info` may take; over it the member's claims are left out (`{}`).",
    ),
)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    worker_connections: int = 20000
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_client_id_claim: str = "sub"
    jwt_leeway_s: float = 10.0
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 10000
    max_connections_per_client: int = 10
    max_message_bytes: int = 65536
    rate_limit: float = 50.0
    rate_burst: float = 100.0
    api_rate_limit: float = 50.0
    api_rate_burst: float = 100.0
    send_queue: int = 256
    send_queue_bytes: int = 0  # 0: derived from max_message_bytes (connection.default_send_queue_bytes)
    max_rooms: int = 100
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    shutdown_timeout_s: float = 10.0
    compression: bool = False
    demo: bool = False
    demo_tokens: bool = False
    redis_url: str = ""
    redis_heartbeat_s: float = 5.0
    redis_presence_ttl_s: float = 15.0
    history_size: int = 100
    history_ttl_s: float = 300.0
    history_streams: int = 10000
    history_bytes: int = 64 * 1024 * 1024
    history_bytes_per_client: int = 1024 * 1024
    idempotency_keys: int = 10000
    idempotency_keys_per_client: int = 1000
    history_read_limit: int = 100
    members_limit: int = 1000
    store_offline: bool = False
    resume_timeout_s: float = 10.0
    metrics_allow: tuple[Network, ...] = _networks(_LOOPBACK_NETWORKS)
    trusted_proxies: tuple[Network, ...] = _networks(_LOOPBACK_HOSTS)
    instance_path: str = ""
    log_level: str = "INFO"
    chat_path: str = "/ws/chat"
    rooms_claim: str = ""
    autojoin_claim: str = ""
    presence_claims: tuple[str, ...] = ()
    presence_info_bytes: int = 256
    fast_handshakes: str = "early"
    generated_secret: bool = False  # set by the app in demo mode, not an environment option

    @property
    def history_on(self) -> bool:
        """Message history (positions, resume, stored direct messages): both bounds above 0."""
        return self.history_size > 0 and self.history_ttl_s > 0

    @property
    def demo_mode(self) -> bool:
        """Demo mode was asked for (`WSAPP_DEMO=1`) and no key is configured: the service
        makes and keeps its own secret. Once the app has generated it (`generated_secret`),
        `jwt_secret` is set and this is False; `generated_secret` then tells demo mode."""
        return self.demo and not self.jwt_secret and not self.jwt_public_key

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse every `WSAPP_*` variable; raise `SettingsError` naming each bad one."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for opt in OPTIONS:
            raw = env.get(opt.env, opt.default)
            try:
                values[opt.field] = opt.parse(raw)
            except (ValueError, OSError) as exc:
                problems.append(f"{opt.env}={raw!r}: {exc}")
                values[opt.field] = opt.parse(opt.default)  # so the checks below still run
        _derive(values, problems)
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
        """`from_env` with a Flask app's `config["WSAPP_*"]` first and the environment
        filling the rest (so `app.config.from_prefixed_env()` works too). Config values
        may be typed (`5`, `True`, a list for a comma list); they pass the same checks."""
        merged = dict(os.environ if env is None else env)
        for opt in OPTIONS:
            if opt.env in config:
                merged[opt.env] = _config_text(config[opt.env])
        return cls.from_env(merged)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _config_text(value: Any) -> str:
    """A typed `app.config` value as the text its environment variable would hold."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _derive(values: dict[str, Any], problems: list[str]) -> None:
    """Fill the settings whose default depends on others, and check them together."""
    raw_algs = values["jwt_algorithms"]
    try:
        if raw_algs:
            values["jwt_algorithms"] = _algorithms(raw_algs)
        else:
            values["jwt_algorithms"] = ("RS256", "ES256") if values["jwt_public_key"] else ("HS256",)
    except ValueError as exc:
        problems.append(f"WSAPP_JWT_ALGORITHMS={raw_algs!r}: {exc}")
    else:
        hmac = [a for a in values["jwt_algorithms"] if a.startswith("HS")]
        if values["jwt_public_key"] and hmac:
            problems.append(
                f"WSAPP_JWT_ALGORITHMS={raw_algs!r}: HMAC algorithms cannot be used with "
                "WSAPP_JWT_PUBLIC_KEY (a public key must never serve as an HMAC secret)"
            )
        if not values["jwt_public_key"] and len(hmac) != len(values["jwt_algorithms"]):
            problems.append(f"WSAPP_JWT_ALGORITHMS={raw_algs!r}: RS/ES/PS algorithms need WSAPP_JWT_PUBLIC_KEY")

    raw_burst = values["rate_burst"]
    try:
        values["rate_burst"] = _float(1)(raw_burst) if raw_burst else max(1.0, 2 * values["rate_limit"])
    except ValueError as exc:
        problems.append(f"WSAPP_RATE_BURST={raw_burst!r}: {exc}")
    raw_api_rate = values["api_rate_limit"]
    try:
        values["api_rate_limit"] = _float(0)(raw_api_rate) if raw_api_rate else values["rate_limit"]
    except ValueError as exc:
        problems.append(f"WSAPP_API_RATE_LIMIT={raw_api_rate!r}: {exc}")
        values["api_rate_limit"] = values["rate_limit"]
    raw_api_burst = values["api_rate_burst"]
    try:
        values["api_rate_burst"] = _float(1)(raw_api_burst) if raw_api_burst else max(1.0, 2 * values["api_rate_limit"])
    except ValueError as exc:
        problems.append(f"WSAPP_API_RATE_BURST={raw_api_burst!r}: {exc}")

    raw_workers = values["workers"]
    try:
        if raw_workers:
            values["workers"] = _int(1, 512)(raw_workers)
        else:
            values["workers"] = (os.cpu_count() or 1) if values["redis_url"] else 1
    except ValueError as exc:
        problems.append(f"WSAPP_WORKERS={raw_workers!r}: {exc}")
    else:
        if values["workers"] > 1 and not values["redis_url"]:
            problems.append(
                f"WSAPP_WORKERS={raw_workers!r}: more than one worker needs WSAPP_REDIS_URL; "
                "without a backplane each worker sees only its own clients and directed "
                "messages would silently miss. Set WSAPP_REDIS_URL=redis://host:6379/0 "
                "or use one worker."
            )

    if values["redis_presence_ttl_s"] < 2 * values["redis_heartbeat_s"]:
        problems.append("WSAPP_REDIS_PRESENCE_TTL: must be at least twice WSAPP_REDIS_HEARTBEAT")
    if values["ping_timeout_s"] > 0 and values["ping_interval_s"] <= 0:
        problems.append("WSAPP_PING_INTERVAL: must be above 0")
    if values["jwt_secret"] and len(values["jwt_secret"].encode()) < 32:
        problems.append("WSAPP_JWT_SECRET: must be at least 32 bytes (RFC 7518: an HS256 key has 256 bits or more)")
    schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    sentinel = ("redis+sentinel://", "rediss+sentinel://")
    url = values["redis_url"]
    if url and url.startswith(sentinel):
        problem = _sentinel_problem(url)
        if problem:
            problems.append(f"WSAPP_REDIS_URL: {problem}")
    elif url and not url.startswith(schemes):
        problems.append(
            f"WSAPP_REDIS_URL={url!r}: must start with redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
        )
    _check_keys(values, problems)


def _sentinel_problem(url: str) -> str:
    """What is wrong with a `redis+sentinel://` URL ('' if nothing)."""
    from .redis.url import sentinel_target

    try:
        sentinel_target(url)
    except ValueError as exc:
        return str(exc)
    return ""


def _check_keys(values: dict[str, Any], problems: list[str]) -> None:
    """Demo mode only when asked for, and never next to a real key."""
    keys = "WSAPP_JWT_SECRET" if values["jwt_secret"] else "WSAPP_JWT_PUBLIC_KEY" if values["jwt_public_key"] else ""
    if not keys and not values["demo"]:
        problems.append(
            "WSAPP_JWT_SECRET / WSAPP_JWT_PUBLIC_KEY: neither is set; set one of them, or set "
            "WSAPP_DEMO=1 to try the service in demo mode (anyone may mint tokens; never in production)"
        )
    if keys and values["demo"]:
        problems.append(f"WSAPP_DEMO=1: demo mode makes its own secret, but {keys} is set; unset one of the two")
    if values["demo_tokens"] and values["jwt_public_key"]:
        problems.append(
            "WSAPP_DEMO_TOKENS=1: tokens cannot be minted with WSAPP_JWT_PUBLIC_KEY (a public key "
            "cannot sign); unset WSAPP_DEMO_TOKENS"
        )


def markdown_table() -> str:
    """The README's settings table, generated from OPTIONS."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        default = f"`{opt.default}`" if opt.default else "(empty)"
        rows.append(f"| `{opt.env}` | {default} | {opt.doc} |")
    return "\n".join(rows)


def report_and_exit(exc: SettingsError, status: int = 2) -> NoReturn:
    """Each problem on one line of stderr, then exit `status` (2): what every entry point
    does with a `SettingsError` (gunicorn.conf.py, `app.py`, `WSApp.init_app` under
    gunicorn or `flask`, `python -m wsapp.settings`), never a traceback."""
    sys.stderr.write("".join(line + "\n" for line in exc.lines()))
    sys.stderr.flush()
    raise SystemExit(status) from None


def exit_on_error(env: Mapping[str, str] | None = None) -> Settings:
    """`Settings.from_env`, or each problem on one line of stderr and exit status 2."""
    try:
        return Settings.from_env(env)
    except SettingsError as exc:
        report_and_exit(exc)


@contextlib.contextmanager
def exit_on_bad_settings() -> Iterator[None]:
    """`with exit_on_bad_settings(): ws = WSApp(app)`: a `SettingsError` raised inside
    becomes one line per problem on stderr and exit status 2 (the shipped `app.py`)."""
    try:
        yield
    except SettingsError as exc:
        report_and_exit(exc)


def main(argv: list[str] | None = None) -> int:
    """`python -m wsapp.settings [--table]`: check the environment; print the settings table."""
    parser = argparse.ArgumentParser(
        prog="python -m wsapp.settings",
        description="Check the WSAPP_* environment: each problem on one line of stderr and exit "
        "status 2, or the settings table on stdout when every value is valid.",
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the README's table of every setting and its default without checking the environment",
    )
    args = parser.parse_args(argv)
    if not args.table:
        exit_on_error()
    sys.stdout.write(markdown_table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
