"""Settings, read once from the environment (see the README's table)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app.keys import key_from_pem
from app.readiness import NOTIFY_QUEUE_LIMIT


class ConfigError(Exception):
    """The environment is missing or has a wrong value; the message names the variable."""


_MAX_LIMIT = 1_000_000


def _limit(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number from 0 (no limit) to 1,000,000."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isascii() or not raw.strip().isdigit() or int(raw) > _MAX_LIMIT:
        raise ConfigError(f"{name}={raw!r} must be a whole number from 0 (no limit) to {_MAX_LIMIT:,}")
    return int(raw)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    """A number greater than 0 and at most 1."""
    value = _number(env, name, default)
    if value > 1:
        raise ConfigError(f"{name}={env.get(name)!r} must be a fraction: greater than 0, at most 1")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r}: use 1 or 0")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _addresses(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated IP addresses and networks (`10.0.0.7`, `10.0.0.0/8`, `fd00::/8`), each
    written out as Python's ipaddress writes it."""
    items = _list(env, name)
    if not items:
        return default
    written = []
    for item in items:
        try:
            written.append(str(ipaddress.ip_network(item) if "/" in item else ipaddress.ip_address(item)))
        except ValueError as exc:
            raise ConfigError(
                f"{name}={env[name]!r}: {item!r} is not an IP address or network ({exc}); give "
                "comma-separated addresses or networks, e.g. 127.0.0.1,10.0.0.0/8"
            ) from None
    return tuple(written)


_MIN_METRICS_TOKEN = 16


def _metrics_token(env: Mapping[str, str]) -> str:
    raw = env.get("TRACKTALK_METRICS_TOKEN", "")
    if raw and (len(raw) < _MIN_METRICS_TOKEN or not raw.isascii() or not raw.isprintable() or " " in raw):
        raise ConfigError(
            f"TRACKTALK_METRICS_TOKEN must be at least {_MIN_METRICS_TOKEN} printable ASCII characters "
            f"without spaces (the scraper sends it as `Authorization: Bearer <token>`), {_SECRET_HINT}"
        )
    return raw


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """TRACKTALK_ALLOWED_ORIGINS: each as a browser sends it in `Origin`, or it would never match."""
    origins = _list(env, "TRACKTALK_ALLOWED_ORIGINS")
    for origin in origins:
        parts = urlsplit(origin)
        exact = origin == f"{parts.scheme}://{parts.netloc}" and "*" not in origin
        if parts.scheme not in ("http", "https") or not parts.netloc or not exact:
            raise ConfigError(
                f"TRACKTALK_ALLOWED_ORIGINS: {origin!r} is not an origin: write scheme://host[:port] as the "
                "browser sends it in `Origin`, e.g. https://app.example or http://localhost:3000 (no path, "
                "no trailing slash)"
            )
    return origins


_MAX_REPLICA_ID = 200


def _replica_id(env: Mapping[str, str], port: int | None) -> str:
    """TRACKTALK_REPLICA_ID, or host name:port when `port` is known; else host name:pid (not
    stable across restarts: the old process's rows count until its heartbeat is 12 s old)."""
    raw = env.get("TRACKTALK_REPLICA_ID", "").strip()
    if not raw:
        where = port if port is not None else f"pid{os.getpid()}"
        return f"{socket.gethostname()}:{where}"
    if len(raw) > _MAX_REPLICA_ID or not raw.isprintable():
        raise ConfigError(
            f"TRACKTALK_REPLICA_ID must be at most {_MAX_REPLICA_ID} printable characters: a name of "
            "this replica that stays the same across its restarts and differs from every other's "
            "(unset: host name:port)"
        )
    return raw


@dataclass(frozen=True)
class IdentityProvider:
    """The host's identity provider, whose tokens are accepted besides tracktalk's own."""

    jwks_url: str = ""
    """TRACKTALK_JWKS_URL: where its keys are, by kid (or else `public_key`)."""
    public_key: str = ""
    """TRACKTALK_JWT_PUBLIC_KEY: its one key, as PEM."""
    issuer: str = ""
    """TRACKTALK_JWT_ISSUER: the `iss` its tokens must have; empty: not checked."""
    audience: str = ""
    """TRACKTALK_JWT_AUDIENCE: the `aud` its tokens must have; empty: not checked."""
    user_claim: str = "sub"
    """TRACKTALK_JWT_USER_CLAIM: the claim that holds the tracktalk user id."""
    refresh: float = 300.0
    """TRACKTALK_JWKS_REFRESH: seconds before the JWKS is fetched again (a removed key stops
    working then)."""


