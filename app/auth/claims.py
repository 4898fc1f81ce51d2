"""What a verified access token says (`Claims`), and why one is refused.

tracktalk's own tokens are app/auth/hs256.py's; every token a replica is shown is checked by
app/auth/verifier.py.
"""

from __future__ import annotations

from typing import Any

from app.bounds import MAX_EXTERNAL_ID, MAX_USER_ID_DIGITS
from app.problems import whole_seconds


class TokenError(Exception):
    """The token cannot be trusted; the message is safe to show (`invalid token…`, `token expired`)."""


class IdentityProviderUnavailable(Exception):
    """The token needs a key of the identity provider that cannot be fetched right now."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            "identity provider unavailable: its keys cannot be fetched to check the token; "
            "try again in a few seconds"
        )
        self.retry_after = whole_seconds(retry_after)
        """Seconds until tracktalk asks the identity provider again."""


class Claims:
    """What a verified token says."""

    __slots__ = ("expires_at", "user_id")

    def __init__(self, user_id: int, expires_at: int) -> None:
        self.user_id = user_id
        self.expires_at = expires_at


def claims_of(payload: dict[str, Any], user_claim: str) -> Claims:
    """The claims of a verified payload whose `user_claim` holds a tracktalk user id (`users.id`)."""
    user = user_of(payload, user_claim)
    if isinstance(user, str):
        raise TokenError(
            f"invalid token: its `{user_claim[:40]}` claim must be a user id (a whole number from 1)"
        )
    return Claims(user, int(payload["exp"]))


def user_of(payload: dict[str, Any], user_claim: str) -> int | str:
    """Who a verified payload's `user_claim` names: a users.id (a number, or a string of up to 18
    digits), or else the host's own id for the user, to be looked up in users.external_id (any
    other string of 1 to MAX_EXTERNAL_ID characters: `auth0|…`, a UUID, `user_…`, the 21 digits of
    a Google subject)."""
    value = payload.get(user_claim)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    # A close reason holds 123 bytes at most: the claim's name is cut short.
    claim = user_claim[:40]
    if not isinstance(value, str) or not value:
        raise TokenError(f"invalid token: its `{claim}` claim must be a user id or your user's id (a string)")
    if value.isascii() and value.isdigit() and len(value) <= MAX_USER_ID_DIGITS:
        if int(value) < 1:  # 0 stands for "no user" on a socket (subscriber.ANONYMOUS)
            raise TokenError(f"invalid token: its `{claim}` claim must be a user id (a whole number from 1)")
        return int(value)
    if len(value) > MAX_EXTERNAL_ID:
        raise TokenError(f"invalid token: its `{claim}` claim is longer than {MAX_EXTERNAL_ID} characters")
    return value


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None when there is no header."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("invalid token: send `Authorization: Bearer <token>`")
    return token.strip()
