"""Start, find and stop one local cluster (imperative shell around config.py's pure values).

A cluster lives in a state directory: certificates, kubeconfigs, logs, etcd's data, Prometheus'
TSDB, the pod runner's files, and state.json, which records every process started (pid and start
time) and the ports chosen. `down` needs nothing but that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes import config as kube_config

from e2e.cluster import bootstrap, config, manifest, pki, podcidr, processes
from e2e.cluster.config import Binaries, Layout, Ports, ProcessSpec
from e2e.cluster.processes import Record, StartError

MARKER = ".sentiment-cluster"
REPO = manifest.REPO
CRDS_DIR = REPO / "crds"
PODRUNNER_MAIN = REPO / "e2e" / "podrunner" / "__main__.py"
# Below Linux's ephemeral range (32768+), so an outgoing connection never holds a port we picked.
PORT_RANGE = (20000, 32000)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Cluster:
    """A running local cluster, as tests and tools see it."""

    kubeconfig: Path
    server: str
    prometheus_url: str
    node_name: str
    state_dir: Path
    pod_cidr: str
    versions: dict[str, str] = field(default_factory=dict)

    def api_client(self) -> client.ApiClient:
        """A fresh admin client (close it when done, or use it as a context manager)."""
        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))

    def to_json(self) -> dict[str, Any]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "prometheus_url": self.prometheus_url,
            "node_name": self.node_name,
            "state_dir": str(self.state_dir),
            "pod_cidr": self.pod_cidr,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        return cls(
            kubeconfig=Path(data["kubeconfig"]),
            server=data["server"],
            prometheus_url=data["prometheus_url"],
            node_name=data["node_name"],
            state_dir=Path(data["state_dir"]),
            pod_cidr=data.get("pod_cidr", config.LEGACY_POD_CIDR),
            versions=dict(data.get("versions") or {}),
        )


def default_state_dir() -> Path:
    """Where `make cluster-up` keeps its cluster (SENTIMENT_CLUSTER_DIR overrides)."""
    explicit = os.environ.get("SENTIMENT_CLUSTER_DIR")
    return Path(explicit) if explicit else manifest.cache_dir() / "cluster"


def log_line(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] cluster: {message}", file=sys.stderr, flush=True)


# --- state.json -----------------------------------------------------------------------------------


def _read_state(layout: Layout) -> dict[str, Any]:
    try:
        data = json.loads(layout.state_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(layout: Layout, data: dict[str, Any]) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(layout.state_file)


def _records(state: dict[str, Any]) -> list[Record]:
    return [Record.from_json(r) for r in state.get("processes", [])]


# --- ports ----------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def choose_ports(rng: random.Random | None = None) -> Ports:
    rng = rng or random.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < len(Ports.__dataclass_fields__):
        port = rng.randrange(*PORT_RANGE)
        if port not in chosen and _port_free(port):
            chosen.append(port)
    return Ports(*chosen)


# --- files ----------------------------------------------------------------------------------------


def _prepare_dir(root: Path) -> None:
    """Empty the state directory of a previous cluster; refuse to empty anything else."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise StartError(
            f"{root} is not empty and is not a cluster state directory; choose another --state-dir"
        )
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("state directory of a local sentiment-rollouts cluster (e2e/cluster)\n")


def _write_yaml(path: Path, data: Any, *, many: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump_all(data, sort_keys=False) if many else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)


