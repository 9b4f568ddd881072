"""The Pod status the runner reports, computed from what it observed (pure).

Inputs are snapshots: the pod as stored, what each container's process is doing, the probes'
verdicts and the clock. The result is a JSON-merge-patch body for the status subresource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


class RunState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Termination:
    exit_code: int
    started_at: datetime | None
    finished_at: datetime
    container_id: str = ""
    message: str = ""
    signal: int | None = None
    reason_override: str | None = None  # StartError, OOMKilled...

    @property
    def reason(self) -> str:
        if self.reason_override:
            return self.reason_override
        return "Completed" if self.exit_code == 0 else "Error"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at) if self.started_at else None,
            "finishedAt": rfc3339(self.finished_at),
            "containerID": self.container_id or None,
        }
        if self.message:
            out["message"] = self.message
        if self.signal is not None:
            out["signal"] = self.signal
        return out


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    state: RunState
    restart_count: int = 0
    started_at: datetime | None = None  # of the running process
    container_id: str = ""
    terminated: Termination | None = None  # current state when TERMINATED
    last_terminated: Termination | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    ready: bool = False
    started: bool = False

    def as_dict(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.state is RunState.RUNNING:
            state = {"running": {"startedAt": rfc3339(self.started_at) if self.started_at else None}}
        elif self.state is RunState.TERMINATED and self.terminated is not None:
            state = {"terminated": self.terminated.as_dict()}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": self.container_id or None,
            "state": state,
            "lastState": {"terminated": self.last_terminated.as_dict()} if self.last_terminated else {},
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }


@dataclass(frozen=True)
class PodView:
    pod_ip: str | None
    host_ip: str
    start_time: datetime
    sandbox_ready: bool  # IP given and volumes materialised
    init_containers: Sequence[ContainerView]
    containers: Sequence[ContainerView]
    message: str = ""


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def init_phase(restart_policy: str, inits: Sequence[ContainerView]) -> str | None:
    """Pending while init containers run, Failed when one failed for good, None when all succeeded."""
    for view in inits:
        done = view.state is RunState.TERMINATED and view.terminated is not None
        if done and view.terminated is not None and view.terminated.exit_code == 0:
            continue
        if done and restart_policy == "Never":
            return "Failed"
        return "Pending"
    return None


def pod_phase(
    restart_policy: str, inits: Sequence[ContainerView], containers: Sequence[ContainerView]
) -> str:
    """The kubelet's getPhase, for processes instead of containers."""
    blocked = init_phase(restart_policy, inits)
    if blocked is not None:
        return blocked
    running = waiting = stopped = succeeded = 0
    for view in containers:
        if view.state is RunState.RUNNING:
            running += 1
        elif view.state is RunState.TERMINATED:
            stopped += 1
            succeeded += int(view.terminated is not None and view.terminated.exit_code == 0)
        elif view.last_terminated is not None:
            stopped += 1  # waiting to be restarted
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped == len(containers) and containers:
        if restart_policy == "Always":
            return "Running"
        if succeeded == len(containers):
            return "Succeeded"
        return "Failed" if restart_policy == "Never" else "Running"
    return "Pending"


def _condition(
    kind: str,
    ok: bool,
    previous: Mapping[str, Mapping[str, Any]],
    now: datetime,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind)
    changed_at = before.get("lastTransitionTime") if before and before.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": changed_at or rfc3339(now),
    }
    if not ok and reason:
        condition["reason"] = reason
    if not ok and message:
        condition["message"] = message
    return condition


def conditions(pod: Mapping[str, Any], view: PodView, phase: str, now: datetime) -> list[dict[str, Any]]:
    existing = (pod.get("status") or {}).get("conditions") or []
    previous = {c["type"]: c for c in existing}
    foreign = [c for c in existing if c["type"] not in OWNED_CONDITIONS]  # PodScheduled, DisruptionTarget...
    inits_ok = init_phase("Always", view.init_containers) is None
    unready = [c.name for c in view.containers if not c.ready]
    terminal = phase in TERMINAL_PHASES
    containers_ready = not unready and not terminal and view.sandbox_ready
    gates = [g["conditionType"] for g in (pod.get("spec") or {}).get("readinessGates") or []]
    gates_unready = [g for g in gates if (previous.get(g) or {}).get("status") != "True"]
    if terminal:
        reason, message = "PodCompleted", ""
    else:
        reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    uninitialised = [c.name for c in view.init_containers if c.state is not RunState.TERMINATED]
    ours = [
        _condition("PodReadyToStartContainers", view.sandbox_ready and not terminal, previous, now),
        _condition(
            "Initialized",
            inits_ok,
            previous,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(uninitialised)}]",
        ),
        _condition("ContainersReady", containers_ready, previous, now, reason, message),
    ]
    if containers_ready and gates_unready:
        ours.append(
            _condition(
                "Ready",
                False,
                previous,
                now,
                "ReadinessGatesNotReady",
                f"readiness gate {gates_unready[0]!r}: condition does not exist or is False",
            )
        )
    else:
        ours.append(_condition("Ready", containers_ready, previous, now, reason, message))
    return foreign + ours


def pod_status(pod: Mapping[str, Any], view: PodView, now: datetime) -> dict[str, Any]:
    """The status subresource body for `pod` given what the runner observed."""
    spec = pod.get("spec") or {}
    restart_policy = spec.get("restartPolicy", "Always")
    phase = pod_phase(restart_policy, view.init_containers, view.containers)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(pod, view, phase, now),
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "startTime": rfc3339(view.start_time),
        "containerStatuses": [c.as_dict() for c in view.containers],
        "message": view.message or None,
    }
    if view.init_containers:
        status["initContainerStatuses"] = [c.as_dict() for c in view.init_containers]
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    return status


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
