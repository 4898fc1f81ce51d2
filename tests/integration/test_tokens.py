"""Tokens of the host's identity provider, through real `tracktalk serve` processes and a real JWKS
server over HTTP: RS256, ES256 and EdDSA; rotation and removal of keys; a JWKS server that is
down, slow or flooded with unknown kids; issuer, audience and the user claim; one PEM key; and
tracktalk's own HS256 tokens beside them; and, in-process, how long the verifier remembers a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth.jwks import FETCH_TIMEOUT
from tests.support.idp import JwksServer, SigningKey, claims, ec_key, ed_key, forge, jwks_server, rsa_key
from tests.support.processes import ROOT, SECRET, Replica, replicas
from tests.support.seed import World
from tests.support.sockets import open_socket
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)


TIMEOUT = 10.0


ANSWER_BOUND = FETCH_TIMEOUT + 1.5
"""Seconds within which a request must be answered while the identity provider is down."""


UNKNOWN_KID = "invalid token: its key (kid) is not in the identity provider's JWKS"


ISSUER = "https://idp.example/"


AUDIENCE = "tracktalk-api"


RSA = rsa_key("rsa-1")


EC = ec_key("ec-1")


ED = ed_key("ed-1")


@contextlib.contextmanager
def replica_of(db_url: str, log_dir: Path, **env: str) -> Iterator[Replica]:
    """One replica with `env` (TRACKTALK_… variables) on top of the suite's."""
    with replicas(db_url, log_dir, 1, **env) as started:
        yield started[0]


@pytest.fixture(scope="module")
def idp() -> Iterator[JwksServer]:
    """The identity provider's JWKS, with an RSA, an EC (P-256) and an Ed25519 key."""
    with jwks_server(RSA, EC, ED) as server:
        yield server


@pytest.fixture(scope="module")
def hosted(db_url: str, world: World, log_dir: Path, idp: JwksServer) -> Iterator[Replica]:
    """A replica that trusts the identity provider's JWKS (and, with TRACKTALK_SECRET, its own tokens)."""
    with replica_of(db_url, log_dir, TRACKTALK_JWKS_URL=idp.url) as started:
        yield started


async def post(base: str, track: str, token: str, content: str = "hello") -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        return await client.post(
            f"/api/tracks/{track}/comments",
            json={"content": content, "timestamp": 3.5},
            headers={"Authorization": f"Bearer {token}"},
        )


def refused(answer: httpx.Response, detail: str) -> bool:
    """Whether the answer is a 401 whose detail starts with `detail`."""
    return answer.status_code == 401 and str(answer.json()["detail"]).startswith(detail)


async def test_an_rs256_token_of_the_jwks_opens_a_socket_and_posts_a_comment(
    hosted: Replica, world: World
) -> None:
    alice = world.users["alice"]
    # As an identity provider issues them: an `iss` and an `aud` that nobody asked to check.
    token = RSA.token(claims(alice, iss="https://elsewhere.example/", aud=["an-api", "another"]))
    async with open_socket(hosted.ws, world.public, token) as sock:
        await sock.expect("connected")
        answer = await post(hosted.http, world.public, token, "signed by the identity provider")
        assert answer.status_code == 201, answer.text
        assert answer.json()["user_id"] == alice
        live = await sock.expect("new_comment", ignore=("presence",))
    assert (live["comment"]["id"], live["comment"]["user_id"]) == (answer.json()["id"], alice)


@pytest.mark.parametrize("key", [EC, ED], ids=["ES256", "EdDSA"])
async def test_es256_and_eddsa_tokens_of_the_jwks_are_accepted(
    hosted: Replica, world: World, key: SigningKey
) -> None:
    answer = await post(hosted.http, world.public, key.token(claims(world.users["bob"])))
    assert (answer.status_code, answer.json()["user_id"]) == (201, world.users["bob"])
    async with open_socket(hosted.ws, world.public, key.token(claims(world.users["bob"]))) as sock:
        await sock.expect("connected")


async def test_hs256_tokens_of_the_secret_keep_working_beside_the_identity_provider(
    hosted: Replica, world: World
) -> None:
    answer = await post(hosted.http, world.public, world.tokens["dave"])
    assert (answer.status_code, answer.json()["user_id"]) == (201, world.users["dave"])


