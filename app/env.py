"""Reading the environment: each reader takes a variable or its default, and a wrong value is a
ConfigError that names the variable and says what to set."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping


class ConfigError(Exception):
    """The environment is missing or has a wrong value; the message names the variable."""


MAX_LIMIT = 1_000_000


def limit(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number from 0 (no limit) to 1,000,000."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isascii() or not raw.strip().isdigit() or int(raw) > MAX_LIMIT:
        raise ConfigError(f"{name}={raw!r} must be a whole number from 0 (no limit) to {MAX_LIMIT:,}")
    return int(raw)


def number(env: Mapping[str, str], name: str, default: float) -> float:
    """A number greater than 0."""
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


def fraction(env: Mapping[str, str], name: str, default: float) -> float:
    """A number greater than 0 and at most 1."""
    value = number(env, name, default)
    if value > 1:
        raise ConfigError(f"{name}={env.get(name)!r} must be a fraction: greater than 0, at most 1")
    return value


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """1, true, yes, on, or 0, false, no, off."""
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r}: use 1 or 0")


def names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated items, each stripped; empty ones left out."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def addresses(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated IP addresses and networks (`10.0.0.7`, `10.0.0.0/8`, `fd00::/8`), each
    written out as Python's ipaddress writes it."""
    items = names(env, name)
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


_URL_START = re.compile(r",\s*(?=postgres(?:ql)?://)")
"""A comma that starts another URL in a list of them: a URL's own commas (libpq's multi-host
`postgresql://db1,db2/tracktalk`) are followed by a host, not by a scheme."""


def url_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list of PostgreSQL URLs (`postgresql://…`), each stripped; a single
    conninfo of any form (`host=… dbname=…`, or a multi-host URL) is one entry."""
    return tuple(item.strip() for item in _URL_START.split(raw) if item.strip())
