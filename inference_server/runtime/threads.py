"""How many CPU threads this process may really use: the cgroup CPU quota, not the host's core count.

Thread oversubscription (more intra-op threads than the quota) costs several times the latency under a
CFS quota, so torch's intra-op pool is sized from here.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")  # v2's unified mount; v1's cpu controller is mounted at <root>/cpu
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")


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


def _upwards(base: Path, relative: str) -> list[Path]:
    """``base/relative`` and each of its ancestors up to ``base`` itself, deepest first."""
    parts = [p for p in relative.strip().strip("/").split("/") if p and p not in (".", "..")]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cpu_limit_from(proc_self_cgroup: str, root: Path) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in CPUs (None: unlimited).

    ``proc_self_cgroup`` is /proc/self/cgroup's text: v2's ``0::/path`` line, v1's line for the cpu
    controller. Inside a cgroup namespace (a Kubernetes pod) the path is ``/`` and the quota sits at the
    mount root; as a systemd service with ``CPUQuota=`` or in a container sharing the host's cgroup
    namespace it sits on the process's own, nested cgroup, or on an ancestor's. A path that does not
    exist under ``root`` (v1 containers see the host's path but have their own cgroup mounted at the
    root) just contributes the directories that do.
    """
    v2, v1 = "/", "/"
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    limits = [
        limit
        for directory in _upwards(root, v2)
        if (text := _read(directory / "cpu.max")) is not None and (limit := parse_cpu_max(text)) is not None
    ]
    for directory in _upwards(root / "cpu", v1):
        quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        with contextlib.suppress(ValueError):
            if quota and period and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
    return min(limits, default=None)


def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup (or the tightest of its ancestors') in CPUs, or None when
    unlimited/unknown."""
    return cpu_limit_from(_read(_PROC_SELF_CGROUP) or "", _CGROUP_ROOT)


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
