"""How much CPU processes *other than the benchmark* used while it ran (Linux ``/proc``).

The 1-minute load average counts the benchmark's own servers, load generator and in-process passes, so
it is high on a quiet machine under load and says nothing about neighbours. Here: the CPU time the
kernel counts for the CPUs the benchmark may run on (the ``cpuN`` lines of ``/proc/stat`` for its CPU
affinity: on a cpuset-limited host, work on cores it cannot use is no neighbour of it) minus the CPU
time of the benchmark's process tree (this process, its live descendants and the descendants it has
reaped, from ``/proc/<pid>/stat``), sampled at phase boundaries. What is left is what others took from
the cores the benchmark measured on.

Parsing and the arithmetic are pure (tested); ``CpuMonitor`` only reads ``/proc``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# Below this, an interval's share is dominated by the clock tick (10 ms per CPU): not used for the max.
MIN_INTERVAL_S = 1.0
# Others' average use above which the report warns that the machine was busy (a quarter of a core
# taken from 2 cores moves throughput by more than the run-to-run noise of the paired rounds).
BUSY_CORES = 0.25


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative clock ticks since boot over a set of CPUs: busy (user, nice, system), stolen by the
    hypervisor."""

    busy: int
    steal: int


def parse_proc_stat(text: str, cpus: Iterable[int]) -> CpuTimes:
    """The ``cpuN`` lines of ``/proc/stat`` for N in ``cpus``, added up (a CPU without a line, e.g.
    offline, counts nothing). Busy is user + nice + system (a niced neighbour counts: it still takes
    cycles whenever the benchmark sleeps); irq and softirq are left out because the kernel charges the
    benchmark's own loopback traffic there, to no process."""
    wanted = {f"cpu{n}" for n in cpus}
    busy = steal = 0
    found = False
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] not in wanted:
            continue
        values = [int(x) for x in fields[1:]]
        values += [0] * (8 - len(values))
        user, nice, system, _idle, _iowait, _irq, _softirq, cpu_steal = values[:8]
        busy += user + nice + system
        steal += cpu_steal
        found = True
    if not found:
        raise ValueError("no 'cpuN' line in /proc/stat for the CPUs asked for")
    return CpuTimes(busy, steal)


class TaskStat(NamedTuple):
    """The fields of one ``/proc/<pid>/stat`` (or ``/proc/<pid>/task/<tid>/stat``) the bench reads, in
    clock ticks: the task's own user and system time, and that of the children it has reaped."""

    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int


def parse_task_stat(text: str) -> TaskStat:
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces or ')'
    return TaskStat(int(fields[1]), *(int(fields[i]) for i in (11, 12, 13, 14)))


def parse_pid_stat(text: str) -> tuple[int, int]:
    """(parent pid, clock ticks) of one ``/proc/<pid>/stat``: its own user + system time plus that of
    the children it has reaped (cutime, cstime), so a finished load generator is still counted."""
    s = parse_task_stat(text)
    return s.ppid, s.utime + s.stime + s.cutime + s.cstime


def tree_ticks(root: int, processes: Mapping[int, tuple[int, int]]) -> int:
    """Ticks of ``root`` and every live descendant, from pid → (ppid, ticks)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in processes.items():
        children.setdefault(ppid, []).append(pid)
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in processes:
            continue
        seen.add(pid)
        total += processes[pid][1]
        stack.extend(children.get(pid, ()))
    return total


@dataclass(frozen=True)
class CpuSample:
    label: str  # the phase that ends at this sample
    at_s: float  # monotonic seconds
    times: CpuTimes
    tree: int  # ticks of the benchmark's process tree


@dataclass(frozen=True)
class Phase:
    label: str
    seconds: float
    other_cores: float  # CPU others used in the phase, in cores (1.0 = one core all the time)
    steal_cores: float


@dataclass(frozen=True)
class OthersCpu:
    """Cores used by processes other than the benchmark over the run: the average over all of it and
    the highest phase of at least ``MIN_INTERVAL_S``."""

    seconds: float
    mean_cores: float
    max_cores: float
    max_phase: str
    steal_mean_cores: float
    phases: list[Phase] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.mean_cores > BUSY_CORES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OthersCpu:
        return cls(
            **{k: v for k, v in data.items() if k != "phases"},
            phases=[Phase(**p) for p in data.get("phases", [])],
        )


def phases(samples: Sequence[CpuSample], ticks_per_s: float) -> list[Phase]:
    out = []
    for a, b in itertools.pairwise(samples):
        seconds = b.at_s - a.at_s
        if seconds <= 0:
            continue
        others = (b.times.busy - a.times.busy) - (b.tree - a.tree)
        # Never below zero: ticks are sampled a moment apart in the two files.
        cores = max(0.0, others / ticks_per_s / seconds)
        steal = max(0.0, (b.times.steal - a.times.steal) / ticks_per_s / seconds)
        out.append(Phase(b.label, seconds, cores, steal))
    return out


def summarise_others(samples: Sequence[CpuSample], ticks_per_s: float) -> OthersCpu | None:
    """None with fewer than two samples."""
    parts = phases(samples, ticks_per_s)
    if not parts:
        return None
    seconds = sum(p.seconds for p in parts)
    mean = sum(p.other_cores * p.seconds for p in parts) / seconds
    steal = sum(p.steal_cores * p.seconds for p in parts) / seconds
    long_enough = [p for p in parts if p.seconds >= MIN_INTERVAL_S] or parts
    top = max(long_enough, key=lambda p: p.other_cores)
    return OthersCpu(seconds, mean, top.other_cores, top.label, steal, parts)


def _read_processes(pids: Iterable[str]) -> dict[int, tuple[int, int]]:
    out = {}
    for name in pids:
        if not name.isdigit():
            continue
        try:
            out[int(name)] = parse_pid_stat(Path(f"/proc/{name}/stat").read_text())
        except (OSError, ValueError, IndexError):  # gone between listing and reading
            continue
    return out


class CpuMonitor:
    """Samples at phase boundaries (``mark``); cheap enough (one /proc scan, a few ms) to call around
    every load-generator run. Without ``/proc`` it records nothing and ``summary`` is None."""

    def __init__(self) -> None:
        self.root = os.getpid()
        # The CPUs the benchmark and its children may run on (none without the call: nothing recorded).
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.cpus = frozenset(affinity)
        self.samples: list[CpuSample] = []
        self.ticks_per_s = float(os.sysconf("SC_CLK_TCK"))

    def mark(self, label: str) -> None:
        try:
            times = parse_proc_stat(Path("/proc/stat").read_text(), self.cpus)
            tree = tree_ticks(self.root, _read_processes(os.listdir("/proc")))
        except (OSError, ValueError):
            return
        self.samples.append(CpuSample(label, time.monotonic(), times, tree))

    def summary(self) -> OthersCpu | None:
        return summarise_others(self.samples, self.ticks_per_s)
