"""Access tokens: HS256 JWTs with `sub` (the user id, a string) and `exp`."""

from __future__ import annotations

import time

import jwt

ALGORITHM = "HS256"
DEFAULT_TTL = 24 * 3600
"""Seconds a token from `tracktalk token` lives unless --ttl says otherwise."""


class TokenError(Exception):
    """The token cannot be trusted; the message is safe to show (`invalid token`, `token expired`)."""


def issue_token(secret: str, user_id: int, ttl: int = DEFAULT_TTL) -> str:
    """A token for `user_id` that expires in `ttl` seconds."""
    now = int(time.time())
    return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


class Claims:
    """What a verified token says."""

    __slots__ = ("expires_at", "user_id")

    def __init__(self, user_id: int, expires_at: int) -> None:
        self.user_id = user_id
        self.expires_at = expires_at


def verify_token(secret: str, token: str) -> Claims:
    """Check signature, algorithm and expiry; return the claims or raise TokenError."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"], "verify_sub": False}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.PyJWTError:
        raise TokenError("invalid token") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit() or len(sub) > 18:
        raise TokenError("invalid token")
    return Claims(int(sub), int(claims["exp"]))


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None when there is no header."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("invalid token: send `Authorization: Bearer <token>`")
    return token.strip()
