"""Public keys of the host's identity provider, each with the one algorithm it verifies.

The algorithm comes from the key (a JWK's `kty`, `crv` and `alg`, or a PEM key's type), never
from a token: a token that names another algorithm is refused. Symmetric keys (a JWK of `kty`
`oct`) are never taken from the identity provider: HS256 is tracktalk's own, with its secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ALGORITHMS = ("RS256", "ES256", "EdDSA")
"""The algorithms of the identity provider's tokens that tracktalk verifies."""
MIN_RSA_BITS = 2048
"""Shorter RSA keys are refused (NIST SP 800-131A; PyJWT would only warn)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key and the one algorithm a token signed with it must name."""

    key: Any
    """The key as PyJWT takes it (a `cryptography` public key)."""
    algorithm: str


def key_from_pem(text: str) -> VerifyKey:
    """The key of a PEM `PUBLIC KEY` block; ValueError otherwise, its message a predicate
    ("is a private key: …") to follow the variable's name."""
    pem = text.strip().replace("\\n", "\n")  # an environment often holds the newlines escaped
    if "PRIVATE KEY" in pem:
        raise ValueError("is a private key: give the identity provider's public key (BEGIN PUBLIC KEY)")
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "is not a PEM public key: give the block from -----BEGIN PUBLIC KEY----- "
            "to -----END PUBLIC KEY-----"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return VerifyKey(_long_enough(key), "RS256")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return VerifyKey(key, "ES256")
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return VerifyKey(key, "EdDSA")
    raise ValueError(f"is a {type(key).__name__}: use an RSA, P-256 (EC) or Ed25519 public key")


def key_from_jwk(jwk: dict[str, Any]) -> VerifyKey:
    """The key of one JWK of a JWKS; ValueError when tracktalk cannot use it, its message a
    predicate ("has kty 'oct': …") to follow the key's name."""
    algorithm = _algorithm_of(jwk)
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"has use {jwk.get('use')!r}, not 'sig'")
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithm).key
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:  # a malformed member
        raise ValueError(f"is not a valid {algorithm} key ({type(exc).__name__})") from None
    return VerifyKey(_long_enough(key) if isinstance(key, rsa.RSAPublicKey) else key, algorithm)


def _long_enough(key: rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"is an RSA key of {key.key_size} bits: use one of {MIN_RSA_BITS} bits or more")
    return key


def _algorithm_of(jwk: dict[str, Any]) -> str:
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and crv == "P-256":
        algorithm = "ES256"
    elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
        algorithm = "EdDSA"
        alg = "EdDSA" if alg == crv else alg  # RFC 9864 names the algorithm after the curve
    else:
        raise ValueError(f"has kty {kty!r} and crv {crv!r}: not an RSA, P-256 (EC) or Ed25519 key")
    if alg is not None and alg != algorithm:
        raise ValueError(f"has alg {alg!r}, not one of {', '.join(ALGORITHMS)}")
    return algorithm
