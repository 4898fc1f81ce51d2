"""What can go wrong with a request, in the words of the code that finds it out.

The data layer and the checks of what a client sent raise these; `app/handlers/errors.py` answers each with
its HTTP status, in one place. Every message is safe to show and says what to fix or do.
"""

from __future__ import annotations

import math


class Problem(Exception):
    """A request that cannot be done as asked; the message says why."""


class NotFound(Problem):
    """Something that does not exist, or that the caller may not see (404)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class Forbidden(Problem):
    """The caller is known but may not do this (403)."""


class Conflict(Problem):
    """The request clashes with what exists, and asking again will not change that (409)."""


class Unprocessable(Problem):
    """A well-formed request whose values cannot be accepted (422)."""


def whole_seconds(wait: float) -> int:
    """A wait as the whole seconds a `Retry-After` says (at least 1)."""
    return max(1, math.ceil(wait))


class TooMany(Problem):
    """Over a rate limit (429); `retry_after` is the whole seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
