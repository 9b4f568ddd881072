"""The PodWorker shell with real processes, against an in-memory stand-in for the pod API.

Only the runner's own decisions are checked here (what it runs, reports and cleans up); the
API server's behaviour is exercised by e2e/test_workloads.py against the real control plane.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.podrunner.backoff import Backoff
from e2e.podrunner.ipam import IpPool
from e2e.podrunner.worker import PodWorker, RunnerContext


class PodStore:
    """Holds one pod; applies the runner's status merge patches and records deletions."""

    def __init__(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.rv = 1
        self.deleted: list[str] = []
        self.configmaps: dict[str, dict[str, Any]] = {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.configmaps.get(path.rsplit("/", 1)[-1])

    async def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self.rv += 1
        self.pod = {**self.pod, "status": copy.deepcopy(dict(status))}
        self.pod["metadata"] = {**self.pod["metadata"], "resourceVersion": str(self.rv)}
        return copy.deepcopy(self.pod)

    async def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        self.deleted.append(uid)

    async def service_account_token(self, *args: Any) -> str:
        return "token"


def make_pod(containers: list[dict[str, Any]], restart_policy: str = "Always", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p1", "namespace": "ns", "uid": "uid-1", "resourceVersion": "1"},
        "spec": {"nodeName": "n", "restartPolicy": restart_policy, "containers": containers, **spec},
        "status": {"phase": "Pending"},
    }


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def harness(tmp_path: Path):
    clients: list[httpx.AsyncClient] = []
    tasks: list[asyncio.Task[None]] = []

    def start(pod: dict[str, Any]) -> tuple[PodStore, PodWorker, IpPool]:
        store = PodStore(pod)
        client = httpx.AsyncClient(trust_env=False)
        clients.append(client)
        pool = IpPool.parse("127.10.0.0/24")
        ctx = RunnerContext(
            kube=store,  # type: ignore[arg-type]
            pool=pool,
            node="n",
            host_ip="127.0.0.1",
            state_dir=tmp_path,
            base_env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
            probe_client=client,
            backoff=Backoff(base_s=0.05, cap_s=0.2),
            grace_cap_s=2.0,
        )
        worker = PodWorker(copy.deepcopy(pod), ctx)
        tasks.append(asyncio.create_task(worker.run()))
        return store, worker, pool

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for entry in pod.get("status", {}).get("conditions") or []:
        if entry["type"] == kind:
            return str(entry["status"])
    return None


async def test_server_pod_becomes_ready_serves_http_and_is_finalised_on_deletion(harness, tmp_path) -> None:
    container = {
        "name": "web",
        "command": ["python", "-m", "http.server", "$(PORT)", "--bind", "$(POD_IP)", "--directory", "/srv"],
        "ports": [{"containerPort": 8081}],
        "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8081}, "periodSeconds": 1},
        "volumeMounts": [{"name": "site", "mountPath": "/srv"}],
    }
    pod = make_pod([container], volumes=[{"name": "site", "configMap": {"name": "site"}}])
    store, worker, pool = harness(pod)
    store.configmaps["site"] = {"data": {"index.html": "hello from the pod"}}
    await eventually(lambda: condition(store.pod, "Ready") == "True", "Ready")
    ip = store.pod["status"]["podIP"]
    assert ip.startswith("127.10.0.")
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://{ip}:8081/index.html")
    assert response.text == "hello from the pod"
    log = tmp_path / "logs" / "ns" / "p1" / "web.log"
    assert "GET /index.html" in log.read_text()

    deleting = copy.deepcopy(store.pod)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T12:00:00Z"
    deleting["metadata"]["resourceVersion"] = str(store.rv + 1)
    worker.update(deleting)
    await eventually(lambda: store.deleted == ["uid-1"], "deletion")
    assert store.pod["status"]["phase"] in ("Succeeded", "Failed")  # terminal before it was deleted
    await eventually(lambda: pool.in_use() == {}, "IP release")


async def test_never_pod_fails_with_the_exit_code(harness) -> None:
    container = {"name": "job", "command": ["sh", "-c", "echo working; exit 3"]}
    store, _, _ = harness(make_pod([container], restart_policy="Never"))
    await eventually(lambda: store.pod["status"].get("phase") == "Failed", "Failed")
    terminated = store.pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")


async def test_exited_process_is_restarted_and_counted(harness) -> None:
    container = {"name": "flaky", "command": ["sh", "-c", "exit 1"]}
    store, _, _ = harness(make_pod([container]))

    def restarts() -> int:
        statuses = store.pod["status"].get("containerStatuses") or [{}]
        return int(statuses[0].get("restartCount", 0))

    await eventually(lambda: restarts() >= 2, "two restarts")
    last = store.pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 1
    assert store.pod["status"]["phase"] == "Running"


async def test_missing_config_map_keeps_the_pod_creating_with_a_reason(harness) -> None:
    container = {"name": "c", "command": ["sleep", "30"]}
    pod = make_pod([container], volumes=[{"name": "v", "configMap": {"name": "absent"}}])
    store, _, _ = harness(pod)
    await eventually(lambda: "containerStatuses" in store.pod["status"], "a status")
    waiting = store.pod["status"]["containerStatuses"][0]["state"]["waiting"]
    await eventually(
        lambda: (
            "absent" in store.pod["status"]["containerStatuses"][0]["state"]["waiting"].get("message", "")
        ),
        "the reason",
    )
    assert waiting["reason"] == "ContainerCreating"
    assert store.pod["status"]["phase"] == "Pending"


async def test_failing_liveness_probe_restarts_the_container(harness) -> None:
    container = {
        "name": "stuck",
        "command": ["sleep", "60"],
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
    }
    store, _, _ = harness(make_pod([container], terminationGracePeriodSeconds=1))

    def last_state() -> dict[str, Any]:
        statuses = store.pod["status"].get("containerStatuses") or [{}]
        return dict(statuses[0].get("lastState") or {})

    await eventually(lambda: "terminated" in last_state(), "a liveness kill")
    assert "Liveness probe failed" in last_state()["terminated"]["message"]
    assert last_state()["terminated"]["exitCode"] == 143  # SIGTERM


async def test_exec_probe_timeout_is_a_failure_and_kills_the_probe(tmp_path: Path) -> None:
    from e2e.podrunner.probes import ProbeKind, ProbeSpec
    from e2e.podrunner.probing import run_probe

    spec = ProbeSpec.parse(ProbeKind.READINESS, {"exec": {"command": ["sleep", "30"]}, "timeoutSeconds": 0.2})
    assert spec is not None
    async with httpx.AsyncClient(trust_env=False) as client:
        ok, message = await run_probe(
            spec,
            container={"name": "c"},
            pod_ip="127.10.0.1",
            env={"PATH": "/usr/bin:/bin"},
            cwd=str(tmp_path),
            client=client,
        )
        assert not ok and "timed out" in message
        ok, message = await run_probe(
            ProbeSpec(ProbeKind.READINESS, {"tcpSocket": {"port": 1}}),
            container={"name": "c"},
            pod_ip="127.10.0.1",
            env={},
            cwd=str(tmp_path),
            client=client,
        )
        assert not ok and "ConnectionRefusedError" in message


async def test_port_held_outside_the_pod_keeps_the_container_waiting_and_unready(harness) -> None:
    # The harness's pool hands out 127.10.0.1 first; a server of another cluster holds our port there.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.10.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    container = {
        "name": "web",
        "command": ["python", "-m", "http.server", str(port), "--bind", "$(POD_IP)"],
        "ports": [{"containerPort": port}],
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
    }
    try:
        store, _, _ = harness(make_pod([container]))

        def waiting() -> dict[str, Any]:
            statuses = store.pod["status"].get("containerStatuses") or [{}]
            return dict((statuses[0].get("state") or {}).get("waiting") or {})

        await eventually(lambda: waiting().get("reason") == "CreateContainerError", "CreateContainerError")
        assert store.pod["status"]["podIP"] == "127.10.0.1"
        assert f"127.10.0.1:{port}/TCP is already bound" in waiting()["message"]
        assert condition(store.pod, "Ready") == "False"
        assert store.pod["status"]["containerStatuses"][0]["restartCount"] == 0
    finally:
        holder.close()
    # Once the address is free the container starts and its own server makes it Ready.
    await eventually(lambda: condition(store.pod, "Ready") == "True", "Ready after the port was freed")
