"""Pod status computation: phases by restart policy, conditions and their transition times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from e2e.podrunner.status import ContainerView, PodView, RunState, Termination, pod_phase, pod_status

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def running(name: str = "c", ready: bool = True) -> ContainerView:
    return ContainerView(
        name=name, image="img", state=RunState.RUNNING, started_at=T0, ready=ready, started=True
    )


def exited(code: int, name: str = "c") -> ContainerView:
    term = Termination(code, T0, T0 + timedelta(seconds=3), container_id="process://42")
    return ContainerView(
        name=name, image="img", state=RunState.TERMINATED, terminated=term, container_id="process://42"
    )


def backing_off(code: int, name: str = "c") -> ContainerView:
    term = Termination(code, T0, T0 + timedelta(seconds=3))
    return ContainerView(
        name=name,
        image="img",
        state=RunState.WAITING,
        waiting_reason="CrashLoopBackOff",
        last_terminated=term,
        restart_count=2,
    )


def creating(name: str = "c") -> ContainerView:
    return ContainerView(name=name, image="img", state=RunState.WAITING)


@pytest.mark.parametrize(
    ("policy", "containers", "phase"),
    [
        ("Always", [creating()], "Pending"),
        ("Always", [running()], "Running"),
        ("Always", [backing_off(1)], "Running"),
        ("Never", [exited(0), exited(0, "d")], "Succeeded"),
        ("Never", [exited(0), exited(2, "d")], "Failed"),
        ("Never", [exited(2), running("d")], "Running"),
        ("OnFailure", [exited(0)], "Succeeded"),
        ("OnFailure", [backing_off(1)], "Running"),
    ],
)
def test_phase(policy: str, containers: list[ContainerView], phase: str) -> None:
    assert pod_phase(policy, [], containers) == phase


def test_init_containers_gate_the_phase() -> None:
    assert pod_phase("Always", [running("init")], [creating()]) == "Pending"
    assert pod_phase("Never", [exited(1, "init")], [creating()]) == "Failed"
    assert pod_phase("Always", [exited(0, "init")], [running()]) == "Running"


def view(containers: list[ContainerView], ip: str | None = "127.10.0.9") -> PodView:
    return PodView(
        pod_ip=ip,
        host_ip="127.0.0.1",
        start_time=T0,
        sandbox_ready=ip is not None,
        init_containers=[],
        containers=containers,
    )


POD = {
    "metadata": {"name": "p", "namespace": "n"},
    "spec": {"restartPolicy": "Always", "containers": [{"name": "c"}]},
    "status": {
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-28T11:59:00Z"}
        ]
    },
}


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_pod_reports_ip_and_ready_conditions_and_keeps_pod_scheduled() -> None:
    status = pod_status(POD, view([running()]), T0)
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.10.0.9" and status["podIPs"] == [{"ip": "127.10.0.9"}]
    conds = conditions(status)
    assert conds["PodScheduled"]["lastTransitionTime"] == "2026-11-28T11:59:00Z"
    assert conds["Ready"]["status"] == "True" and conds["ContainersReady"]["status"] == "True"
    assert status["containerStatuses"][0]["state"] == {"running": {"startedAt": "2026-11-28T12:00:00Z"}}


def test_unready_container_names_itself_and_transition_time_moves_only_on_change() -> None:
    first = pod_status(POD, view([running(ready=False)]), T0)
    ready = conditions(first)["Ready"]
    assert ready["status"] == "False" and "[c]" in ready["message"]
    later = T0 + timedelta(minutes=5)
    unchanged = pod_status({**POD, "status": first}, view([running(ready=False)]), later)
    assert conditions(unchanged)["Ready"]["lastTransitionTime"] == ready["lastTransitionTime"]
    flipped = pod_status({**POD, "status": first}, view([running(ready=True)]), later)
    assert conditions(flipped)["Ready"]["lastTransitionTime"] == "2026-11-28T12:05:00Z"


def test_failed_job_pod_shows_exit_code_and_reason() -> None:
    pod = {**POD, "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}
    status = pod_status(pod, view([exited(3)]), T0)
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert conditions(status)["Ready"]["reason"] == "PodCompleted"
    succeeded = pod_status(pod, view([exited(0)]), T0)
    assert succeeded["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_restarting_container_reports_last_state_and_count() -> None:
    status = pod_status(POD, view([backing_off(7)]), T0)
    entry = status["containerStatuses"][0]
    assert entry["restartCount"] == 2
    assert entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert entry["lastState"]["terminated"]["exitCode"] == 7


def test_readiness_gates_hold_ready_back() -> None:
    pod = {**POD, "spec": {**POD["spec"], "readinessGates": [{"conditionType": "example.com/lb"}]}}
    ready = conditions(pod_status(pod, view([running()]), T0))["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"


def test_pod_without_ip_reports_none_yet() -> None:
    status = pod_status(POD, view([creating()], ip=None), T0)
    assert "podIP" not in status and status["phase"] == "Pending"