def _none_token(user_id: int) -> str:
    return forge({"alg": "none", "typ": "JWT", "kid": RSA.kid}, claims(user_id), None)


def _hs256_with_the_public_key(user_id: int) -> str:
    """The key-confusion attack: HS256 whose HMAC key is the RSA key's public PEM."""
    return forge({"alg": "HS256", "typ": "JWT", "kid": RSA.kid}, claims(user_id), RSA.public_pem.encode())


def _ec_signature_naming_the_rsa_key(user_id: int) -> str:
    return EC.token(claims(user_id), kid=RSA.kid)


def _rs256_naming_the_ec_key(user_id: int) -> str:
    return RSA.token(claims(user_id), kid=EC.kid)


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (_none_token, "invalid token: its alg must be HS256, RS256, ES256 or EdDSA"),
        (_hs256_with_the_public_key, "invalid token"),
        (_ec_signature_naming_the_rsa_key, "invalid token: its key allows RS256 only"),
        (_rs256_naming_the_ec_key, "invalid token: its key allows ES256 only"),
    ],
    ids=["alg-none", "hs256-signed-with-the-public-key", "es256-on-an-rsa-kid", "rs256-on-an-ec-kid"],
)
async def test_the_algorithm_is_the_keys_never_the_tokens(
    hosted: Replica, world: World, make: Any, detail: str
) -> None:
    token = make(world.users["alice"])
    answer = await post(hosted.http, world.public, token, "forged")
    assert refused(answer, detail), answer.text
    async with open_socket(hosted.ws, world.public, token) as sock:
        code, reason = await sock.closed()
    assert (code, sock.received) == (1008, []) and reason is not None and reason.startswith(detail)


async def test_a_user_claim_that_is_not_a_user_id_is_an_invalid_token_that_says_so(
    hosted: Replica, world: World
) -> None:
    # (A string that is not a number is the host's own id for a user: tests/integration/test_external_ids.py.)
    for odd in ([1], True, ""):
        answer = await post(hosted.http, world.public, RSA.token({**claims(0), "sub": odd}))
        assert refused(answer, "invalid token: its `sub` claim must be a user id"), answer.text
    detail = "invalid token: its `sub` claim must be a user id (a whole number from 1)"
    # 0 is no user: such a token must not pass for an anonymous listener on a socket.
    zero = RSA.token({**claims(0), "sub": "0"})
    assert refused(await post(hosted.http, world.public, zero), detail)
    async with open_socket(hosted.ws, world.public, zero) as sock:
        code, reason = await sock.closed()
    assert (code, sock.received) == (1008, []) and reason is not None and reason.startswith(detail)


async def test_an_identity_provider_token_expires_like_any_other(hosted: Replica, world: World) -> None:
    expired = RSA.token(claims(world.users["alice"], ttl=-10))
    assert refused(await post(hosted.http, world.public, expired), "token expired")
    async with open_socket(hosted.ws, world.public, ED.token(claims(world.users["alice"], ttl=2))) as sock:
        await sock.expect("connected")
        code, reason = await sock.closed(timeout=15)
    assert code == 4001 and reason is not None and reason.startswith("token expired")


async def test_a_token_of_a_key_not_in_the_jwks_is_refused(hosted: Replica, world: World) -> None:
    stranger = rsa_key("not-listed")
    answer = await post(hosted.http, world.public, stranger.token(claims(world.users["alice"])))
    assert refused(answer, UNKNOWN_KID), answer.text
    forged = stranger.token(claims(world.users["alice"]), kid=RSA.kid)  # a listed kid, another key
    answer = await post(hosted.http, world.public, forged)
    assert refused(answer, "invalid token"), answer.text


async def test_concurrent_first_requests_share_one_fetch_of_the_jwks(
    db_url: str, world: World, log_dir: Path
) -> None:
    with jwks_server(RSA) as server, replica_of(db_url, log_dir, TRACKTALK_JWKS_URL=server.url) as fresh:
        server.delay = 0.5  # a slow identity provider: every request below arrives during the fetch
        tokens = [RSA.token(claims(world.users["bob"], jti=str(n))) for n in range(20)]
        answers = await asyncio.gather(*(post(fresh.http, world.public, t) for t in tokens))
        assert [a.status_code for a in answers] == [201] * 20
        assert server.requests == 1


