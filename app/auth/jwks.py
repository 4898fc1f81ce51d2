"""The identity provider's JWKS: its keys by `kid`, fetched over HTTP when needed, never often.

When a fetch happens:
- the first time a key is asked for, and again once the keys are `refresh` seconds old (a key
  removed from the JWKS stops working then); a token whose key is known does not wait for that
  fetch, it is checked with the keys at hand;
- when a token names a `kid` that is not among the keys (a key added by rotation), but at most
  once every `cooldown` seconds (30, or `refresh` if shorter): a flood of made-up kids costs the
  identity provider one request;
- never two at once: callers share the fetch in flight.

A fetch takes at most `FETCH_TIMEOUT` seconds. One that fails keeps the keys there were (a down
identity provider signs nobody out); a token whose key is not among them is then refused with
IdentityProviderUnavailable until the next fetch may be tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from app.auth.claims import IdentityProviderUnavailable, TokenError
from app.auth.keys import VerifyKey, key_from_jwk
from app.bounds import MAX_JWKS_BODY

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 3.0
"""Seconds a fetch of the JWKS may take, all of it (connect, wait, read), before it counts as failed."""
REFETCH_COOLDOWN = 30.0
"""Seconds between two fetches for an unknown kid, at least."""


class _Jwks(msgspec.Struct):
    keys: list[dict[str, Any]]


_decoder = msgspec.json.Decoder(_Jwks)


class JwksKeys:
    """The keys of one JWKS URL, by kid. Close with `aclose()` (it holds an HTTP client)."""

    def __init__(
        self,
        url: str,
        refresh: float,
        *,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        if _in_clear(url):
            log.warning(
                "TRACKTALK_JWKS_URL %s is plain http: whoever can change the traffic on its way can "
                "put in keys of their own and sign any token; use https",
                url,
            )
        self.refresh = refresh
        self.cooldown = min(REFETCH_COOLDOWN, refresh)
        self._timeout = timeout
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=timeout, headers={"accept": "application/json"})
        self._keys: dict[str, VerifyKey] = {}
        self._fetched_at: float | None = None
        """When the last fetch began (clock seconds), successful or not."""
        self._failed = False
        """Whether the last fetch failed."""
        self._fetch: asyncio.Task[None] | None = None
        self.generation = 0
        """Goes up whenever the key set changes (what was checked with the old set is checked again)."""

    def refresh_if_due(self) -> None:
        """Fetch the JWKS again in the background when the keys are older than `refresh`."""
        if self._since_fetch() >= self.refresh:
            self._start_fetch()

    async def key(self, kid: str) -> VerifyKey:
        """The key named `kid`; TokenError when the JWKS has none such, IdentityProviderUnavailable
        when it cannot be fetched to find out."""
        self.refresh_if_due()  # in the background for a known kid
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._since_fetch() >= self.cooldown:
            self._start_fetch()
        if self._fetch is not None:
            await asyncio.shield(self._fetch)
            key = self._keys.get(kid)
            if key is not None:
                return key
        if self._failed:
            raise IdentityProviderUnavailable(retry_after=self.cooldown - self._since_fetch())
        raise TokenError("invalid token: its key (kid) is not in the identity provider's JWKS")

    async def aclose(self) -> None:
        """Stop a fetch in flight and close the HTTP client."""
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch
        await self._client.aclose()

    def _since_fetch(self) -> float:
        if self._fetched_at is None:
            return float("inf")
        return self._clock() - self._fetched_at

    def _start_fetch(self) -> None:
        if self._fetch is None:
            self._fetched_at = self._clock()
            self._fetch = asyncio.create_task(self._refetch())

    async def _refetch(self) -> None:
        """Replace the keys with those the JWKS lists now; keep them when it cannot be read."""
        try:
            async with asyncio.timeout(self._timeout):
                keys = await self._download()
        except (httpx.HTTPError, TimeoutError, ValueError, msgspec.DecodeError) as exc:
            self._failed = True
            log.warning("the JWKS at %s cannot be fetched: %s", self.url, str(exc) or type(exc).__name__)
        except Exception:
            self._failed = True
            log.exception("fetching the JWKS at %s failed unforeseen", self.url)
        else:
            self._failed = False
            gone = self._keys.keys() - keys.keys()
            if gone:
                log.info("keys no longer in the JWKS, now refused: %s", ", ".join(sorted(gone)))
            if keys != self._keys:
                self.generation += 1
            self._keys = keys
        finally:
            self._fetch = None

    async def _download(self) -> dict[str, VerifyKey]:
        async with self._client.stream("GET", self.url) as response:
            if response.status_code != 200:
                raise ValueError(f"it answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BODY:
                    raise ValueError(f"it is larger than {MAX_JWKS_BODY} bytes")
        keys: dict[str, VerifyKey] = {}
        for jwk in _decoder.decode(body).keys:
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                log.warning("a key of the JWKS at %s has no kid: ignored", self.url)
                continue
            try:
                keys.setdefault(kid, key_from_jwk(jwk))
            except ValueError as exc:
                log.warning("the JWKS at %s: key %r %s; it is ignored", self.url, kid[:64], exc)
        if not keys:
            log.warning("the JWKS at %s lists no key that tracktalk can use", self.url)
        return keys


def _in_clear(url: str) -> bool:
    """Whether the JWKS travels unprotected: plain http to another host than this one."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