def _write_files(b: Binaries, layout: Layout, ports: Ports) -> tuple[pki.Pki, dict[str, Path]]:
    keys = pki.create(
        layout.pki,
        clients={stem: pki.Identity(name, groups) for stem, (name, groups) in config.CLIENTS.items()},
        # The first service IP is the `kubernetes` Service's ClusterIP.
        serving_ips=("127.0.0.1", str(next(ipaddress.ip_network(config.SERVICE_CIDR).hosts()))),
        serving_dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    )
    server = f"https://127.0.0.1:{ports.apiserver}"
    ca_pem = keys.ca.cert_pem()
    for stem, pair in keys.clients.items():
        path = layout.kubeconfig if stem == config.ADMIN else layout.component_kubeconfig(stem)
        _write_yaml(
            path, config.kubeconfig(server, ca_pem, pair.cert_pem(), pair.key_pem(), config.CLIENTS[stem][0])
        )
        path.chmod(0o600)
    stages = bootstrap.load_documents(sorted(b.kwok_stages.glob("*.yaml")))
    _write_yaml(layout.kwok_config, config.kwok_configuration(stages), many=True)
    pod_sd_url = f"http://127.0.0.1:{ports.pod_sd}/targets"
    _write_yaml(layout.prometheus_config, config.prometheus_configuration(pod_sd_url))
    files = {
        "ca": keys.ca.cert,
        "serving_cert": keys.serving.cert,
        "serving_key": keys.serving.key,
        "sa_key": keys.service_account_key,
        "sa_pub": keys.service_account_pub,
    }
    return keys, files


