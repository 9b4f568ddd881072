"""The runner: list and watch the Pods bound to the node, one PodWorker task per Pod (I/O shell)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from e2e.podrunner.ipam import IpPool
from e2e.podrunner.kube import ApiError, Kube, WatchExpired, load_endpoint
from e2e.podrunner.worker import PodWorker, RunnerContext

log = logging.getLogger("podrunner")

# Variables a container inherits from the runner: enough to run Python and find the caches.
# Everything else comes from the pod spec, as it would in a container.
INHERITED = (
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SENTIMENT_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "CI",
    # The cluster's marker (e2e/cluster/config.py STATE_ENV): `python -m e2e.cluster down` finds a
    # container's processes by it when the runner died without stopping them.
    "SENTIMENT_CLUSTER_STATE",
)
READY_FILE = "podrunner.ready"


def base_environment(environ: Mapping[str, str], executable: str, api: tuple[str, int]) -> dict[str, str]:
    """The environment every container starts from; the project venv's bin comes first on PATH."""
    venv_bin = str(Path(executable).parent)  # not resolved: the venv's python is a symlink
    path = [venv_bin] + [
        p for p in environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":") if p != venv_bin
    ]
    env = {key: environ[key] for key in INHERITED if key in environ}
    env["PATH"] = ":".join(path)
    env["PYTHONUNBUFFERED"] = "1"  # log files show output as it happens (a pod spec may override it)
    env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"] = api[0], str(api[1])
    env["KUBERNETES_SERVICE_PORT_HTTPS"] = str(api[1])
    return env


def node_internal_ip(node: Mapping[str, Any]) -> str:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP" and str(address.get("address", "")).startswith("127."):
            return str(address["address"])
    return "127.0.0.1"


class Runner:
    def __init__(
        self, *, kubeconfig: str, node: str, state_dir: Path, pod_cidr: str, grace_cap_s: float
    ) -> None:
        self.kubeconfig = kubeconfig
        self.node = node
        self.state_dir = state_dir
        self.pool = IpPool.parse(pod_cidr)
        self.grace_cap_s = grace_cap_s
        self.workers: dict[str, tuple[PodWorker, asyncio.Task[None]]] = {}
        # Pods this runner already deleted (grace 0) that linger while finalizers (the Job
        # controller's) are removed: their later events need no new worker.
        self.finalised: OrderedDict[str, None] = OrderedDict()

    async def run(self) -> None:
        endpoint = load_endpoint(self.kubeconfig)
        # Volumes of an earlier runner's pods: adopted pods get theirs written afresh.
        shutil.rmtree(self.state_dir / "pods", ignore_errors=True)
        kube = Kube(endpoint)
        probe_client = httpx.AsyncClient(
            verify=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        try:
            ca_bundle = Path(endpoint.ca_file).read_text() if endpoint.ca_file else ""
            ctx = RunnerContext(
                kube=kube,
                pool=self.pool,
                node=self.node,
                host_ip=node_internal_ip(await self._wait_for_node(kube)),
                state_dir=self.state_dir,
                base_env=base_environment(os.environ, sys.executable, endpoint.host_port),
                probe_client=probe_client,
                grace_cap_s=self.grace_cap_s,
                ca_bundle=ca_bundle,
            )
            log.info(
                "node %s: host IP %s, pod CIDR %s, state %s",
                self.node,
                ctx.host_ip,
                self.pool.cidr,
                self.state_dir,
            )
            await self._list_and_watch(ctx)
        finally:
            await self._stop_workers()
            await probe_client.aclose()
            await kube.close()
            (self.state_dir / READY_FILE).unlink(missing_ok=True)

    async def _wait_for_node(self, kube: Kube) -> dict[str, Any]:
        waited = 0
        while True:
            try:
                node = await kube.get(f"/api/v1/nodes/{self.node}")
            except (ApiError, httpx.HTTPError) as exc:
                node, reason = None, str(exc)
            else:
                reason = "not registered yet"
            if node is not None:
                return node
            if waited % 10 == 0:
                log.info("waiting for node %s: %s", self.node, reason)
            waited += 1
            await asyncio.sleep(1.0)

    async def _list_and_watch(self, ctx: RunnerContext) -> None:
        failures = 0
        while True:
            try:
                listing = await ctx.kube.list_pods(self.node)
                self._reconcile(listing.get("items") or [], ctx)
                (self.state_dir / READY_FILE).write_text(f"{os.getpid()}\n")
                resource_version = listing["metadata"]["resourceVersion"]
                while True:
                    async for kind, pod in ctx.kube.watch_pods(self.node, resource_version):
                        resource_version = pod["metadata"].get("resourceVersion", resource_version)
                        self._handle(kind, pod, ctx)
                        failures = 0
            except WatchExpired:
                log.info("watch expired; listing pods again")
            except (ApiError, httpx.HTTPError, OSError) as exc:
                failures += 1
                delay = min(2.0 ** min(failures, 4), 10.0)
                log.warning("pod watch failed (%s); listing again in %.0fs", exc, delay)
                await asyncio.sleep(delay)

    def _reconcile(self, pods: list[dict[str, Any]], ctx: RunnerContext) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._handle("MODIFIED", pod, ctx)
        for uid, (worker, _) in list(self.workers.items()):
            if uid not in seen:
                worker.vanish()
        for uid in [uid for uid in self.finalised if uid not in seen]:
            del self.finalised[uid]

    def _handle(self, kind: str, pod: dict[str, Any], ctx: RunnerContext) -> None:
        if kind == "BOOKMARK":
            return
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self.finalised.pop(uid, None)
            if uid in self.workers:
                self.workers[uid][0].vanish()
            return
        if uid in self.finalised:
            return
        if uid in self.workers:
            self.workers[uid][0].update(pod)
            return
        worker = PodWorker(pod, ctx)
        task = asyncio.create_task(worker.run(), name=f"pod {worker.key}")
        self.workers[uid] = (worker, task)
        task.add_done_callback(lambda _: self._forget(worker))
        log.info("pod %s: bound to %s (uid %s)", worker.key, self.node, uid)

    def _forget(self, worker: PodWorker) -> None:
        self.workers.pop(worker.uid, None)
        if worker.finalised:
            self.finalised[worker.uid] = None
            while len(self.finalised) > 10_000:
                self.finalised.popitem(last=False)

    async def _stop_workers(self) -> None:
        tasks = [task for _, task in self.workers.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            log.info("stopping %d pod(s)", len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)
