from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from e2e.podrunner.kube import WatchExpired
from e2e.podrunner.runner import READY_FILE, Runner, base_environment, node_internal_ip
from e2e.podrunner.worker import RunnerContext


def test_base_environment_puts_the_venv_first_and_inherits_little() -> None:
    environ = {
        "PATH": "/usr/bin:/venv/bin:/bin",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LANG": "C.UTF-8",
    }
    env = base_environment(environ, "/venv/bin/python", ("127.0.0.1", 6443))
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert env["HOME"] == "/root" and env["LANG"] == "C.UTF-8"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")


def test_base_environment_carries_the_cluster_marker_so_down_finds_orphans() -> None:
    environ = {"PATH": "/usr/bin", "SENTIMENT_CLUSTER_STATE": "/tmp/clusters/a"}
    env = base_environment(environ, "/venv/bin/python", ("127.0.0.1", 6443))
    assert env["SENTIMENT_CLUSTER_STATE"] == "/tmp/clusters/a"


def test_node_internal_ip_must_be_loopback() -> None:
    node = {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}
    assert node_internal_ip(node) == "127.0.0.1"
    assert (
        node_internal_ip({"status": {"addresses": [{"type": "InternalIP", "address": "10.1.2.3"}]}})
        == "127.0.0.1"
    )


class ExpiringWatch:
    """Lists one pod; its first watch expires (410), the second reports a new pod, then idles."""

    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0

    async def list_pods(self, node: str) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": [finished_pod("a")]}

    async def watch_pods(self, node: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watches += 1
        if self.watches == 1:
            raise WatchExpired("too old resource version")
        yield "ADDED", finished_pod("b")
        await asyncio.Event().wait()


def finished_pod(name: str) -> dict[str, Any]:
    # Succeeded pods need no processes: their workers only wait for deletion.
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "status": {"phase": "Succeeded"},
    }


async def test_an_expired_watch_lists_again_and_keeps_going(tmp_path: Path) -> None:
    kube = ExpiringWatch()
    runner = Runner(
        kubeconfig="unused", node="n", state_dir=tmp_path, pod_cidr="127.10.0.0/24", grace_cap_s=1
    )
    ctx = RunnerContext(
        kube=kube,  # type: ignore[arg-type]
        pool=runner.pool,
        node="n",
        host_ip="127.0.0.1",
        state_dir=tmp_path,
        base_env={},
        probe_client=None,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(runner._list_and_watch(ctx))
    try:
        for _ in range(200):
            if set(runner.workers) == {"uid-a", "uid-b"}:
                break
            await asyncio.sleep(0.01)
        assert set(runner.workers) == {"uid-a", "uid-b"}
        assert (kube.lists, kube.watches) == (2, 2)
        assert (tmp_path / READY_FILE).exists()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner._stop_workers()


def test_kubeconfig_bearer_token_becomes_a_header(tmp_path: Path) -> None:
    from e2e.podrunner.kube import load_endpoint

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: s3cret}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    endpoint = load_endpoint(str(kubeconfig))
    assert endpoint.headers == {"Authorization": "Bearer s3cret"}
    assert endpoint.host_port == ("127.0.0.1", 6443)
