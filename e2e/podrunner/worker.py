"""One Pod's lifecycle on the fake node: sandbox, init containers, containers, probes, deletion (I/O shell).

Decisions come from the pure modules: env resolution (env), path translation (paths), restart
policy and backoff (backoff), probe thresholds (probes) and the reported status (status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from e2e.podrunner.backoff import Backoff, should_restart
from e2e.podrunner.env import ConfigError, Sources, configmap_data, expand_all, resolve_env, secret_data
from e2e.podrunner.ipam import IpPool
from e2e.podrunner.kube import ApiError, Kube
from e2e.podrunner.paths import MountTable
from e2e.podrunner.ports import bound_elsewhere, conflict_message, declared_ports
from e2e.podrunner.probes import ProbeKind, ProbeSpec, ProbeState
from e2e.podrunner.probing import run_probe
from e2e.podrunner.processes import ContainerProcess, StartError
from e2e.podrunner.status import (
    TERMINAL_PHASES,
    ContainerView,
    PodView,
    RunState,
    Termination,
    is_terminal,
    parse_time,
    pod_status,
)
from e2e.podrunner.volumes import mount_sources, plan_volume, referenced_names, token_requests, write_volume

log = logging.getLogger("podrunner")

RETRY_CONFIG_S = 2.0
# Status is recomputed at least this often, so a patch that failed (API server restarting) is retried.
RESYNC_S = 10.0
MOUNTS_ENV = "PODRUNNER_MOUNTS"


@dataclass
class RunnerContext:
    kube: Kube
    pool: IpPool
    node: str
    host_ip: str
    state_dir: Path
    base_env: Mapping[str, str]
    probe_client: httpx.AsyncClient
    backoff: Backoff = field(default_factory=Backoff)
    grace_cap_s: float = 10.0
    ca_bundle: str = ""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Slot:
    """What the runner knows about one container (the mutable shell-side record)."""

    spec: dict[str, Any]
    init: bool
    restart_policy: str
    process: ContainerProcess | None = None
    runs: int = 0
    restart_count: int = 0
    backoff_level: int = 0
    started_at: datetime | None = None
    started_mono: float = 0.0
    next_start: float | None = 0.0  # loop time of the next start; None: never again
    backoff_s: float = 0.0
    terminated: Termination | None = None
    last_terminated: Termination | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    probes: dict[ProbeKind, ProbeSpec] = field(default_factory=dict)
    verdicts: dict[ProbeKind, ProbeState] = field(default_factory=dict)
    kill_message: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def succeeded(self) -> bool:
        return self.terminated is not None and self.terminated.exit_code == 0 and self.next_start is None

    def view(self) -> ContainerView:
        started = self.process is not None and (
            ProbeKind.STARTUP not in self.probes or self.verdicts[ProbeKind.STARTUP].passing
        )
        ready = started and (
            ProbeKind.READINESS not in self.probes or self.verdicts[ProbeKind.READINESS].passing
        )
        common = {
            "name": self.name,
            "image": str(self.spec.get("image", "")),
            "restart_count": self.restart_count,
            "last_terminated": self.last_terminated,
        }
        if self.process is not None:
            return ContainerView(
                state=RunState.RUNNING,
                started_at=self.started_at,
                container_id=f"process://{self.process.pid}",
                ready=ready,
                started=started,
                **common,  # type: ignore[arg-type]
            )
        if self.next_start is None and self.terminated is not None:
            return ContainerView(
                state=RunState.TERMINATED,
                terminated=self.terminated,
                container_id=self.terminated.container_id,
                **common,  # type: ignore[arg-type]
            )
        return ContainerView(
            state=RunState.WAITING,
            waiting_reason=self.waiting_reason,
            waiting_message=self.waiting_message,
            **common,  # type: ignore[arg-type]
        )


def _slot_from_status(
    spec: dict[str, Any], init: bool, policy: str, previous: Mapping[str, Any] | None
) -> Slot:
    slot = Slot(spec=spec, init=init, restart_policy=policy)
    for kind, key in (
        (ProbeKind.STARTUP, "startupProbe"),
        (ProbeKind.READINESS, "readinessProbe"),
        (ProbeKind.LIVENESS, "livenessProbe"),
    ):
        probe = None if init else ProbeSpec.parse(kind, spec.get(key))
        if probe is not None:
            slot.probes[kind] = probe
            slot.verdicts[kind] = ProbeState.initial(kind)
    if previous:
        # Adopting a pod from an earlier runner: keep its restart count monotonic.
        slot.restart_count = int(previous.get("restartCount", 0))
        state = previous.get("state") or {}
        slot.runs = int("running" in state or "terminated" in state)
    return slot


class PodWorker:
    def __init__(self, pod: dict[str, Any], ctx: RunnerContext) -> None:
        self.pod = pod
        self.ctx = ctx
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.key = f"{self.namespace}/{self.name}"
        self.wake = asyncio.Event()
        self.gone = False
        self.finalised = False  # deleted from the API server by this worker
        self.pod_ip: str | None = None
        self.sandbox_ready = False
        self.message = ""
        self.last_sent: dict[str, Any] | None = None
        spec = pod.get("spec") or {}
        policy = spec.get("restartPolicy", "Always")
        init_policy = "Never" if policy == "Never" else "OnFailure"
        previous = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        previous_init = {s["name"]: s for s in (pod.get("status") or {}).get("initContainerStatuses") or []}
        self.inits = [
            _slot_from_status(c, True, init_policy, previous_init.get(c["name"]))
            for c in spec.get("initContainers") or []
        ]
        self.containers = [
            _slot_from_status(c, False, policy, previous.get(c["name"])) for c in spec.get("containers") or []
        ]
        self.start_time = parse_time((pod.get("status") or {}).get("startTime")) or utcnow()
        base = ctx.state_dir / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.volumes_dir = base / "volumes"
        self.root_dir = base / "root"
        self.logs_dir = ctx.state_dir / "logs" / self.namespace / self.name
        self.local_volumes: dict[str, str] = {}
        self.sources = Sources()

    # --- events from the runner -------------------------------------------------------------
    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def update(self, pod: dict[str, Any]) -> None:
        if _rv(pod) >= _rv(self.pod):
            self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        """The pod is gone from the API server (deleted by someone else, with grace 0)."""
        self.gone = True
        self.wake.set()

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if not (is_terminal(self.pod) or self.deleting):
                await self._lifecycle()
            await self._until(lambda: self.deleting or self.gone, None)
            await self._finish()
        except asyncio.CancelledError:
            await asyncio.shield(self._stop_all(min(self.ctx.grace_cap_s, 5.0)))
            raise
        except Exception:
            log.exception("pod %s: runner error; stopping its processes", self.key)
            await self._stop_all(min(self.ctx.grace_cap_s, 5.0))
        finally:
            self.ctx.pool.release(self.uid)
            shutil.rmtree(self.volumes_dir.parent, ignore_errors=True)

    async def _lifecycle(self) -> None:
        if (self.pod.get("spec") or {}).get("hostNetwork"):
            self.pod_ip = self.ctx.host_ip
        else:
            previous_ip = (self.pod.get("status") or {}).get("podIP")
            self.pod_ip = self.ctx.pool.allocate(self.uid, previous_ip)
        log.info("pod %s: IP %s", self.key, self.pod_ip)
        await self._report()
        await self._prepare_sandbox()
        loop = asyncio.get_running_loop()
        while not (self.deleting or self.gone):
            for slot in self._active():
                if slot.process is None and slot.next_start is not None and slot.next_start <= loop.time():
                    await self._start(slot)
            phase = await self._report()
            if phase in TERMINAL_PHASES:
                log.info("pod %s: %s", self.key, phase)
                return
            due = [s.next_start for s in self._active() if s.process is None and s.next_start is not None]
            timeout = max(0.0, min(due) - loop.time()) if due else RESYNC_S
            await self._sleep(min(timeout, RESYNC_S))

    def _active(self) -> list[Slot]:
        """The first init container that has not succeeded, else every container."""
        for slot in self.inits:
            if not slot.succeeded:
                return [slot]
        return self.containers

    async def _sleep(self, timeout: float | None) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can turn a cancellation that races
        # its timeout into TimeoutError, and the worker would then ignore the runner's shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()
        self.wake.clear()

    async def _until(self, condition: Any, timeout: float | None) -> None:
        while not condition():
            await self._sleep(timeout)

    # --- sandbox ------------------------------------------------------------------------------
    async def _fetch_sources(self) -> Sources:
        configmaps, secrets = referenced_names(self.pod)
        cms: dict[str, dict[str, str]] = {}
        secs: dict[str, dict[str, str]] = {}
        for name in sorted(configmaps):
            obj = await self.ctx.kube.get(f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
            if obj is not None:
                cms[name] = configmap_data(obj)
        for name in sorted(secrets):
            obj = await self.ctx.kube.get(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
            if obj is not None:
                secs[name] = secret_data(obj)
        return Sources(cms, secs)

    async def _prepare_sandbox(self) -> None:
        """Materialise the volumes; until every source exists the pod stays ContainerCreating."""
        spec = self.pod.get("spec") or {}
        service_account = spec.get("serviceAccountName") or "default"
        while not (self.deleting or self.gone):
            try:
                self.sources = await self._fetch_sources()
                tokens = {
                    key: await self.ctx.kube.service_account_token(
                        self.namespace, service_account, self.pod, key[0], key[1]
                    )
                    for key in token_requests(self.pod)
                }
                for volume in spec.get("volumes") or []:
                    plan = plan_volume(
                        volume,
                        self.pod,
                        sources=self.sources,
                        pod_ip=self.pod_ip or "",
                        host_ip=self.ctx.host_ip,
                        tokens=tokens,
                        ca_bundle=self.ctx.ca_bundle,
                    )
                    if plan.host_path is not None:
                        self.local_volumes[plan.name] = plan.host_path
                        continue
                    if plan.claim is not None:
                        directory = self.ctx.state_dir / "pvcs" / self.namespace / plan.claim
                    else:
                        directory = self.volumes_dir / plan.name
                    write_volume(plan, directory)
                    self.local_volumes[plan.name] = str(directory)
                self.root_dir.mkdir(parents=True, exist_ok=True)
                self.sandbox_ready = True
                self.message = ""
                return
            except (ConfigError, ApiError, httpx.HTTPError) as exc:
                self._set_waiting("ContainerCreating", f"MountVolume failed: {exc}")
                log.warning("pod %s: volumes not ready: %s", self.key, exc)
            await self._report()
            await self._sleep(RETRY_CONFIG_S)

    def _set_waiting(self, reason: str, message: str) -> None:
        for slot in self.inits + self.containers:
            if slot.process is None and slot.terminated is None:
                slot.waiting_reason, slot.waiting_message = reason, message

    # --- containers ---------------------------------------------------------------------------
    def _command(self, slot: Slot) -> tuple[list[str], dict[str, str], str]:
        """(argv, env, cwd) of the container, with $(VAR) expanded and mountPaths translated."""
        assert self.pod_ip is not None
        env = resolve_env(
            self.pod,
            slot.spec,
            sources=self.sources,
            base=self.ctx.base_env,
            pod_ip=self.pod_ip,
            host_ip=self.ctx.host_ip,
        )
        mounts = MountTable.of(mount_sources(slot.spec, self.local_volumes, env))
        argv = expand_all(list(slot.spec.get("command") or []) + list(slot.spec.get("args") or []), env)
        env = mounts.translate_env(env)
        env[MOUNTS_ENV] = json.dumps(dict(mounts.mounts), sort_keys=True)
        cwd = str(self.root_dir)
        working_dir = slot.spec.get("workingDir")
        if working_dir:
            local = mounts.translate_path(working_dir)
            if Path(local).is_dir():
                cwd = local
            else:
                log.warning("pod %s: workingDir %s does not exist here; using %s", self.key, working_dir, cwd)
        return mounts.translate_args(argv), env, cwd

    async def _start(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            argv, env, cwd = self._command(slot)
        except ConfigError as exc:
            slot.waiting_reason, slot.waiting_message = "CreateContainerConfigError", str(exc)
            slot.next_start = loop.time() + RETRY_CONFIG_S
            log.warning("pod %s: container %s: %s", self.key, slot.name, exc)
            return
        taken = bound_elsewhere(self.pod_ip or "", declared_ports(slot.spec))
        if taken:
            slot.waiting_reason = "CreateContainerError"
            slot.waiting_message = conflict_message(slot.name, taken)
            slot.next_start = loop.time() + RETRY_CONFIG_S
            log.warning("pod %s: %s", self.key, slot.waiting_message)
            return
        if slot.runs > 0:
            slot.restart_count += 1
        slot.runs += 1
        slot.started_at = utcnow()
        slot.started_mono = loop.time()
        slot.kill_message = ""
        for kind in slot.verdicts:
            slot.verdicts[kind] = ProbeState.initial(kind)
        try:
            process = await ContainerProcess.start(
                argv, env=env, cwd=cwd, log_path=self.logs_dir / f"{slot.name}.log"
            )
        except StartError as exc:
            log.warning("pod %s: container %s cannot start: %s", self.key, slot.name, exc)
            self._record_exit(
                slot,
                Termination(128, slot.started_at, utcnow(), message=str(exc), reason_override="StartError"),
            )
            return
        slot.process = process
        slot.next_start = None
        slot.terminated = None
        log.info(
            "pod %s: container %s started (pid %d, restart %d): %s",
            self.key,
            slot.name,
            process.pid,
            slot.restart_count,
            " ".join(argv),
        )
        slot.tasks = [asyncio.create_task(self._watch_exit(slot, process))]
        if slot.probes:
            slot.tasks.append(asyncio.create_task(self._probe_loop(slot, process, env, cwd)))

    async def _watch_exit(self, slot: Slot, process: ContainerProcess) -> None:
        result = await process.wait()
        if slot.process is not process:
            return
        slot.process = None
        for task in slot.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        termination = Termination(
            result.code,
            slot.started_at,
            utcnow(),
            container_id=f"process://{process.pid}",
            message=slot.kill_message,
            signal=result.signal,
        )
        log.info(
            "pod %s: container %s exited with %d%s",
            self.key,
            slot.name,
            result.code,
            f" ({slot.kill_message})" if slot.kill_message else "",
        )
        self._record_exit(slot, termination)
        self.wake.set()

    def _record_exit(self, slot: Slot, termination: Termination) -> None:
        loop = asyncio.get_running_loop()
        if self.deleting or not should_restart(slot.restart_policy, termination.exit_code):
            slot.terminated, slot.next_start = termination, None
            return
        ran_for = loop.time() - slot.started_mono
        delay, slot.backoff_level = self.ctx.backoff.next(slot.backoff_level, ran_for)
        slot.last_terminated, slot.terminated = termination, termination
        slot.next_start = loop.time() + delay
        slot.backoff_s = delay
        if delay > 0:
            slot.waiting_reason = "CrashLoopBackOff"
            slot.waiting_message = (
                f"back-off {delay:g}s restarting failed container={slot.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
        else:
            slot.waiting_reason, slot.waiting_message = "ContainerCreating", ""

    # --- probes -------------------------------------------------------------------------------
    async def _probe_loop(self, slot: Slot, process: ContainerProcess, env: dict[str, str], cwd: str) -> None:
        """Startup first; then readiness and liveness, each on its own period, while the process lives."""
        loop = asyncio.get_running_loop()
        started = slot.started_mono
        due = {kind: started + spec.initial_delay_s for kind, spec in slot.probes.items()}
        while slot.process is process and process.alive:
            startup_pending = (
                ProbeKind.STARTUP in slot.probes and not slot.verdicts[ProbeKind.STARTUP].passing
            )
            kinds = [ProbeKind.STARTUP] if startup_pending else [k for k in due if k is not ProbeKind.STARTUP]
            if not kinds:
                return
            kind = min(kinds, key=lambda k: due[k])
            await asyncio.sleep(max(0.0, due[kind] - loop.time()))
            if not (slot.process is process and process.alive):
                return
            spec = slot.probes[kind]
            ok, message = await run_probe(
                spec,
                container=slot.spec,
                pod_ip=self.pod_ip or "",
                env=env,
                cwd=cwd,
                client=self.ctx.probe_client,
            )
            due[kind] = loop.time() + spec.period_s
            before = slot.verdicts[kind]
            after = before.observe(spec, ok, message)
            slot.verdicts[kind] = after
            if after.passing != before.passing:
                log.info(
                    "pod %s: container %s %s probe %s: %s",
                    self.key,
                    slot.name,
                    kind,
                    "passed" if after.passing else "failed",
                    message,
                )
                self.wake.set()
            failed_for_good = not ok and after.failures >= spec.failure_threshold
            if failed_for_good and kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
                slot.kill_message = f"{kind.capitalize()} probe failed: {message}"
                log.info("pod %s: container %s %s; killing it", self.key, slot.name, slot.kill_message)
                await process.stop(self._grace())
                return

    # --- status and deletion --------------------------------------------------------------
    def _view(self) -> PodView:
        return PodView(
            pod_ip=self.pod_ip,
            host_ip=self.ctx.host_ip,
            start_time=self.start_time,
            sandbox_ready=self.sandbox_ready,
            init_containers=[s.view() for s in self.inits],
            containers=[s.view() for s in self.containers],
            message=self.message,
        )

    async def _report(self, pod: dict[str, Any] | None = None) -> str:
        """Patch the status when it changed; returns the phase."""
        status = pod_status(pod or self.pod, self._view(), utcnow())
        if status != self.last_sent and not self.gone:
            try:
                updated = await self.ctx.kube.patch_pod_status(self.namespace, self.name, status)
            except ApiError as exc:
                if exc.status == 404:
                    self.vanish()
                else:
                    log.warning("pod %s: status patch failed: %s", self.key, exc)
                return str(status["phase"])
            except httpx.HTTPError as exc:
                log.warning("pod %s: status patch failed: %s", self.key, exc)
                return str(status["phase"])
            self.last_sent = status
            self.update(updated)
        return str(status["phase"])

    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        spec_grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        grace = meta_grace if meta_grace is not None else spec_grace
        return float(min(max(grace or 0, 0), self.ctx.grace_cap_s))

    async def _stop_all(self, grace_s: float) -> None:
        slots = [s for s in self.inits + self.containers if s.process is not None]
        await asyncio.gather(*(s.process.stop(grace_s) for s in slots if s.process), return_exceptions=True)
        # Let the exit watchers record the terminations before the final status is computed.
        watchers = [s.tasks[0] for s in slots if s.tasks]
        if watchers:
            await asyncio.wait(watchers, timeout=5.0)
        for slot in self.inits + self.containers:
            slot.next_start = None

    async def _finish(self) -> None:
        """Deletion: stop the processes, report the terminal status, then delete with grace 0."""
        if self.gone:
            await self._stop_all(0)
            log.info("pod %s: gone; processes stopped", self.key)
            return
        grace = self._grace()
        log.info("pod %s: deleting (grace %.0fs)", self.key, grace)
        await self._stop_all(grace)
        if not is_terminal(self.pod) and self.pod_ip is not None:
            # Like the kubelet, a deleted pod reaches a terminal phase first, so controllers
            # (the Job controller's finalizer) account for it.
            spec = dict(self.pod.get("spec") or {})
            spec["restartPolicy"] = "Never"
            with contextlib.suppress(ApiError, httpx.HTTPError):
                await self._report({**self.pod, "spec": spec})
        await self.ctx.kube.delete_pod_now(self.namespace, self.name, self.uid)
        self.finalised = True
        log.info("pod %s: deleted", self.key)


def _rv(pod: Mapping[str, Any]) -> int:
    try:
        return int(pod["metadata"].get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0
