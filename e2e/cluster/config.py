"""What the local control plane runs, as pure data: file layout, ports, command lines, configs.

Nothing here starts a process or touches the network; launcher.py does, from these values.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_NAME = "kwok-node-0"
# What state.json files written before pod CIDRs were reserved per cluster (podcidr.py) used.
LEGACY_POD_CIDR = "127.10.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Scrape fast so tests see samples within seconds (Prometheus' default is 1 min).
SCRAPE_INTERVAL = "2s"
# Marks every process the launcher starts (and their children, which inherit it), so `down` can
# find stragglers of exactly this cluster and of nothing else.
STATE_ENV = "SENTIMENT_CLUSTER_STATE"

# Who each component is, towards the API server (client-certificate CN / O).
ADMIN = "admin"
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    ADMIN: ("sentiment-admin", ("system:masters",)),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-scheduler": ("system:kube-scheduler", ()),
    # KWOK, the pod runner and Prometheus act as node agent / observer of every namespace; a
    # dedicated least-privilege role would buy nothing on a throwaway test cluster.
    "kwok": ("system:kwok-controller", ("system:masters",)),
    "podrunner": ("system:podrunner", ("system:masters",)),
    "pod-sd": ("system:prometheus-pod-discovery", ("system:masters",)),
}


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    prometheus: int
    pod_sd: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Layout:
    """Where one cluster keeps its files; everything of a cluster lives under `root`."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus-data"

    @property
    def podrunner(self) -> Path:
        return self.root / "podrunner"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def component_kubeconfig(self, name: str) -> Path:
        return self.root / "kubeconfigs" / f"{name}.kubeconfig"


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    etcd: Path
    kwok: Path
    prometheus: Path
    kwok_stages: Path
    gateway_api_crds: Path
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadyCheck:
    """How to tell that a process serves: GET `url` answers 200 (and contains `expect`, if set),
    or, for a process without an HTTP endpoint, `file` exists."""

    url: str = ""
    tls: str = "none"  # "none" | "admin" (verify with our CA, present the admin cert) | "insecure"
    expect: str = ""
    file: Path | None = None


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    ready: ReadyCheck | None
    timeout_s: float = 60.0
    # Descriptors the process inherits (the launcher adds the pod CIDR reservation to every spec).
    pass_fds: tuple[int, ...] = ()


def _loopback(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}"


def etcd(b: Binaries, layout: Layout, ports: Ports) -> ProcessSpec:
    client, peer = _loopback(ports.etcd_client), _loopback(ports.etcd_peer)
    return ProcessSpec(
        name="etcd",
        argv=(
            str(b.etcd),
            "--name=local",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}",
            # A test cluster's data is thrown away: skip fsync, the slowest part of every write.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ),
        ready=ReadyCheck(f"{client}/health", expect='"health":"true"'),
        timeout_s=30,
    )


def apiserver(b: Binaries, layout: Layout, ports: Ports, pki_files: dict[str, Path]) -> ProcessSpec:
    return ProcessSpec(
        name="kube-apiserver",
        argv=(
            str(b.kube_apiserver),
            f"--etcd-servers={_loopback(ports.etcd_client)}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Endpoints may not point at loopback: the `kubernetes` Service gets none (pods reach the
            # API server through KUBERNETES_SERVICE_HOST=127.0.0.1, set by the pod runner).
            "--endpoint-reconciler-type=none",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={layout.pki}",
            f"--tls-cert-file={pki_files['serving_cert']}",
            f"--tls-private-key-file={pki_files['serving_key']}",
            f"--client-ca-file={pki_files['ca']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki_files['sa_pub']}",
            f"--service-account-signing-key-file={pki_files['sa_key']}",
            "--profiling=false",
            "--v=1",
        ),
        ready=ReadyCheck(f"{_loopback(ports.apiserver, 'https')}/readyz", tls="admin", expect="ok"),
        # The first start creates the bootstrap RBAC roles and priority levels: slow on busy cores.
        timeout_s=120,
    )


