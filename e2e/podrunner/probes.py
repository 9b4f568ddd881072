"""Probe specifications with Kubernetes' defaults, and the pure success/failure threshold logic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    handler: Mapping[str, Any]  # one of httpGet, tcpSocket, exec, grpc (as in the pod spec)
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def parse(cls, kind: ProbeKind, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
        if not probe:
            return None
        handler = {k: v for k, v in probe.items() if k in ("httpGet", "tcpSocket", "exec", "grpc")}
        return cls(
            kind=kind,
            handler=handler,
            initial_delay_s=float(probe.get("initialDelaySeconds", 0)),
            period_s=float(probe.get("periodSeconds", 10)),
            timeout_s=float(probe.get("timeoutSeconds", 1)),
            # Liveness and startup probes must use 1 (API validation); readiness may use more.
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )

    def describe(self) -> str:
        if "httpGet" in self.handler:
            get = self.handler["httpGet"]
            return f"http-get {get.get('scheme', 'HTTP').lower()}://:{get.get('port')}{get.get('path', '/')}"
        if "tcpSocket" in self.handler:
            return f"tcp-socket :{self.handler['tcpSocket'].get('port')}"
        if "exec" in self.handler:
            return "exec " + " ".join(self.handler["exec"].get("command") or [])
        return "grpc"


@dataclass(frozen=True)
class ProbeState:
    """The probe's current verdict and its consecutive run of outcomes."""

    passing: bool
    successes: int = 0
    failures: int = 0
    last_message: str = ""

    @classmethod
    def initial(cls, kind: ProbeKind) -> ProbeState:
        # Kubernetes: readiness starts as failure, liveness as success, startup as not yet passed.
        return cls(passing=kind is ProbeKind.LIVENESS)

    def observe(self, spec: ProbeSpec, ok: bool, message: str = "") -> ProbeState:
        if ok:
            successes = self.successes + 1
            passing = self.passing or successes >= spec.success_threshold
            return replace(self, passing=passing, successes=successes, failures=0, last_message=message)
        failures = self.failures + 1
        passing = self.passing and failures < spec.failure_threshold
        return replace(self, passing=passing, successes=0, failures=failures, last_message=message)


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise ValueError(f"probe port {port!r} is not a named port of container {container.get('name')!r}")
