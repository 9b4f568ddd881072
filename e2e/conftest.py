"""Fixtures of the end-to-end tests: one real local cluster per session (e2e/cluster).

`cluster` reuses a cluster started by `make cluster-up` when one is running and ready (set
SENTIMENT_E2E_REUSE=0 to never reuse); otherwise it starts its own in a temporary directory and stops
it at the end of the session, also on Ctrl-C, SIGTERM, or if pytest itself is killed. When a
cluster cannot start, every test that needs it fails with the reason — in CI and locally alike.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest
from kubernetes import client

from e2e.cluster import launcher
from e2e.cluster.bootstrap import wait_default_serviceaccount
from e2e.cluster.launcher import Cluster
from e2e.cluster.manifest import ManifestError
from e2e.cluster.processes import StartError


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines that reach the terminal even while pytest captures output (a start takes
    tens of seconds; silence would look like a hang)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if terminal is None or capture is None:
        return launcher.log_line

    def write(message: str) -> None:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"cluster: {message}")

    return write


def _stop_on_sigterm() -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        # Turn SIGTERM into the interruption pytest already handles: fixtures are torn down.
        signal.signal(signal.SIGTERM, previous)
        raise KeyboardInterrupt

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    progress = _reporter(request.config)
    if os.environ.get("SENTIMENT_E2E_REUSE", "1") != "0":
        existing = launcher.running()
        changed = launcher.stale_code(existing) if existing is not None else []
        if changed:
            progress(
                f"not reusing the cluster in {existing.state_dir}: {changed[0].name} changed since it "
                "started (`make cluster-down cluster-up` refreshes it); starting a fresh one"
            )
        elif existing is not None:
            progress(f"reusing the cluster of `make cluster-up` in {existing.state_dir}")
            try:
                launcher.apply_project_crds(existing)
            except StartError as exc:
                pytest.fail(f"the running cluster refused crds/*.yaml: {exc}", pytrace=False)
            yield existing
            return
    state_dir = tmp_path_factory.mktemp("cluster", numbered=True)
    stop = lambda: launcher.down(state_dir, progress=lambda _: None)  # noqa: E731
    atexit.register(stop)
    _stop_on_sigterm()
    try:
        started = launcher.up(state_dir, die_with_parent=True, progress=progress)
    except (ManifestError, StartError) as exc:
        pytest.fail(f"the local control plane did not start: {exc}", pytrace=False)
    try:
        yield started
    finally:
        problems = stop()
        atexit.unregister(stop)
        if problems:
            progress("; ".join(problems))


@pytest.fixture(scope="session")
def k8s(cluster: Cluster) -> Iterator[client.ApiClient]:
    """An admin ApiClient of the session's cluster."""
    with cluster.api_client() as api:
        yield api


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, usable for Pods (its default ServiceAccount exists), deleted afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"e2e-{stem}-{secrets.token_hex(3)}"
    core = client.CoreV1Api(k8s)
    core.create_namespace({"metadata": {"name": name, "labels": {"sentimentops.io/e2e": "true"}}})
    try:
        wait_default_serviceaccount(k8s, name)
        yield name
    finally:
        # Don't wait: the namespace controller and the pod runner finish it in the background.
        core.delete_namespace(name, propagation_policy="Background")

