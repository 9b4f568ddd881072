"""Restart decisions: whether an exited container restarts, and after how long."""

from __future__ import annotations

from dataclasses import dataclass

# Kubernetes starts at 10 s and caps at 5 min; tests and the demo need far quicker recovery.
DEFAULT_BASE_S = 1.0
DEFAULT_CAP_S = 10.0


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


@dataclass(frozen=True)
class Backoff:
    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S

    @property
    def reset_after_s(self) -> float:
        # Like the kubelet (which resets after 2 x its cap): a container that ran this long
        # without crashing is healthy again and restarts at once next time.
        return 2 * self.cap_s

    def next(self, level: int, ran_for_s: float) -> tuple[float, int]:
        """(delay before the next start, the new backoff level) after a run of `ran_for_s` seconds."""
        if ran_for_s >= self.reset_after_s:
            level = 0
        delay = min(self.cap_s, self.base_s * 2 ** (level - 1)) if level > 0 else 0.0
        return delay, min(level + 1, 32)
