"""How many CPU threads this process may really use: the cgroup CPU quota, not the host's core count.

Thread oversubscription (more intra-op threads than the quota) costs several times the latency under a
CFS quota, so torch's intra-op pool is sized from here.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

_CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("max 100000" → None, "150000 100000" → 1.5)."""
    parts = text.split()
    if len(parts) < 1 or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100_000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when unlimited/unknown."""
    v2 = _read(_CGROUP_V2_CPU_MAX)
    if v2 is not None:
        return parse_cpu_max(v2)
    quota, period = _read(_CGROUP_V1_QUOTA), _read(_CGROUP_V1_PERIOD)
    if quota and period and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None


def threads_for(quota: float | None, affinity: int) -> int:
    """Threads to use: the CPUs this process may be scheduled on, capped by the quota (at least 1)."""
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota - 1e-9) if quota >= 1 else 1))


def available_cpus() -> int:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threads_for(cgroup_cpu_limit(), affinity)


def configure_torch_threads(requested: int = 0) -> int:
    """Size torch's intra-op pool (``requested`` > 0 overrides the quota); returns the count used."""
    import torch

    n = requested if requested > 0 else available_cpus()
    torch.set_num_threads(n)
    # One inter-op thread: the server's passes run on its own forward workers (serving/batching.py). Raises
    # when inter-op work already started in this process (tests, jobs): then keep what is there.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return n
