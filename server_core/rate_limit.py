"""Token buckets per key (a source IP), for endpoints anyone on the LAN can reach.

A key holds up to ``capacity`` tokens and regains ``per_s`` tokens a second;
each request takes one. With capacity 10 and 10/60 per second, a source gets
a burst of ten and then one request every six seconds, ~10 a minute.
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
