"""How often a unit of work is tried, and how long it rests between tries.

Every kind of work (triaging an image, building a study's report, sending
an object, making a map) counts its attempts in the database and, when a
try fails, asks its ``RetryPolicy`` how long to rest before the next; past
the last delay it is parked in a terminal state with its reason. The
policies differ only in their numbers.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential delay: ``first`` seconds, doubling, at most ``ceiling``."""

    first: float = 1.0
    ceiling: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError('Argument "attempt" must be at least 1.')
        return float(min(self.ceiling, self.first * 2 ** (attempt - 1)))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``delays[n - 1]`` is the rest after failed attempt ``n``; one more attempt
    than there are delays, then the work is given up."""

    delays: tuple[float, ...]

    @classmethod
    def exponential(cls, attempts: int, backoff: Backoff) -> RetryPolicy:
        """``attempts`` tries in all, resting as ``backoff`` says between them."""
        if attempts < 1:
            raise ValueError('Argument "attempts" must be at least 1.')
        return cls(tuple(backoff.delay(n) for n in range(1, attempts)))

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def after_failure(self, attempts: int) -> float | None:
        """Seconds to rest after ``attempts`` failed tries, or None: give up."""
        if attempts < 1:
            raise ValueError('Argument "attempts" must be at least 1.')
        return self.delays[attempts - 1] if attempts <= len(self.delays) else None