@contextlib.contextmanager
def _locked(root: Path, progress: Progress) -> Iterator[None]:
    """One `up` or `down` at a time per state directory (two shells, two test sessions)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another start or stop of {root} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- start ----------------------------------------------------------------------------------------


class _Starter:
    """Starts processes one spec at a time, recording each in state.json before waiting on it.

    Every process gets `held_fds` (the pod CIDR reservation): Prometheus and pod-sd keep scraping
    127.N while any of them runs, so 127.N must stay held until the last of them is gone, not just
    while the pod runner lives."""

    def __init__(
        self,
        layout: Layout,
        keys: pki.Pki,
        state: dict[str, Any],
        die_with_parent: bool,
        held_fds: tuple[int, ...] = (),
    ) -> None:
        self.layout = layout
        self.keys = keys
        self.state = state
        self.die_with_parent = die_with_parent
        self.held_fds = held_fds
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        proc, record = processes.spawn(
            replace(spec, pass_fds=(*spec.pass_fds, *self.held_fds)),
            root=self.layout.root,
            log=self.layout.log(spec.name),
            die_with_parent=self.die_with_parent,
            pythonpath=REPO,
        )
        self.children.append(proc)
        self.state["processes"].append(record.to_json())
        _write_state(self.layout, self.state)
        return proc

    def wait(self, spec: ProcessSpec, proc: subprocess.Popen[bytes]) -> None:
        check = spec.ready
        if check is None:
            return
        log = self.layout.log(spec.name)
        if check.file is not None:
            ready_file = check.file

            def condition() -> tuple[bool, str]:
                return ready_file.exists(), f"{ready_file} not written yet"

        else:
            ctx = processes.ssl_context(
                check.tls,
                self.keys.ca.cert,
                self.keys.clients[config.ADMIN].cert,
                self.keys.clients[config.ADMIN].key,
            )

            def condition() -> tuple[bool, str]:
                return processes.probe(check, ctx)

        processes.wait_until(spec.name, condition, timeout_s=spec.timeout_s, log=log, proc=proc)


def up(
    state_dir: Path | None = None,
    *,
    die_with_parent: bool = False,
    progress: Progress = log_line,
) -> Cluster:
    """Start a cluster in `state_dir` (or return the one already running there) and wait until it
    is usable: API ready, fake Node Ready, CRDs Established, controllers and Prometheus serving."""
    layout = Layout((state_dir or default_state_dir()).resolve())
    b = manifest.load()
    with _locked(layout.root, progress):
        return _up(b, layout, die_with_parent=die_with_parent, progress=progress)


def _up(b: Binaries, layout: Layout, *, die_with_parent: bool, progress: Progress) -> Cluster:
    existing = running(layout.root)
    if existing is not None:
        progress(f"already running in {layout.root} (server {existing.server})")
        return existing
    if _read_state(layout).get("processes"):
        progress(f"cleaning up a stopped or half-started cluster in {layout.root}")
        _down(layout, progress=progress)
    reservation = podcidr.reserve()
    try:
        return _start(b, layout, reservation, die_with_parent=die_with_parent, progress=progress)
    finally:
        # Every process of the cluster holds its own descriptor: the CIDR is freed when the last
        # of them exits, not before.
        reservation.close()


def _start(
    b: Binaries,
    layout: Layout,
    reservation: podcidr.Reservation,
    *,
    die_with_parent: bool,
    progress: Progress,
) -> Cluster:
    t0 = time.monotonic()
    _prepare_dir(layout.root)
    ports = choose_ports()
    keys, files = _write_files(b, layout, ports)
    cluster = Cluster(
        kubeconfig=layout.kubeconfig,
        server=f"https://127.0.0.1:{ports.apiserver}",
        prometheus_url=f"http://127.0.0.1:{ports.prometheus}",
        node_name=config.NODE_NAME,
        state_dir=layout.root,
        pod_cidr=reservation.cidr,
        versions=b.versions,
    )
    state: dict[str, Any] = {
        "cluster": cluster.to_json(),
        "ports": ports.as_dict(),
        "processes": [],
        "ready": False,
        "owner_pid": os.getpid() if die_with_parent else None,
        "started_at": time.time(),
    }
    _write_state(layout, state)
    starter = _Starter(layout, keys, state, die_with_parent, held_fds=(reservation.fileno(),))
    try:
        _start_all(b, layout, ports, files, starter, reservation, progress, t0)
    except BaseException:
        # Interrupted or failed: leave nothing running, keep the logs for the error message.
        progress(f"start failed: stopping what was started (logs stay in {layout.logs})")
        processes.stop(_records(state), layout.root, children=starter.children)
        state["processes"] = []
        _write_state(layout, state)
        raise
    state["ready"] = True
    _write_state(layout, state)
    progress(
        f"ready in {time.monotonic() - t0:.1f} s: {cluster.server}, Prometheus {cluster.prometheus_url}, "
        f"pod CIDR {cluster.pod_cidr}"
    )
    return cluster


def _start_all(
    b: Binaries,
    layout: Layout,
    ports: Ports,
    files: dict[str, Path],
    starter: _Starter,
    reservation: podcidr.Reservation,
    progress: Progress,
    t0: float,
) -> None:
    def step(message: str) -> None:
        progress(f"{message} (+{time.monotonic() - t0:.1f} s)")

    etcd = config.etcd(b, layout, ports)
    starter.wait(etcd, starter.spawn(etcd))
    step("etcd ready")
    apiserver = config.apiserver(b, layout, ports, files)
    starter.wait(apiserver, starter.spawn(apiserver))
    step(f"kube-apiserver {b.versions.get('kubernetes', '')} ready")

    # Everything but the controller-manager starts now, so that its start-up (Python imports for
    # the pod runner and the pod discovery) overlaps with applying the CRDs.
    early = [
        config.scheduler(b, layout, ports),
        config.kwok(b, layout, ports),
        config.pod_sd(sys.executable, layout, ports),
        config.prometheus(b, layout, ports),
    ]
    if PODRUNNER_MAIN.exists():
        early.append(config.podrunner(sys.executable, layout, reservation.cidr))
    else:
        progress(f"no pod runner ({PODRUNNER_MAIN} is missing): Pods will be scheduled but not run")
    started = [(spec, starter.spawn(spec)) for spec in early]
    with client.ApiClient(_admin_configuration(layout.kubeconfig)) as api:
        bootstrap.create_node(api, config.node_manifest())
        docs = crd_documents(b)
        bootstrap.apply(api, docs)
        step(f"applied {len(docs)} manifests (our CRDs, Gateway API {b.versions.get('gateway_api', '')})")
        # The controller-manager after the CRDs: every CRD added later would make its garbage
        # collector and quota controllers rediscover and resync.
        kcm = config.controller_manager(b, layout, ports, files)
        started.append((kcm, starter.spawn(kcm)))
        for spec, proc in started:
            starter.wait(spec, proc)
            step(f"{spec.name} ready")
        bootstrap.wait_established(api, bootstrap.crd_names(docs))
        bootstrap.wait_node_ready(api, config.NODE_NAME)
        bootstrap.wait_default_serviceaccount(api, "default")
        step(f"Node {config.NODE_NAME} Ready, CRDs Established, default ServiceAccount created")


def _admin_configuration(kubeconfig: Path) -> client.Configuration:
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


def crd_documents(b: Binaries) -> list[dict[str, Any]]:
    """Our CRDs (crds/*.yaml, when there are any) and the Gateway API standard channel."""
    ours = sorted(CRDS_DIR.glob("*.yaml")) if CRDS_DIR.is_dir() else []
    return bootstrap.load_documents([*ours, *sorted(b.gateway_api_crds.glob("*.yaml"))])


def apply_project_crds(cluster: Cluster) -> list[str]:
    """Re-apply crds/*.yaml to a running cluster (a reused one may predate edits); returns CRD names."""
    ours = sorted(CRDS_DIR.glob("*.yaml")) if CRDS_DIR.is_dir() else []
    docs = bootstrap.load_documents(ours)
    if not docs:
        return []
    with client.ApiClient(_admin_configuration(cluster.kubeconfig)) as api:
        bootstrap.apply(api, docs)
        names = bootstrap.crd_names(docs)
        bootstrap.wait_established(api, names)
    return names


# --- find, stop -----------------------------------------------------------------------------------


def running(state_dir: Path | None = None) -> Cluster | None:
    """The cluster in `state_dir` if every one of its processes lives and the API server is ready."""
    layout = Layout((state_dir or default_state_dir()).resolve())
    state = _read_state(layout)
    records = _records(state)
    if not state.get("ready") or not records or not all(processes.is_alive(r) for r in records):
        return None
    cluster = Cluster.from_json(state["cluster"])
    ctx = processes.ssl_context(
        "admin",
        layout.pki / "ca.crt",
        layout.pki / f"client-{config.ADMIN}.crt",
        layout.pki / f"client-{config.ADMIN}.key",
    )
    ok, _ = processes.probe(config.ReadyCheck(f"{cluster.server}/readyz", tls="admin", expect="ok"), ctx)
    return cluster if ok else None


def stale_code(cluster: Cluster) -> list[Path]:
    """Sources of the processes we run from this repository (pod runner, pod discovery) changed
    since `cluster` started: reusing it would test yesterday's code."""
    started = float(_read_state(Layout(cluster.state_dir)).get("started_at") or 0)
    sources = [*(REPO / "e2e" / "podrunner").rglob("*.py"), *(REPO / "e2e" / "cluster").rglob("*.py")]
    return [path for path in sources if path.stat().st_mtime > started]


def down(state_dir: Path | None = None, *, progress: Progress = log_line) -> list[str]:
    """Stop every process of the cluster in `state_dir`; returns problems (ports still listening,
    processes that had to be killed). The directory stays, for its logs."""
    layout = Layout((state_dir or default_state_dir()).resolve())
    with _locked(layout.root, progress):
        return _down(layout, progress=progress)


def _down(layout: Layout, *, progress: Progress) -> list[str]:
    state = _read_state(layout)
    records = _records(state)
    live = [r for r in records if processes.is_alive(r)]
    progress(
        f"stopping {len(live)} processes of {layout.root}" if live else f"nothing running in {layout.root}"
    )
    problems = processes.stop(records, layout.root)
    ports = [int(p) for p in (state.get("ports") or {}).values()]
    problems += [f"port {p} still listening after stop" for p in ports if listening(p)]
    if state:
        state["processes"] = []
        state["ready"] = False
        _write_state(layout, state)
    return problems


def status(state_dir: Path | None = None) -> tuple[bool, list[str]]:
    """(running?, one line per process and endpoint)."""
    layout = Layout((state_dir or default_state_dir()).resolve())
    state = _read_state(layout)
    lines = []
    for record in _records(state):
        alive = "running" if processes.is_alive(record) else "NOT running"
        lines.append(f"{record.name:<24} pid {record.pid:<8} {alive}")
    cluster = running(layout.root)
    if cluster is None:
        lines.append(f"no ready cluster in {layout.root}")
        return False, lines
    lines += [
        f"server      {cluster.server}",
        f"prometheus  {cluster.prometheus_url}",
        f"node        {cluster.node_name}",
        f"pod CIDR    {cluster.pod_cidr}",
        f"kubeconfig  {cluster.kubeconfig}",
    ]
    return True, lines
