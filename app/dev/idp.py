"""A stand-in for your identity provider, to try tracktalk with tokens like your users' (the worked
example of docs/hosting.md): an RSA key kept in a folder, its JWKS and an OpenID Connect discovery
document served on 127.0.0.1, and RS256 tokens signed with it, whose `sub` is any string.

    python -m app.dev.idp serve [--port 9000] [--home .idp]
    python -m app.dev.idp token SUBJECT [--username NAME] [--ttl SECONDS] [--home .idp]

Whichever runs first makes the key (`<home>/key.pem`, readable by its owner only; two at once
agree on one). Its tokens say `iss` http://127.0.0.1:9000 (or `--issuer`) and `aud` `tracktalk`.
Point tracktalk at it with TRACKTALK_JWKS_URL=http://127.0.0.1:9000/.well-known/jwks.json (and,
to check them, TRACKTALK_JWT_AUDIENCE=tracktalk and TRACKTALK_JWT_ISSUER=http://127.0.0.1:9000).

For development only: whoever can read the folder can sign in as anyone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

DEFAULT_PORT = 9000
DEFAULT_ISSUER = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_HOME = Path(".idp")
AUDIENCE = "tracktalk"
"""The `aud` of its tokens (set TRACKTALK_JWT_AUDIENCE to it to have tracktalk check it)."""
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"


class DevIdentityProvider:
    """The key kept in `home`, and what is made with it."""

    def __init__(self, home: Path = DEFAULT_HOME) -> None:
        self.home = home
        self._key: rsa.RSAPrivateKey | None = None

    @property
    def key(self) -> rsa.RSAPrivateKey:
        """The signing key: read from `<home>/key.pem`, made there on first use."""
        if self._key is None:
            path = self.home / "key.pem"
            self._key = _load(path) if path.exists() else _make_key(path)
        return self._key

    @property
    def kid(self) -> str:
        """The key's id: the start of the SHA-256 of its public key."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:16]

    def jwks(self) -> dict[str, Any]:
        """The JWKS: the one public key."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(
        self, subject: str, username: str | None = None, ttl: int = 3600, issuer: str = DEFAULT_ISSUER
    ) -> str:
        """An RS256 token for `subject`, as an identity provider issues them: `iss`, `aud`, `sub`,
        `iat`, `exp`, and `preferred_username` when given."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + ttl,
        }
        if username is not None:
            claims["preferred_username"] = username
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def server(self, port: int) -> ThreadingHTTPServer:
        """An HTTP server on 127.0.0.1:`port` for its JWKS and discovery document (open to every
        origin, as identity providers serve them)."""
        issuer = f"http://127.0.0.1:{port}"
        documents = {
            JWKS_PATH: self.jwks(),
            DISCOVERY_PATH: {
                "issuer": issuer,
                "jwks_uri": issuer + JWKS_PATH,
                "id_token_signing_alg_values_supported": ["RS256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
            },
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                document = documents.get(self.path.split("?", 1)[0])
                if document is None:
                    self.send_error(404, f"only {JWKS_PATH} and {DISCOVERY_PATH} are here")
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def _load(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit(f"{path} holds no RSA private key: delete it, and one is made")
    return key


def _make_key(path: Path) -> rsa.RSAPrivateKey:
    """A new key, kept at `path`; or the one kept there meanwhile (`serve &` and `token` run at
    once): written whole under another name, then linked, which fails when `path` exists."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    try:
        os.link(draft, path)
    except FileExistsError:
        key = _load(path)
    finally:
        draft.unlink()
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.dev.idp", description="A stand-in identity provider, for development only."
    )
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", type=Path, default=DEFAULT_HOME, help="where its key is kept (default .idp)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[home], help="serve its JWKS and discovery document")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"on 127.0.0.1 (default {DEFAULT_PORT})"
    )
    token = commands.add_parser("token", parents=[home], help="print a token for SUBJECT")
    token.add_argument("subject", help="the user's id at the identity provider, any string (`auth0|5f7c…`)")
    token.add_argument("--username", help="its preferred_username claim")
    token.add_argument("--ttl", type=int, default=3600, help="seconds it is valid (default 3600)")
    token.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"its iss claim (default {DEFAULT_ISSUER})")
    args = parser.parse_args(argv)
    idp = DevIdentityProvider(args.home)
    if args.command == "token":
        print(idp.token(args.subject, args.username, args.ttl, args.issuer))
        return 0
    server = idp.server(args.port)
    where = f"http://127.0.0.1:{args.port}"
    print(f"identity provider (for development): JWKS at {where}{JWKS_PATH}; Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
