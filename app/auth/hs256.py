"""tracktalk's own access tokens: HS256, signed with TRACKTALK_SECRET, saying `sub` (the user id
as a string) and `exp` (`tracktalk token`, the demo sign-in)."""

from __future__ import annotations

import time

import jwt

from app.auth.claims import Claims, TokenError, claims_of

ALGORITHM = "HS256"
DEFAULT_TTL = 24 * 3600
"""Seconds a token from `tracktalk token` lives unless --ttl says otherwise."""


def issue_token(secret: str, user_id: int, ttl: int = DEFAULT_TTL) -> str:
    """A token for `user_id` that expires in `ttl` seconds."""
    now = int(time.time())
    return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Claims:
    """Check signature, algorithm and expiry of an HS256 token; return the claims or raise TokenError."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"], "verify_sub": False}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.PyJWTError:
        raise TokenError("invalid token") from None
    return claims_of(claims, "sub")