_IDENTITY_PROVIDER_OPTIONS = (
    "TRACKTALK_JWT_ISSUER",
    "TRACKTALK_JWT_AUDIENCE",
    "TRACKTALK_JWT_USER_CLAIM",
    "TRACKTALK_JWKS_REFRESH",
)
_SECRET_HINT = 'e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _identity_provider(env: Mapping[str, str]) -> IdentityProvider | None:
    """TRACKTALK_JWKS_URL or TRACKTALK_JWT_PUBLIC_KEY and what goes with them; None without either."""
    url = env.get("TRACKTALK_JWKS_URL", "").strip()
    pem = env.get("TRACKTALK_JWT_PUBLIC_KEY", "").strip()
    if not url and not pem:
        for name in _IDENTITY_PROVIDER_OPTIONS:
            if env.get(name, "").strip():
                raise ConfigError(
                    f"{name} is set, but neither TRACKTALK_JWKS_URL nor TRACKTALK_JWT_PUBLIC_KEY: "
                    "set one of them, or unset it"
                )
        return None
    if url and pem:
        raise ConfigError("TRACKTALK_JWKS_URL and TRACKTALK_JWT_PUBLIC_KEY are both set: keep one of them")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"TRACKTALK_JWKS_URL={url!r} must be the http(s) URL of the identity provider's JWKS, "
                "e.g. https://idp.example/.well-known/jwks.json"
            )
    if pem:
        try:
            key_from_pem(pem)
        except ValueError as exc:
            raise ConfigError(f"TRACKTALK_JWT_PUBLIC_KEY {exc}") from None
    claim = env.get("TRACKTALK_JWT_USER_CLAIM", "").strip() or "sub"
    return IdentityProvider(
        jwks_url=url,
        public_key=pem,
        issuer=env.get("TRACKTALK_JWT_ISSUER", "").strip(),
        audience=env.get("TRACKTALK_JWT_AUDIENCE", "").strip(),
        user_claim=claim,
        refresh=_number(env, "TRACKTALK_JWKS_REFRESH", 300.0),
    )


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from outside."""

    database_url: str
    secret: str
    """TRACKTALK_SECRET, the key of tracktalk's own HS256 tokens; empty: none are accepted (only
    with an identity provider)."""
    listen_url: str = ""
    demo: bool = False
    """Offer the demo sign-in route (on with the embedded database, or TRACKTALK_DEMO=1)."""
    pool_min: int = 2
    pool_max: int = 10
    pool_timeout: float = 5.0
    """Seconds a request waits for a database connection before it answers 503."""
    statement_timeout: float = 5.0
    socket_buffer: int = 512 * 1024
    """Bytes a socket may have unsent (written but not taken by the kernel, or held during its
    replay) before it is closed as too slow (1013)."""
    anonymous_sockets: bool = False
    """Let sockets without a token watch public tracks, read-only (TRACKTALK_ANONYMOUS_SOCKETS)."""
    comments_per_minute: int = 30
    """Comments (and replies) one user may post per minute, counted across replicas; more get 429
    (0: no limit)."""
    writes_per_minute: int = 120
    """Edits, comment likes and unlikes, track likes, unlikes and shares one user may make per
    minute, counted across replicas; more get 429 (0: no limit)."""
    sockets_per_user: int = 20
    """WebSockets one user may have open on one replica; more are closed with 1008."""
    anonymous_sockets_per_address: int = 10
    """Anonymous sockets one client address may hold on this replica (IPv6: one /64); more are
    closed with 1008 (TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS; 0: no limit)."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    """Addresses and networks whose X-Forwarded-For is believed (TRACKTALK_TRUSTED_PROXIES): the
    client address is then the right-most one in it not in this set (app/server.py gives it to
    uvicorn, which puts it in the ASGI scope for every route and socket)."""
    max_connections: int = 0
    """TRACKTALK_MAX_CONNECTIONS: client connections (requests and sockets) this replica holds;
    past it a new one is answered 503 (app/httpprotocol.py). 0: as many as the file limit allows
    (app/server.py)."""
    metrics_token: str = ""
    """TRACKTALK_METRICS_TOKEN: the bearer token /metrics asks for (401 without it); empty: open."""
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    """Origins allowed to open a WebSocket and to call the API from a browser (CORS, app/cors.py);
    empty: sockets from any origin, no CORS on the API."""
    log_json: bool = False
    identity_provider: IdentityProvider | None = None
    """Whose tokens are accepted besides tracktalk's own; None: tracktalk's only."""
    replica_id: str = ""
    """TRACKTALK_REPLICA_ID: this replica's name in the presence tables, the same across its
    restarts and different from every other replica's (default host name:port); empty: made up
    at start (app/presence.py)."""
    notify_queue_limit: float = NOTIFY_QUEUE_LIMIT
    """TRACKTALK_NOTIFY_QUEUE_LIMIT: the fraction of PostgreSQL's NOTIFY queue in use past which
    /readyz fails (app/readiness.py)."""

    def __post_init__(self) -> None:
        if not self.listen_url:
            object.__setattr__(self, "listen_url", self.database_url)
        object.__setattr__(self, "pool_min", min(self.pool_min, self.pool_max))

    @property
    def pooled(self) -> bool:
        """DATABASE_URL leads to a transaction-mode pooler (PgBouncer): the contract's reason for
        a TRACKTALK_LISTEN_URL of its own. Its server sessions are shared between transactions,
        so the request pool keeps no session state there (no prepared statements, no startup
        options); the statement timeout is then the role's (docs/dba.md)."""
        return self.listen_url != self.database_url

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        secret: str | None = None,
        demo: bool = False,
        port: int | None = None,
    ) -> Settings:
        """Read the settings; `database_url` and `secret` override the environment (embedded mode);
        `port` is the one `tracktalk serve` listens on (the default replica id has it)."""
        env = os.environ if env is None else env
        url = database_url or env.get("DATABASE_URL", "")
        if not url:
            raise ConfigError("DATABASE_URL is not set: set it, or run `tracktalk serve` without it")
        if env.get("TRACKTALK_SOCKET_QUEUE"):
            raise ConfigError(
                "TRACKTALK_SOCKET_QUEUE (frames) is replaced by TRACKTALK_SOCKET_BUFFER_KIB (unsent KiB "
                "per socket, default 512): unset it"
            )
        if env.get("FORWARDED_ALLOW_IPS"):
            raise ConfigError(
                "FORWARDED_ALLOW_IPS is uvicorn's, and tracktalk sets it from TRACKTALK_TRUSTED_PROXIES "
                "(comma-separated addresses or networks of your proxies, default 127.0.0.1), so that the "
                "client address is the same for every purpose: set that instead, and unset FORWARDED_ALLOW_IPS"
            )
        key = secret or env.get("TRACKTALK_SECRET", "")
        provider = _identity_provider(env)
        demo = demo or _flag(env, "TRACKTALK_DEMO", False)
        if not key and provider is None:
            raise ConfigError(
                "TRACKTALK_SECRET is not set: set it to a long random string "
                f"({_SECRET_HINT}), or set TRACKTALK_JWKS_URL or TRACKTALK_JWT_PUBLIC_KEY "
                "to accept the tokens of your identity provider"
            )
        if not key and demo:
            raise ConfigError(
                "TRACKTALK_DEMO=1 needs TRACKTALK_SECRET: the demo sign-in hands out its tokens"
            )
        if key and len(key) < 32:
            raise ConfigError(
                f"TRACKTALK_SECRET is shorter than 32 characters: set it to a long random string, {_SECRET_HINT}"
            )
        return cls(
            database_url=url,
            secret=key,
            listen_url=env.get("TRACKTALK_LISTEN_URL", "") or url,
            demo=demo,
            pool_max=int(_number(env, "TRACKTALK_POOL_MAX", 10)),
            pool_timeout=_number(env, "TRACKTALK_POOL_TIMEOUT", 5.0),
            statement_timeout=_number(env, "TRACKTALK_STATEMENT_TIMEOUT", 5.0),
            socket_buffer=int(_number(env, "TRACKTALK_SOCKET_BUFFER_KIB", 512) * 1024),
            anonymous_sockets=_flag(env, "TRACKTALK_ANONYMOUS_SOCKETS", False),
            comments_per_minute=_limit(env, "TRACKTALK_COMMENTS_PER_MINUTE", 30),
            writes_per_minute=_limit(env, "TRACKTALK_WRITES_PER_MINUTE", 120),
            sockets_per_user=int(_number(env, "TRACKTALK_SOCKETS_PER_USER", 20)),
            anonymous_sockets_per_address=_limit(env, "TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS", 10),
            trusted_proxies=_addresses(env, "TRACKTALK_TRUSTED_PROXIES", ("127.0.0.1",)),
            max_connections=_limit(env, "TRACKTALK_MAX_CONNECTIONS", 0),
            metrics_token=_metrics_token(env),
            allowed_origins=_origins(env),
            log_json=_flag(env, "TRACKTALK_LOG_JSON", False),
            identity_provider=provider,
            replica_id=_replica_id(env, port),
            notify_queue_limit=_fraction(env, "TRACKTALK_NOTIFY_QUEUE_LIMIT", NOTIFY_QUEUE_LIMIT),
        )