async def test_a_flood_of_unknown_kids_fetches_the_jwks_once(
    db_url: str, world: World, log_dir: Path
) -> None:
    stranger = rsa_key("stranger")
    with jwks_server(RSA) as server, replica_of(db_url, log_dir, TRACKTALK_JWKS_URL=server.url) as fresh:
        flood = [stranger.token(claims(world.users["bob"]), kid=f"made-up-{uuid.uuid4()}") for _ in range(50)]
        answers = await asyncio.gather(*(post(fresh.http, world.public, t) for t in flood))
        assert all(refused(a, UNKNOWN_KID) for a in answers), {a.text for a in answers}
        for token in flood[:10]:  # one after another, too
            assert refused(await post(fresh.http, world.public, token), UNKNOWN_KID)
        assert server.requests == 1
        # The one fetch brought the real keys: a real token needs no other.
        assert (
            await post(fresh.http, world.public, RSA.token(claims(world.users["bob"])))
        ).status_code == 201
        assert server.requests == 1


@pytest.mark.parametrize("outage", ["refused", "error", "hang"])
async def test_an_identity_provider_that_is_down_gives_503_in_bounded_time(
    db_url: str, world: World, log_dir: Path, outage: str
) -> None:
    server = JwksServer(RSA)
    if outage != "refused":  # refused: nothing listens on its port
        server.start().mode = "error" if outage == "error" else "hang"
    try:
        with replica_of(db_url, log_dir, TRACKTALK_JWKS_URL=server.url) as fresh:
            token = RSA.token(claims(world.users["alice"]))
            started = time.monotonic()
            answers = await asyncio.gather(*(post(fresh.http, world.public, token) for _ in range(5)))
            assert time.monotonic() - started < ANSWER_BOUND
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["detail"].startswith("identity provider unavailable")
                assert 1 <= int(answer.headers["retry-after"]) <= 30
            started = time.monotonic()
            async with open_socket(fresh.ws, world.public, token) as sock:
                code, reason = await sock.closed()
            assert time.monotonic() - started < ANSWER_BOUND
            assert (code, sock.received) == (1013, [])
            assert reason is not None and reason.startswith("identity provider unavailable")
            # tracktalk's own tokens do not need the identity provider.
            assert (await post(fresh.http, world.public, world.tokens["alice"])).status_code == 201
    finally:
        server.stop()
    assert server.requests <= 1


@pytest.fixture(scope="module")
def rotating(db_url: str, world: World, log_dir: Path) -> Iterator[tuple[JwksServer, Replica]]:
    """A JWKS server and a replica that fetches its keys again after 1 s (and so may for an unknown kid)."""
    with (
        jwks_server() as server,
        replica_of(db_url, log_dir, TRACKTALK_JWKS_URL=server.url, TRACKTALK_JWKS_REFRESH="1") as started,
    ):
        yield server, started


async def test_after_rotation_the_new_key_is_accepted_and_the_removed_one_refused(
    rotating: tuple[JwksServer, Replica], world: World
) -> None:
    server, replica = rotating
    old, new = rsa_key(f"old-{uuid.uuid4()}"), ec_key(f"new-{uuid.uuid4()}")
    server.keys = [old]

    async def old_key_accepted() -> bool:
        # At once, unless a refresh that another test left hanging is still in flight (503), or
        # the unknown-kid fetch is spent for now (401): then within a refresh or two.
        answer = await post(replica.http, world.public, old.token(claims(world.users["bob"])))
        assert answer.status_code in (201, 401, 503), answer.text
        return answer.status_code == 201

    await async_wait_until(old_key_accepted, TIMEOUT, "a token of the first key to be accepted", interval=0.1)
    server.keys = [new]
    fetched = server.requests

    async def new_key_accepted() -> bool:
        answer = await post(replica.http, world.public, new.token(claims(world.users["bob"])))
        assert answer.status_code == 201 or refused(answer, UNKNOWN_KID), answer.text
        return answer.status_code == 201

    await async_wait_until(new_key_accepted, TIMEOUT, "a token of the new key to be accepted", interval=0.1)
    assert server.requests > fetched
    assert refused(await post(replica.http, world.public, old.token(claims(world.users["bob"]))), UNKNOWN_KID)


