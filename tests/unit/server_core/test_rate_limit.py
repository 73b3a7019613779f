"""Token buckets per source: burst, refill, first-refusal flag, bounded memory."""

from __future__ import annotations

import pytest

from server_core.rate_limit import TokenBucketLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_every_six_seconds() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(capacity=10, per_s=10 / 60, clock=clock)
    assert all(limiter.take("a").allowed for _ in range(10))
    refused = limiter.take("a")
    assert not refused.allowed and refused.first_refusal
    assert refused.retry_after_s == pytest.approx(6.0)
    again = limiter.take("a")
    assert not again.allowed and not again.first_refusal
    clock.now += 5.9
    assert not limiter.take("a").allowed
    clock.now += 0.2
    assert limiter.take("a").allowed
    # Allowed again: the next refusal is a "first" one again (worth an audit line).
    assert limiter.take("a").first_refusal
    # A minute of quiet refills the bucket completely, never beyond it.
    clock.now += 3600
    assert sum(limiter.take("a").allowed for _ in range(20)) == 10


def test_sources_have_their_own_buckets() -> None:
    limiter = TokenBucketLimiter(capacity=2, per_s=1, clock=Clock())
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.take("b").allowed


def test_memory_stays_bounded_under_many_sources() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(capacity=1, per_s=1 / 60, clock=clock, max_keys=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    # The most recent sources keep their (empty) buckets.
    assert not limiter.take("10.0.3.231").allowed


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(5.2) == "6"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(capacity=0, per_s=1)
