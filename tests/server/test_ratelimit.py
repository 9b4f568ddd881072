"""Token buckets (pure decision, injected clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference_server.serving.ratelimit import Bucket, RateLimiter, retry_after_header, take


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, burst=2, clock=lambda: now[0])
    assert limiter.try_acquire().allowed and limiter.try_acquire().allowed
    denied = limiter.try_acquire()
    assert not denied.allowed and denied.retry_after_s == 0.5
    now[0] += 0.5
    assert limiter.try_acquire().allowed
    now[0] += 60  # idle for a minute: still only `burst` requests at once
    assert [limiter.try_acquire().allowed for _ in range(3)] == [True, True, False]


def test_disabled_limiter_always_allows() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled and all(limiter.try_acquire().allowed for _ in range(1000))


@given(st.floats(0.01, 1000), st.floats(1, 100), st.floats(0, 1000), st.floats(0, 100))
def test_denial_says_exactly_how_long_to_wait(rate: float, burst: float, tokens: float, dt: float) -> None:
    bucket = Bucket(min(tokens, burst), 0.0)
    _, decision = take(bucket, dt, rate=rate, burst=burst)
    if not decision.allowed:
        later, _ = take(bucket, dt, rate=rate, burst=burst)
        _, retry = take(later, dt + decision.retry_after_s + 1e-9, rate=rate, burst=burst)
        assert retry.allowed


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2" and retry_after_header(3) == "3"
