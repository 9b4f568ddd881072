from __future__ import annotations

import pytest

from e2e.podrunner.probes import ProbeKind, ProbeSpec, ProbeState, resolve_port


def spec(kind: ProbeKind, **fields: int) -> ProbeSpec:
    parsed = ProbeSpec.parse(kind, {"httpGet": {"path": "/readyz", "port": 8080}, **fields})
    assert parsed is not None
    return parsed


def test_defaults_follow_kubernetes() -> None:
    probe = spec(ProbeKind.READINESS)
    assert (probe.period_s, probe.timeout_s, probe.success_threshold, probe.failure_threshold) == (
        10,
        1,
        1,
        3,
    )
    assert ProbeSpec.parse(ProbeKind.READINESS, None) is None


def test_readiness_needs_success_threshold_and_fails_after_failure_threshold() -> None:
    probe = spec(ProbeKind.READINESS, successThreshold=2, failureThreshold=2)
    state = ProbeState.initial(ProbeKind.READINESS)
    assert not state.passing
    state = state.observe(probe, True)
    assert not state.passing
    state = state.observe(probe, True)
    assert state.passing
    state = state.observe(probe, False)
    assert state.passing  # one failure is tolerated
    state = state.observe(probe, False)
    assert not state.passing


def test_liveness_starts_passing() -> None:
    probe = spec(ProbeKind.LIVENESS, failureThreshold=1)
    state = ProbeState.initial(ProbeKind.LIVENESS)
    assert state.passing
    assert not state.observe(probe, False).passing


def test_named_ports() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port("http", container) == 8080
    assert resolve_port(9090, container) == 9090
    with pytest.raises(ValueError, match="not a named port"):
        resolve_port("metrics", container)