async def test_a_removed_key_is_refused_once_the_jwks_is_fetched_again(
    rotating: tuple[JwksServer, Replica], world: World
) -> None:
    server, replica = rotating
    kept, removed = ed_key(f"kept-{uuid.uuid4()}"), rsa_key(f"removed-{uuid.uuid4()}")
    server.keys = [kept, removed]
    token = removed.token(claims(world.users["dave"]))

    async def accepted() -> bool:
        return (await post(replica.http, world.public, token)).status_code == 201

    await async_wait_until(accepted, TIMEOUT, "the key to be fetched", interval=0.1)
    server.keys = [kept]  # its kid stays known until the refresh: only the refresh can refuse it

    async def refused_now() -> bool:
        answer = await post(replica.http, world.public, token)
        assert answer.status_code == 201 or refused(answer, UNKNOWN_KID), answer.text
        return answer.status_code == 401

    await async_wait_until(refused_now, TIMEOUT, "the removed key to be refused", interval=0.1)
    assert (
        await post(replica.http, world.public, kept.token(claims(world.users["dave"])))
    ).status_code == 201


async def test_known_keys_keep_working_while_the_identity_provider_hangs(
    rotating: tuple[JwksServer, Replica], world: World
) -> None:
    server, replica = rotating
    key = ec_key(f"steady-{uuid.uuid4()}")
    server.keys = [key]
    token = key.token(claims(world.users["carol"]))

    async def accepted() -> bool:
        return (await post(replica.http, world.public, token)).status_code == 201

    await async_wait_until(accepted, TIMEOUT, "the key to be fetched", interval=0.1)
    server.mode = "hang"
    try:
        asked = server.requests

        async def fast_while_a_refresh_hangs() -> bool:
            started = time.monotonic()
            assert await accepted()
            assert time.monotonic() - started < 1.0
            return server.requests > asked + 1  # a refresh hung while requests went on

        await async_wait_until(fast_while_a_refresh_hangs, TIMEOUT, "a refresh to hang", interval=0.1)
    finally:
        server.mode = "up"


@pytest.fixture(scope="module")
def strict_idp(db_url: str, world: World, log_dir: Path, idp: JwksServer) -> Iterator[Replica]:
    """A replica that checks `iss` and `aud`, and takes the user id from `tracktalk_id`."""
    env = {
        "TRACKTALK_JWKS_URL": idp.url,
        "TRACKTALK_JWT_ISSUER": ISSUER,
        "TRACKTALK_JWT_AUDIENCE": AUDIENCE,
        "TRACKTALK_JWT_USER_CLAIM": "tracktalk_id",
    }
    with replica_of(db_url, log_dir, **env) as started:
        yield started


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"iss": ISSUER, "aud": AUDIENCE}, None),
        ({"iss": ISSUER, "aud": ["another-api", AUDIENCE]}, None),
        ({"iss": "https://evil.example/", "aud": AUDIENCE}, "invalid token: wrong issuer (`iss`)"),
        ({"aud": AUDIENCE}, "invalid token: it has no `iss` claim"),
        ({"iss": ISSUER, "aud": "another-api"}, "invalid token: wrong audience (`aud`)"),
        ({"iss": ISSUER}, "invalid token: it has no `aud` claim"),
    ],
    ids=["right", "audience-in-a-list", "wrong-issuer", "no-issuer", "wrong-audience", "no-audience"],
)
async def test_issuer_and_audience_are_checked_when_set(
    strict_idp: Replica, world: World, extra: dict[str, Any], detail: str | None
) -> None:
    alice = world.users["alice"]
    token = RSA.token({**claims(10**15), "tracktalk_id": alice, **extra})  # `sub` is not the claim here
    answer = await post(strict_idp.http, world.public, token)
    if detail is None:
        assert (answer.status_code, answer.json()["user_id"]) == (201, alice), answer.text
    else:
        assert refused(answer, detail), answer.text


async def test_the_user_claim_is_the_one_configured(strict_idp: Replica, world: World) -> None:
    token = RSA.token(claims(world.users["alice"], iss=ISSUER, aud=AUDIENCE))
    assert refused(
        await post(strict_idp.http, world.public, token), "invalid token: it has no `tracktalk_id` claim"
    )


