"""Settings, read once from the environment (see the README's table)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app.auth.provider import IdentityProvider, identity_provider
from app.env import ConfigError, addresses, flag, fraction, limit, names, number, url_list
from app.ops.readiness import NODE_LAG_LIMIT, NOTIFY_QUEUE_LIMIT

_SECRET_HINT = 'e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'

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
    origins = names(env, "TRACKTALK_ALLOWED_ORIGINS")
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
class Settings:
    """Everything the app reads from outside."""

    database_url: str
    secret: str
    """TRACKTALK_SECRET, the key of tracktalk's own HS256 tokens; empty: none are accepted (only
    with an identity provider)."""
    listen_url: str = ""
    """TRACKTALK_LISTEN_URL as given: one URL, or several, comma-separated (fan-out nodes, in the
    order to try them: listen_urls)."""
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
    past it a new one is answered 503 (app/edge/httpprotocol.py). 0: as many as the file limit allows
    (app/server.py)."""
    metrics_token: str = ""
    """TRACKTALK_METRICS_TOKEN: the bearer token /metrics asks for (401 without it); empty: open."""
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    """Origins allowed to open a WebSocket and to call the API from a browser (CORS, app/edge/cors.py);
    empty: sockets from any origin, no CORS on the API."""
    log_json: bool = False
    identity_provider: IdentityProvider | None = None
    """Whose tokens are accepted besides tracktalk's own; None: tracktalk's only."""
    replica_id: str = ""
    """TRACKTALK_REPLICA_ID: this replica's name in the presence tables, the same across its
    restarts and different from every other replica's (default host name:port); empty: made up
    at start (app/presence/tracker.py)."""
    notify_queue_limit: float = NOTIFY_QUEUE_LIMIT
    """TRACKTALK_NOTIFY_QUEUE_LIMIT: the fraction of PostgreSQL's NOTIFY queue in use past which
    /readyz fails (app/ops/readiness.py)."""
    node_lag_limit: float = NODE_LAG_LIMIT
    """TRACKTALK_NODE_LAG_LIMIT: seconds a fan-out node the listener is on may be behind the primary
    before /readyz fails (app/ops/readiness.py)."""

    def __post_init__(self) -> None:
        if not self.listen_url:
            object.__setattr__(self, "listen_url", self.database_url)
        object.__setattr__(self, "pool_min", min(self.pool_min, self.pool_max))

    @property
    def listen_urls(self) -> tuple[str, ...]:
        """Where the listener LISTENs and the live path reads the log: TRACKTALK_LISTEN_URL's
        URLs, in order (the first that answers; the next when it fails), or DATABASE_URL."""
        return url_list(self.listen_url) or (self.database_url,)

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
        # A deployment that sets TRACKTALK_SOCKET_QUEUE believes it bounds each socket's queue (in
        # frames); nothing reads it, so that belief would run silently with another bound. Refused
        # at start, naming the variable that does bound it (docs/protocol.md lists it).
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
        provider = identity_provider(env)
        demo = demo or flag(env, "TRACKTALK_DEMO", False)
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
            pool_max=int(number(env, "TRACKTALK_POOL_MAX", 10)),
            pool_timeout=number(env, "TRACKTALK_POOL_TIMEOUT", 5.0),
            statement_timeout=number(env, "TRACKTALK_STATEMENT_TIMEOUT", 5.0),
            socket_buffer=int(number(env, "TRACKTALK_SOCKET_BUFFER_KIB", 512) * 1024),
            anonymous_sockets=flag(env, "TRACKTALK_ANONYMOUS_SOCKETS", False),
            comments_per_minute=limit(env, "TRACKTALK_COMMENTS_PER_MINUTE", 30),
            writes_per_minute=limit(env, "TRACKTALK_WRITES_PER_MINUTE", 120),
            sockets_per_user=int(number(env, "TRACKTALK_SOCKETS_PER_USER", 20)),
            anonymous_sockets_per_address=limit(env, "TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS", 10),
            trusted_proxies=addresses(env, "TRACKTALK_TRUSTED_PROXIES", ("127.0.0.1",)),
            max_connections=limit(env, "TRACKTALK_MAX_CONNECTIONS", 0),
            metrics_token=_metrics_token(env),
            allowed_origins=_origins(env),
            log_json=flag(env, "TRACKTALK_LOG_JSON", False),
            identity_provider=provider,
            replica_id=_replica_id(env, port),
            notify_queue_limit=fraction(env, "TRACKTALK_NOTIFY_QUEUE_LIMIT", NOTIFY_QUEUE_LIMIT),
            node_lag_limit=number(env, "TRACKTALK_NODE_LAG_LIMIT", NODE_LAG_LIMIT),
        )
