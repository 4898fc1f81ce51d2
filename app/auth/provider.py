"""The host's identity provider, whose tokens are accepted besides tracktalk's own: where its keys
are, and what its tokens must say (TRACKTALK_JWKS_URL or TRACKTALK_JWT_PUBLIC_KEY, and
TRACKTALK_JWT_*)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.auth.keys import key_from_pem
from app.env import ConfigError, flag, number


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
    """TRACKTALK_JWT_USER_CLAIM: the claim that holds the user: a users.id (a number, or a string of
    digits), or else the host's own id for the user, looked up in users.external_id."""
    provision: bool = False
    """TRACKTALK_JWT_PROVISION: make the user of a valid token whose subject no user has."""
    username_claim: str = "preferred_username"
    """TRACKTALK_JWT_USERNAME_CLAIM: the claim a user made on first sight is named after."""
    refresh: float = 300.0
    """TRACKTALK_JWKS_REFRESH: seconds before the JWKS is fetched again (a removed key stops
    working then)."""


_IDENTITY_PROVIDER_OPTIONS = (
    "TRACKTALK_JWT_ISSUER",
    "TRACKTALK_JWT_AUDIENCE",
    "TRACKTALK_JWT_USER_CLAIM",
    "TRACKTALK_JWT_PROVISION",
    "TRACKTALK_JWT_USERNAME_CLAIM",
    "TRACKTALK_JWKS_REFRESH",
)


def identity_provider(env: Mapping[str, str]) -> IdentityProvider | None:
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
        provision=flag(env, "TRACKTALK_JWT_PROVISION", False),
        username_claim=env.get("TRACKTALK_JWT_USERNAME_CLAIM", "").strip() or "preferred_username",
        refresh=number(env, "TRACKTALK_JWKS_REFRESH", 300.0),
    )