@pytest.fixture(scope="module")
def pem_only(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica that trusts one PEM key (RSA) and has no TRACKTALK_SECRET."""
    with replica_of(db_url, log_dir, TRACKTALK_JWT_PUBLIC_KEY=RSA.public_pem, TRACKTALK_SECRET="") as started:
        yield started


async def test_a_pem_public_key_verifies_tokens_and_nothing_else(pem_only: Replica, world: World) -> None:
    bob = world.users["bob"]
    token = RSA.token(claims(bob), kid="ignored-with-one-key")
    async with open_socket(pem_only.ws, world.public, token) as sock:
        await sock.expect("connected")
        answer = await post(pem_only.http, world.public, token)
        assert (answer.status_code, answer.json()["user_id"]) == (201, bob)
        await sock.expect("new_comment", ignore=("presence",))
    # Without TRACKTALK_SECRET, no HS256 token: neither tracktalk's nor one signed with the public key.
    for hs256 in (world.tokens["bob"], _hs256_with_the_public_key(bob)):
        assert refused(await post(pem_only.http, world.public, hs256), "invalid token: its alg must be RS256")
    assert refused(
        await post(pem_only.http, world.public, _none_token(bob)), "invalid token: its alg must be"
    )
    another = rsa_key("another")
    assert refused(await post(pem_only.http, world.public, another.token(claims(bob))), "invalid token")
    assert refused(
        await post(pem_only.http, world.public, EC.token(claims(bob))), "invalid token: its alg must be RS256"
    )


def _weak_rsa_pem() -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return weak.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _private_pem() -> str:
    return ED.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def tracktalk(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `tracktalk` command with `env` over the suite's environment (no TRACKTALK_… of its own)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACKTALK_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        check=False,
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRACKTALK_JWT_PUBLIC_KEY": "not a key"}, "TRACKTALK_JWT_PUBLIC_KEY is not a PEM public key"),
        ({"TRACKTALK_JWT_PUBLIC_KEY": "private"}, "TRACKTALK_JWT_PUBLIC_KEY is a private key"),
        ({"TRACKTALK_JWT_PUBLIC_KEY": "weak"}, "TRACKTALK_JWT_PUBLIC_KEY is an RSA key of 1024 bits"),
        (
            {"TRACKTALK_JWKS_URL": "file:///etc/jwks.json"},
            "TRACKTALK_JWKS_URL='file:///etc/jwks.json' must be",
        ),
        (
            {"TRACKTALK_JWKS_URL": "https://idp.example/jwks", "TRACKTALK_JWT_PUBLIC_KEY": "pem"},
            "TRACKTALK_JWKS_URL and TRACKTALK_JWT_PUBLIC_KEY are both set",
        ),
        ({"TRACKTALK_JWT_ISSUER": ISSUER}, "TRACKTALK_JWT_ISSUER is set, but neither"),
        (
            {"TRACKTALK_JWKS_URL": "https://idp.example/jwks", "TRACKTALK_JWKS_REFRESH": "0"},
            "TRACKTALK_JWKS_REFRESH",
        ),
        ({}, "TRACKTALK_SECRET is not set"),
        ({"TRACKTALK_JWKS_URL": "https://idp.example/jwks", "TRACKTALK_DEMO": "1"}, "TRACKTALK_DEMO=1 needs"),
    ],
    ids=[
        "garbage-pem",
        "private-pem",
        "weak-rsa",
        "not-http",
        "both",
        "issuer-alone",
        "refresh-zero",
        "no-secret-no-idp",
        "demo-without-secret",
    ],
)
def test_wrong_configuration_fails_at_start_naming_the_variable(
    db_url: str, env: dict[str, str], message: str
) -> None:
    pems = {"private": _private_pem(), "weak": _weak_rsa_pem(), "pem": RSA.public_pem}
    env = {name: pems.get(value, value) for name, value in env.items()}
    run = tracktalk("serve", "--port", "1", DATABASE_URL=db_url, **env)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"tracktalk: {message}"), run.stderr


def test_tracktalk_token_needs_the_secret_even_with_an_identity_provider(db_url: str) -> None:
    run = tracktalk("token", "1", DATABASE_URL=db_url, TRACKTALK_JWKS_URL="https://idp.example/jwks")
    assert run.returncode == 2
    assert run.stderr.startswith("tracktalk: TRACKTALK_SECRET is not set: `tracktalk token` signs with it")
    signed = tracktalk("token", "1", DATABASE_URL=db_url, TRACKTALK_SECRET=SECRET)
    assert signed.returncode == 0 and signed.stdout.count(".") == 2
