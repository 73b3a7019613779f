"""Token buckets per key (a source IP), for endpoints anyone on the LAN can reach.

A key holds up to ``capacity`` tokens and regains ``per_s`` tokens a second;
each request takes one. With capacity 10 and 10/60 per second, a source gets
a burst of ten and then one request every six seconds, ~10 a minute.

``FailureGuard`` spends tokens on failed authentications only (a wrong
bearer, an unknown enrolment token), so a source that guesses is held off
while agents that present good credentials never are. ``AuditThrottle``
keeps the audit rows of refusals to one per key a minute, with a count of
the refusals in between, so a flood cannot fill the database.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    # The first refusal since this key was last allowed: worth one audit line,
    # where every refusal of a flood would drown the audit log.
    first_refusal: bool = False


@dataclass
class _Bucket:
    tokens: float
    updated: float
    refusing: bool = False


class TokenBucketLimiter:
    def __init__(
        self,
        *,
        capacity: float,
        per_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if capacity < 1 or per_s <= 0 or max_keys < 1:
            raise ValueError("capacity must be >= 1, per_s > 0 and max_keys >= 1")
        self.capacity = float(capacity)
        self.per_s = float(per_s)
        self._clock = clock
        self._max_keys = max_keys
        # Least recently used first, so the bound evicts idle sources.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> Decision:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self.capacity, updated=now)
            self._buckets[key] = bucket
            self._bound()
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refusing = False
            return Decision(allowed=True)
        first = not bucket.refusing
        bucket.refusing = True
        wait = (1.0 - bucket.tokens) / self.per_s
        return Decision(allowed=False, retry_after_s=wait, first_refusal=first)

    def peek(self, key: str) -> Decision:
        """Whether ``take`` would allow ``key`` now, without taking a token."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return Decision(allowed=True)
        elapsed = max(0.0, self._clock() - bucket.updated)
        tokens = min(self.capacity, bucket.tokens + elapsed * self.per_s)
        if tokens >= 1.0:
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after_s=(1.0 - tokens) / self.per_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bound(self) -> None:
        if len(self._buckets) <= self._max_keys:
            return
        # Full buckets carry no state worth keeping: drop those first.
        now = self._clock()
        refill = self.capacity / self.per_s
        for key in [k for k, b in self._buckets.items() if now - b.updated >= refill]:
            del self._buckets[key]
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


# Failed authentications a source may make in a burst, and per minute after it.
AUTH_FAILURE_BURST = 10
AUTH_FAILURES_PER_MINUTE = 10


class FailureGuard:
    """Failed authentications per source: once a source has spent its burst of
    failures it is refused (429) before its credentials are even looked at,
    until its bucket refills. Successes cost nothing."""

    def __init__(
        self,
        *,
        burst: float = AUTH_FAILURE_BURST,
        per_minute: float = AUTH_FAILURES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._limiter = TokenBucketLimiter(
            capacity=burst, per_s=per_minute / 60.0, clock=clock, max_keys=max_keys
        )

    def check(self, source: str) -> Decision:
        return self._limiter.peek(source)

    def failed(self, source: str) -> None:
        self._limiter.take(source)


AUDIT_WINDOW_S = 60.0
# Rows a throttle lets through per window across all keys: a flood from many
# addresses is bounded too.
AUDIT_ROWS_PER_WINDOW = 100


@dataclass
class _Seen:
    last_row: float
    suppressed: int = 0


class AuditThrottle:
    """At most one audit row per key (action and source) per window.

    ``admit`` answers None for a refusal that is only counted, or the number
    of refusals of that key left out since its previous row (0 for the first),
    which the row records as ``repeats``."""

    def __init__(
        self,
        *,
        window_s: float = AUDIT_WINDOW_S,
        rows_per_window: int = AUDIT_ROWS_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if window_s <= 0 or rows_per_window < 1 or max_keys < 1:
            raise ValueError("window_s must be > 0, rows_per_window and max_keys >= 1")
        self.window_s = window_s
        self._rows_per_window = rows_per_window
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._window_start = -math.inf
        self._rows_in_window = 0

    def admit(self, key: str) -> int | None:
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._rows_in_window = 0
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            if now - seen.last_row < self.window_s:
                seen.suppressed += 1
                return None
        if self._rows_in_window >= self._rows_per_window:
            if seen is None:
                seen = _Seen(last_row=-math.inf)
                self._remember(key, seen)
            seen.suppressed += 1
            return None
        self._rows_in_window += 1
        repeats = 0 if seen is None else seen.suppressed
        self._remember(key, _Seen(last_row=now))
        return repeats

    def _remember(self, key: str, seen: _Seen) -> None:
        self._seen[key] = seen
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
