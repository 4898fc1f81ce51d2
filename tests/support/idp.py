"""A stand-in for the host's identity provider: signing keys, and its JWKS served over real HTTP.

`JwksServer` serves the public keys the test gives it at `url`, counts the requests it gets,
and can be made to fail (HTTP 500) or to hang (accept, then never answer) on demand.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.processes import LocalServer, free_port

_HANG_LIMIT = 60.0
"""Seconds a hanging request is held at most (the server lets go of all of them when it stops)."""


@dataclass(frozen=True)
class SigningKey:
    """A private key of the identity provider, its `kid`, and the algorithm its tokens name."""

    kid: str
    private: Any
    algorithm: str

    @property
    def public_pem(self) -> str:
        """The public key as PEM (what TRACKTALK_JWT_PUBLIC_KEY holds)."""
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK of a JWKS."""
        family = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.algorithm]
        jwk: dict[str, Any] = family.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        """A token signed with this key, its header naming the key's kid (unless `header` says otherwise)."""
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def claims(user_id: int, ttl: int = 600, **extra: Any) -> dict[str, Any]:
    """Claims as an identity provider issues them: the user id as a string in `sub`, `iat`, `exp`."""
    now = int(time.time())
    return {"sub": str(user_id), "iat": now, "exp": now + ttl, **extra}


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT with any header, HMAC-SHA256-signed with `hmac_key` (None: no signature, as `alg: none`)."""

    def part(value: object) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part(header) + b"." + part(payload)
    signature = b""
    if hmac_key is not None:
        digest = hmac.new(hmac_key, signing_input, hashlib.sha256).digest()
        signature = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


class JwksServer(LocalServer):
    """The identity provider's JWKS endpoint on 127.0.0.1, in threads of the test process."""

    def __init__(self, *keys: SigningKey, port: int | None = None) -> None:
        self.port = port or free_port()
        self.keys: list[SigningKey] = list(keys)
        """What the JWKS lists now; assign to rotate."""
        self.mode: Literal["up", "error", "hang"] = "up"
        """`error` answers 500; `hang` holds each request without an answer."""
        self.delay = 0.0
        """Seconds before each answer (a slow identity provider)."""
        self._requests = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{self.http}/.well-known/jwks.json"

    @property
    def requests(self) -> int:
        """Requests received so far (answered or not)."""
        with self._lock:
            return self._requests

    def start(self) -> JwksServer:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Let hanging requests go and stop listening (connections are then refused)."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._requests += 1
        if self.mode == "hang":
            self._release.wait(_HANG_LIMIT)
            return
        if self.delay:
            self._release.wait(self.delay)
        if self.mode == "error":
            request.send_error(500, "identity provider broken on purpose")
            return
        body = json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()
        request.send_response(200)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@contextlib.contextmanager
def jwks_server(*keys: SigningKey) -> Iterator[JwksServer]:
    """A started JwksServer serving `keys`, stopped at the end."""
    server = JwksServer(*keys).start()
    try:
        yield server
    finally:
        server.stop()
