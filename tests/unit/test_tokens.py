"""Tokens of the host's identity provider, through real `tracktalk serve` processes and a real JWKS
server over HTTP: RS256, ES256 and EdDSA; rotation and removal of keys; a JWKS server that is
down, slow or flooded with unknown kids; issuer, audience and the user claim; one PEM key; and
tracktalk's own HS256 tokens beside them; and, in-process, how long the verifier remembers a token.
"""

from __future__ import annotations

import time

import pytest

from app.auth.claims import TokenError
from app.auth.hs256 import issue_token
from app.auth.jwks import JwksKeys
from app.auth.verifier import TokenVerifier
from tests.support.processes import SECRET
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)


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
