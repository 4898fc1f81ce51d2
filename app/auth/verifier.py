"""Checking access tokens, whoever issued them: `TokenVerifier.verify(token) -> Claims`.

Two issuers may be trusted at once:
- tracktalk itself: HS256 tokens signed with TRACKTALK_SECRET (`tracktalk token`, the demo
  sign-in), where that secret is set;
- the host's identity provider: RS256, ES256 or EdDSA tokens of a key from TRACKTALK_JWKS_URL
  (by the token's `kid`) or of the one TRACKTALK_JWT_PUBLIC_KEY, with `iss` and `aud` checked
  when TRACKTALK_JWT_ISSUER and TRACKTALK_JWT_AUDIENCE are set, and the user in the claim
  TRACKTALK_JWT_USER_CLAIM names: a users.id, or else the host's own id for the user, found in
  users.external_id (app/auth/subjects.py; made on first sight with TRACKTALK_JWT_PROVISION=1).

The token's `alg` only says which of the two to ask; the key then fixes the one algorithm it
may be, so `none`, and an HS256 token signed with a public key, are refused.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import jwt
from jwt.types import Options
from psycopg_pool import AsyncConnectionPool

from app.auth.claims import Claims, TokenError, user_of
from app.auth.hs256 import ALGORITHM, verify_token
from app.auth.jwks import JwksKeys
from app.auth.keys import ALGORITHMS, VerifyKey, key_from_pem
from app.auth.provider import IdentityProvider
from app.auth.subjects import Subjects, UnknownUser
from app.config import Settings

_REMEMBER = 60.0
"""Seconds a verified token is taken again without checking its signature (never past its `exp`,
nor past a change of the JWKS): a client's sockets and requests reuse one token, and checking it
is about a tenth of a socket's connect."""
_REMEMBERED = 10_000
"""Verified tokens remembered at most (the oldest half is forgotten beyond)."""


class TokenVerifier:
    """Verifies tokens for one replica; use it as `async with` (a JWKS holds an HTTP client)."""

    def __init__(
        self, secret: str, provider: IdentityProvider | None, subjects: Subjects | None = None
    ) -> None:
        self._secret = secret
        self._provider = provider
        self._subjects = subjects
        """Finds the users the identity provider's tokens name by their external_id (None: no
        database, and such tokens are refused)."""
        self._public_key: VerifyKey | None = None
        self._jwks: JwksKeys | None = None
        if provider is not None and provider.public_key:
            self._public_key = key_from_pem(provider.public_key)
        elif provider is not None and provider.jwks_url:
            self._jwks = JwksKeys(provider.jwks_url, provider.refresh)
        accepted: tuple[str, ...] = (ALGORITHM,) if secret else ()
        if provider is not None:
            accepted += (self._public_key.algorithm,) if self._public_key else ALGORITHMS
        self._accepted = accepted
        self._verified: dict[str, tuple[Claims, float, int]] = {}
        """token -> (its claims, until when they are taken again unchecked, the JWKS generation)"""

    @classmethod
    def from_settings(cls, settings: Settings, pool: AsyncConnectionPool) -> TokenVerifier:
        """The verifier that the settings describe, finding external ids through `pool`."""
        provider = settings.identity_provider
        subjects = None
        if provider is not None:
            subjects = Subjects(pool, provision=provider.provision, user_claim=provider.user_claim)
        return cls(settings.secret, provider, subjects)

    async def __aenter__(self) -> TokenVerifier:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str) -> Claims:
        """The claims of a token that can be trusted; TokenError (401) otherwise, or
        IdentityProviderUnavailable (503) when the key it needs cannot be fetched now."""
        now = time.time()
        generation = 0
        if self._jwks is not None:
            self._jwks.refresh_if_due()
            generation = self._jwks.generation
        known = self._verified.get(token)
        if known is not None and known[1] > now and known[2] == generation:
            return known[0]
        claims = await self._verify(token)
        if len(self._verified) >= _REMEMBERED:
            for old in list(self._verified)[: _REMEMBERED // 2]:
                del self._verified[old]
        self._verified[token] = (claims, min(now + _REMEMBER, claims.expires_at), generation)
        return claims

    def forget(self, user_id: int) -> bool:
        """Forget what was remembered of a user found gone: the tokens that named them, and the
        external id they were found by; whether they had been found by an external id (which may
        now name another user, or, with provisioning, a new one)."""
        for token in [token for token, (claims, _, _) in self._verified.items() if claims.user_id == user_id]:
            del self._verified[token]
        return self._subjects is not None and self._subjects.forget(user_id)

    async def _verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        alg = header.get("alg")
        if alg == ALGORITHM and self._secret:
            return verify_token(self._secret, token)
        if self._provider is None:
            raise TokenError("invalid token")
        if alg not in self._accepted:
            *others, last = self._accepted
            raise TokenError(
                f"invalid token: its alg must be {', '.join(others) + ' or ' if others else ''}{last}"
            )
        provider = self._provider
        payload = self._decode(token, await self._key_of(header), provider)
        user = user_of(payload, provider.user_claim)
        if isinstance(user, str):
            if self._subjects is None:
                raise UnknownUser("unknown user: this replica cannot look up external ids")
            user = await self._subjects.user_id(user, payload.get(provider.username_claim))
        return Claims(user, int(payload["exp"]))

    async def _key_of(self, header: dict[str, Any]) -> VerifyKey:
        if self._public_key is not None:
            return self._public_key
        assert self._jwks is not None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("invalid token: its header has no `kid` naming its key in the JWKS")
        return await self._jwks.key(kid)

    @staticmethod
    def _decode(token: str, key: VerifyKey, provider: IdentityProvider) -> dict[str, Any]:
        options: Options = {
            "require": ["exp", provider.user_claim],
            "verify_aud": bool(
                provider.audience
            ),  # an `aud` the host did not ask to check is no reason to refuse
            "verify_sub": False,  # checked below, as a user id
            "verify_iat": False,  # informational (RFC 7519); a clock ahead of ours must not refuse fresh tokens
        }
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=provider.audience or None,
                issuer=provider.issuer or None,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(f"invalid token: its key allows {key.algorithm} only") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"invalid token: it has no `{exc.claim}` claim") from None
        except jwt.InvalidIssuerError:
            raise TokenError("invalid token: wrong issuer (`iss`)") from None
        except jwt.InvalidAudienceError:
            raise TokenError("invalid token: wrong audience (`aud`)") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("invalid token: not valid yet (`nbf`)") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        return payload