def controller_manager(b: Binaries, layout: Layout, ports: Ports, pki_files: dict[str, Path]) -> ProcessSpec:
    kubeconfig = layout.component_kubeconfig("kube-controller-manager")
    return ProcessSpec(
        name="kube-controller-manager",
        argv=(
            str(b.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--cert-dir={layout.pki / 'kube-controller-manager'}",
            f"--service-account-private-key-file={pki_files['sa_key']}",
            f"--root-ca-file={pki_files['ca']}",
            "--use-service-account-credentials=true",
            # Default controllers: ReplicaSets, Deployments, Jobs, CronJobs, EndpointSlices, GC,
            # namespaces, service accounts and their tokens, HPA, node lifecycle, PDBs.
            "--controllers=*",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # One instance: leader election would only add seconds to every start.
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ),
        ready=ReadyCheck(
            f"{_loopback(ports.controller_manager, 'https')}/healthz", tls="insecure", expect="ok"
        ),
    )


def scheduler(b: Binaries, layout: Layout, ports: Ports) -> ProcessSpec:
    kubeconfig = layout.component_kubeconfig("kube-scheduler")
    return ProcessSpec(
        name="kube-scheduler",
        argv=(
            str(b.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            f"--cert-dir={layout.pki / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ),
        ready=ReadyCheck(f"{_loopback(ports.scheduler, 'https')}/healthz", tls="insecure", expect="ok"),
    )


def kwok(b: Binaries, layout: Layout, ports: Ports) -> ProcessSpec:
    return ProcessSpec(
        name="kwok",
        argv=(
            str(b.kwok),
            f"--kubeconfig={layout.component_kubeconfig('kwok')}",
            f"--config={layout.kwok_config}",
            f"--manage-single-node={NODE_NAME}",
            f"--server-address=127.0.0.1:{ports.kwok}",
            "--node-ip=127.0.0.1",
            f"--node-name={NODE_NAME}",
        ),
        ready=ReadyCheck(f"{_loopback(ports.kwok)}/healthz", expect="ok"),
    )


def prometheus(b: Binaries, layout: Layout, ports: Ports) -> ProcessSpec:
    return ProcessSpec(
        name="prometheus",
        argv=(
            str(b.prometheus),
            f"--config.file={layout.prometheus_config}",
            f"--storage.tsdb.path={layout.prometheus_data}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ),
        ready=ReadyCheck(f"{_loopback(ports.prometheus)}/-/ready"),
    )


def pod_sd(python: str, layout: Layout, ports: Ports) -> ProcessSpec:
    return ProcessSpec(
        name="pod-sd",
        argv=(
            python,
            "-m",
            "e2e.cluster.podsd",
            f"--kubeconfig={layout.component_kubeconfig('pod-sd')}",
            f"--listen=127.0.0.1:{ports.pod_sd}",
        ),
        ready=ReadyCheck(f"{_loopback(ports.pod_sd)}/targets"),
        timeout_s=30,
    )


def podrunner(python: str, layout: Layout, pod_cidr: str) -> ProcessSpec:
    """The pod runner, giving its Pods IPs from `pod_cidr` (held for the cluster by the launcher)."""
    return ProcessSpec(
        name="podrunner",
        argv=(
            python,
            "-m",
            "e2e.podrunner",
            f"--kubeconfig={layout.component_kubeconfig('podrunner')}",
            f"--node={NODE_NAME}",
            f"--state-dir={layout.podrunner}",
            f"--pod-cidr={pod_cidr}",
        ),
        # Written after its first list of the node's Pods (e2e/podrunner/runner.py READY_FILE).
        ready=ReadyCheck(file=layout.podrunner / "podrunner.ready"),
    )


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates inline), so it can be copied anywhere."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sentiment-local",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [{"name": "sentiment-local", "context": {"cluster": "sentiment-local", "user": user}}],
        "current-context": "sentiment-local",
        "preferences": {},
    }


def kwok_configuration(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KWOK's config: lease-based node heartbeats and node stages only — no pod stages, because the
    pod runner, not KWOK, owns the status of Pods on the fake node."""
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        # Set explicitly: kwok's defaulting leaves the parallelisms at 0 for a config file.
        "options": {"nodeLeaseDurationSeconds": 40, "nodeLeaseParallelism": 2, "nodePlayStageParallelism": 2},
    }
    return [options, *stages]


def node_manifest() -> dict[str, Any]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def prometheus_configuration(pod_sd_url: str) -> dict[str, Any]:
    """Scrape every Running pod annotated prometheus.io/scrape=true at podIP:prometheus.io/port
    (path prometheus.io/path, default /metrics), discovered through the API server.

    Debian's Prometheus lacks `kubernetes_sd_configs`; e2e.cluster.podsd serves the same
    `__meta_kubernetes_pod_*` labels over HTTP SD, so the relabelling below is the standard one."""
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "http_sd_configs": [{"url": pod_sd_url, "refresh_interval": SCRAPE_INTERVAL}],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "action": "keep",
                        "regex": "true",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_phase"],
                        "action": "drop",
                        "regex": "Pending|Succeeded|Failed",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                        "action": "replace",
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_ip",
                            "__meta_kubernetes_pod_annotation_prometheus_io_port",
                        ],
                        "action": "replace",
                        "regex": "(.+);([0-9]+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }
