from __future__ import annotations

import pytest

from e2e.podrunner.backoff import Backoff, should_restart


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 3, True),
        ("Never", 0, False),
        ("Never", 1, False),
    ],
)
def test_restart_policy(policy: str, code: int, expected: bool) -> None:
    assert should_restart(policy, code) is expected


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    level, delays = 0, []
    for _ in range(7):
        delay, level = backoff.next(level, ran_for_s=0.1)
        delays.append(delay)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_long_healthy_run_resets_the_backoff() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    delay, level = backoff.next(5, ran_for_s=backoff.reset_after_s + 1)
    assert (delay, level) == (0.0, 1)
