"""Tokens of the host's identity provider, through real `tracktalk serve` processes and a real JWKS
server over HTTP: RS256, ES256 and EdDSA; rotation and removal of keys; a JWKS server that is
down, slow or flooded with unknown kids; issuer, audience and the user claim; one PEM key; and
tracktalk's own HS256 tokens beside them; and, in-process, how long the verifier remembers a token.
"""

from __future__ import annotations

import re
import time

import pytest

from app.auth.claims import TokenError, claims_of, user_of
from app.auth.hs256 import issue_token
from app.auth.jwks import JwksKeys
from app.auth.provider import IdentityProvider, identity_provider
from app.auth.verifier import TokenVerifier
from app.bounds import MAX_EXTERNAL_ID
from app.data.users import FALLBACK_USERNAME, MAX_USERNAME, mentionable
from app.env import ConfigError
from tests.support.processes import SECRET
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)

JWKS = "https://idp.example/.well-known/jwks.json"


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://idp.internal/.well-known/jwks.json", True),
        ("http://10.0.0.7:8080/jwks", True),
        ("https://idp.example/.well-known/jwks.json", False),
        ("http://127.0.0.1:8765/jwks.json", False),
        ("http://localhost/jwks.json", False),
        ("http://[::1]/jwks.json", False),
    ],
)
async def test_a_jwks_fetched_in_clear_from_another_host_is_warned_about(
    url: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    keys = JwksKeys(url, 300)
    await keys.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "app.auth.jwks"]
    assert bool(said) == warned, said
    if warned:
        assert "use https" in said[0]


async def test_a_remembered_token_is_refused_once_its_exp_has_passed() -> None:
    """The verifier takes a token it checked again without checking it, for a minute at most and
    never past its `exp`: a socket opened with it a second after that is refused."""
    verifier = TokenVerifier(SECRET, None)
    token = issue_token(SECRET, 7, ttl=1)
    expires_at = (await verifier.verify(token)).expires_at
    assert (await verifier.verify(token)).user_id == 7  # remembered
    await async_wait_until(lambda: time.time() >= expires_at, 3, "the token's exp to pass")
    with pytest.raises(TokenError, match="token expired"):
        await verifier.verify(token)


@pytest.mark.parametrize(
    ("proposed", "username"),
    [
        ("alice", "alice"),
        ("Alice Liddell", "Alice_Liddell"),
        ("José María", "Jose_Maria"),
        ("alice.liddell@example.com", "alice_liddell"),
        ("@alice", "alice"),
        ("--a--b--", "a_b"),
        ("Юлия", FALLBACK_USERNAME),
        ("", FALLBACK_USERNAME),
        (None, FALLBACK_USERNAME),
        (42, FALLBACK_USERNAME),
        ("x" * 100, "x" * MAX_USERNAME),
        ("a" * 47 + " b", "a" * 47),
    ],
)
def test_a_username_from_a_token_is_one_an_at_mention_reaches(proposed: object, username: str) -> None:
    made = mentionable(proposed)
    assert made == username
    assert re.fullmatch(r"[A-Za-z0-9_]{1,48}", made) and not made.startswith("_") and not made.endswith("_")


@pytest.mark.parametrize(
    ("sub", "user"),
    [
        ("42", 42),
        (42, 42),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, "9" * 19),  # more than a users.id: the host's id (Google's subjects are 21 digits)
        ("auth0|5f7c8ec7", "auth0|5f7c8ec7"),
        ("6b1a3f0e-2c4d-4e8f-9a7b-1c2d3e4f5a6b", "6b1a3f0e-2c4d-4e8f-9a7b-1c2d3e4f5a6b"),
    ],
)
def test_a_user_claim_is_a_users_id_or_else_the_hosts_id(sub: object, user: int | str) -> None:
    assert user_of({"sub": sub}, "sub") == user


@pytest.mark.parametrize("sub", ["0", 0, "", None, True, ["1"], "x" * (MAX_EXTERNAL_ID + 1)])
def test_a_user_claim_that_names_nobody_is_an_invalid_token(sub: object) -> None:
    with pytest.raises(TokenError, match="invalid token: its `sub` claim"):
        user_of({"sub": sub}, "sub")


def test_tracktalks_own_tokens_name_users_ids_only() -> None:
    with pytest.raises(TokenError, match="must be a user id"):
        claims_of({"sub": "auth0|5f7c8ec7", "exp": 1}, "sub")


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, IdentityProvider(jwks_url=JWKS)),
        (
            {"TRACKTALK_JWT_PROVISION": "1", "TRACKTALK_JWT_USERNAME_CLAIM": "nickname"},
            IdentityProvider(jwks_url=JWKS, provision=True, username_claim="nickname"),
        ),
    ],
)
def test_provisioning_is_read_from_the_environment(env: dict[str, str], provider: IdentityProvider) -> None:
    assert identity_provider({"TRACKTALK_JWKS_URL": JWKS, **env}) == provider


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRACKTALK_JWT_PROVISION": "1"}, "TRACKTALK_JWT_PROVISION is set, but neither TRACKTALK_JWKS_URL"),
        ({"TRACKTALK_JWT_USERNAME_CLAIM": "nickname"}, "TRACKTALK_JWT_USERNAME_CLAIM is set, but neither"),
        ({"TRACKTALK_JWKS_URL": JWKS, "TRACKTALK_JWT_PROVISION": "maybe"}, "TRACKTALK_JWT_PROVISION='maybe'"),
    ],
)
def test_provisioning_without_an_identity_provider_fails_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        identity_provider(env)
