"""The local control plane itself: real binaries at the pinned versions, the fake Node, CRDs,
controllers, scheduler, Prometheus discovery, and a `down` that leaves nothing behind.

Running Pods' commands (Deployments becoming Available, Jobs completing, scrapes with up == 1) is
tested with the pod runner, in its own e2e tests.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from e2e.cluster import config, launcher, manifest, podcidr, podsd, processes
from e2e.cluster.launcher import Cluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PINS = manifest.parse_pins(manifest.VERSIONS_ENV.read_text())
GATEWAY_CRDS = (
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
)


def eventually(check: Callable[[], Any], *, timeout_s: float = 45, what: str = "condition") -> Any:
    """Poll until `check` returns something truthy; its last exception or value is in the failure."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s (last: {last!r})")


def our_crd_names() -> list[str]:
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    return names


# --- the cluster ----------------------------------------------------------------------------------


def test_fake_node_is_registered_and_ready(k8s: client.ApiClient, cluster: Cluster) -> None:
    nodes = client.CoreV1Api(k8s).list_node().items
    assert [n.metadata.name for n in nodes] == [cluster.node_name]
    ready = {c.type: c.status for c in nodes[0].status.conditions}
    assert ready.get("Ready") == "True", ready
    # KWOK's node-initialize stage, not us, filled in the node's info.
    assert nodes[0].status.node_info.kubelet_version.startswith("kwok-")


def test_api_server_reports_the_pinned_version(k8s: client.ApiClient) -> None:
    info = client.VersionApi(k8s).get_code()
    assert info.git_version == PINS["K8S_VERSION"]
    assert (info.major, info.minor) == ("1", PINS["K8S_VERSION"].split(".")[1])


def test_binaries_version_is_truthful() -> None:
    b = manifest.load()
    for binary in (b.kube_apiserver, b.kube_controller_manager, b.kube_scheduler):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"Kubernetes {PINS['K8S_VERSION']}", binary
    etcd = subprocess.run([b.etcd, "--version"], capture_output=True, text=True, check=True).stdout
    assert f"etcd Version: {PINS['ETCD_VERSION'].lstrip('v')}" in etcd
    kwok = subprocess.run([b.kwok, "--version"], capture_output=True, text=True, check=True).stdout
    assert PINS["KWOK_VERSION"] in kwok


@pytest.mark.parametrize("name", [*our_crd_names(), *GATEWAY_CRDS])
def test_crd_is_established_and_served(k8s: client.ApiClient, name: str) -> None:
    crd = client.ApiextensionsV1Api(k8s).read_custom_resource_definition(name)
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions.get("Established") == "True", conditions
    served = next(v.name for v in crd.spec.versions if v.served and v.storage)
    # Listing through the API proves the resource is really served, not just stored.
    listing = client.CustomObjectsApi(k8s).list_cluster_custom_object(
        crd.spec.group, served, crd.spec.names.plural
    )
    assert listing["kind"] == f"{crd.spec.names.kind}List"


def test_our_two_crds_are_in_the_repository() -> None:
    assert sorted(our_crd_names()) == ["sentimentmodels.sentimentops.io", "sentimentrollouts.sentimentops.io"]


def test_gateway_api_httproute_accepts_a_weighted_route(k8s: client.ApiClient, namespace: str) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "weights"},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "stable", "port": 8080, "weight": 90},
                        {"name": "canary", "port": 8080, "weight": 10},
                    ]
                }
            ]
        },
    }
    api = client.CustomObjectsApi(k8s)
    api.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", route)
    stored = api.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", "weights"
    )
    assert [b["weight"] for b in stored["spec"]["rules"][0]["backendRefs"]] == [90, 10]
    # The CRD's schema is enforced by the real API server: a negative weight is refused.
    route["metadata"]["name"] = "bad"
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    with pytest.raises(client.ApiException) as refused:
        api.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", route)
    assert refused.value.status == 422
    assert "weight" in refused.value.body


def _pod_template(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels, "annotations": annotations or {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "local/none",
                    "command": [sys.executable, "-c", "import time; time.sleep(300)"],
                    "ports": [{"containerPort": 8080}],
                }
            ],
        },
    }


def test_deployment_becomes_replicaset_and_pod_bound_to_the_fake_node(
    k8s: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": _pod_template({"app": "web"}),
            },
        },
    )
    # The controller-manager makes the ReplicaSet and Pods; the scheduler binds them to the node.
    replicasets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace).items, what="the Deployment's ReplicaSet"
    )
    assert replicasets[0].metadata.owner_references[0].name == "web"

    def bound_pods() -> list[Any]:
        pods = core.list_namespaced_pod(namespace).items
        return pods if len(pods) == 2 and all(p.spec.node_name for p in pods) else []

    pods = eventually(bound_pods, what="two Pods bound to a node")
    assert {p.spec.node_name for p in pods} == {cluster.node_name}


def test_garbage_collector_deletes_dependents(k8s: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}, "data": {"b": "2"}}
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone() -> bool:
        return "dependent" not in {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}

    eventually(dependent_gone, what="the garbage collector deleting the dependent ConfigMap")


def test_service_account_token_is_issued(k8s: client.ApiClient, namespace: str) -> None:
    token = client.CoreV1Api(k8s).create_namespaced_service_account_token(
        "default", namespace, {"spec": {"audiences": [config.SERVICE_ACCOUNT_ISSUER]}}
    )
    header = json.loads(_b64url(token.status.token.split(".")[0]))
    assert header["alg"] == "ES256"  # signed with the launcher's service-account key


def _b64url(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _targets(prometheus_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets?state=any", timeout=5) as resp:
        return json.load(resp)["data"]


def test_prometheus_discovers_annotated_pods_through_the_api(
    k8s: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    core = client.CoreV1Api(k8s)
    annotated = _pod_template(
        {"app": "scraped"},
        {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"},
    )
    core.create_namespaced_pod(
        namespace, {**annotated, "metadata": {**annotated["metadata"], "name": "scraped"}}
    )
    plain = _pod_template({"app": "plain"})
    core.create_namespaced_pod(namespace, {**plain, "metadata": {**plain["metadata"], "name": "plain"}})

    def scraped_target() -> dict[str, Any] | None:
        for target in _targets(cluster.prometheus_url)["activeTargets"]:
            labels = target["labels"]
            if labels.get("namespace") == namespace and labels.get("pod") == "scraped":
                return target
        return None

    target = eventually(scraped_target, timeout_s=60, what="Prometheus discovering the annotated pod")
    assert target["scrapePool"] == "kubernetes-pods"
    assert target["scrapeUrl"].endswith(":8080/metrics")
    assert target["labels"]["app"] == "scraped"
    active = {
        (t["labels"].get("namespace"), t["labels"].get("pod"))
        for t in _targets(cluster.prometheus_url)["activeTargets"]
    }
    assert (namespace, "plain") not in active  # not annotated: discovered, then dropped


# --- the launcher ---------------------------------------------------------------------------------


def _live_members(pgid: int) -> list[int]:
    """Processes (not zombies) of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _threads(pid: int) -> set[int]:
    try:
        return {int(task) for task in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _orphan_of_a_killed_pod_runner(kubeconfig: Path, pod_cidr: str, runner: processes.Record) -> int:
    """Run a pod whose shell leaves a child, SIGKILL the pod runner; returns the orphan's group."""
    with kube_config.new_client_from_config(config_file=str(kubeconfig)) as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "leaves-a-child"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {"name": "c", "image": "none", "command": ["sh", "-c", "sleep 600 & wait"]}
                    ],
                },
            },
        )

        def running() -> client.V1Pod | None:
            pod = core.read_namespaced_pod("leaves-a-child", "default")
            statuses = pod.status.container_statuses or []
            return pod if statuses and statuses[0].state.running else None

        pod = eventually(running, timeout_s=60, what="the pod running in the second cluster")
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(pod_cidr)
    pgid = int(pod.status.container_statuses[0].container_id.removeprefix("process://"))
    os.kill(runner.pid, signal.SIGKILL)
    eventually(lambda: not processes.is_alive(runner), what="the pod runner gone")
    # The shell died with the runner (PDEATHSIG); its `sleep` did not: that is the orphan.
    assert _live_members(pgid), "the scenario needs a process the killed runner left behind"
    return pgid


def test_up_and_down_of_a_second_cluster_leave_no_process_or_port(tmp_path: Path, cluster: Cluster) -> None:
    """`python -m e2e.cluster up` prints the kubeconfig last and gives the cluster a pod CIDR of its
    own, held until the whole cluster is down (not just its pod runner); `down` stops every process
    it started, also those a killed pod runner left behind."""
    state_dir = tmp_path / "second"
    cli = [sys.executable, "-m", "e2e.cluster"]
    up = subprocess.run([*cli, "up", "--state-dir", str(state_dir)], capture_output=True, text=True, cwd=REPO)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        assert kubeconfig == state_dir / "kubeconfig" and kubeconfig.is_file()
        state = json.loads((state_dir / "state.json").read_text())
        records = [processes.Record.from_json(r) for r in state["processes"]]
        names = {r.name for r in records}
        assert {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "prometheus",
        } <= names
        assert all(processes.is_alive(r) for r in records)
        ports = [int(p) for p in state["ports"].values()]
        assert any(launcher.listening(p) for p in ports)
        status = subprocess.run(
            [*cli, "status", "--state-dir", str(state_dir)], capture_output=True, cwd=REPO
        )
        assert status.returncode == 0
        # A second `up` finds it running and changes nothing.
        again = subprocess.run(
            [*cli, "up", "--state-dir", str(state_dir)], capture_output=True, text=True, cwd=REPO
        )
        assert again.returncode == 0 and Path(again.stdout.strip().splitlines()[-1]) == kubeconfig
        assert [r.pid for r in records] == [
            r["pid"] for r in json.loads((state_dir / "state.json").read_text())["processes"]
        ]
        # Two clusters on one machine never hand out the same pod IPs.
        pod_cidr = state["cluster"]["pod_cidr"]
        assert not ipaddress.ip_network(pod_cidr).overlaps(ipaddress.ip_network(cluster.pod_cidr))
        runner = next(r for r in records if r.name == "podrunner")
        orphan_group = _orphan_of_a_killed_pod_runner(kubeconfig, pod_cidr, runner)
        # The runner's leader is a zombie as soon as it is killed, but its descriptors close only
        # with its last thread: until then 127.N would look held whoever else holds it.
        eventually(lambda: _threads(runner.pid) <= {runner.pid}, what="every thread of the pod runner gone")
        # Prometheus and pod-sd still scrape 127.N: no other cluster may get it while they run.
        octet = ipaddress.ip_network(pod_cidr).network_address.packed[1]
        assert [r.name for r in records if r is not runner and not processes.is_alive(r)] == []
        assert podcidr.held(octet)
    finally:
        down = subprocess.run(
            [*cli, "down", "--state-dir", str(state_dir)], capture_output=True, text=True, cwd=REPO
        )
    assert down.returncode == 0, down.stderr
    assert not [r.name for r in records if processes.is_alive(r)]
    assert not [p for p in ports if launcher.listening(p)]
    assert processes.marked_pids(state_dir.resolve()) == []
    left = _live_members(orphan_group)
    for pid in left:  # never leave the orphan behind, even when this test fails
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert not podcidr.held(octet)
    status = subprocess.run([*cli, "status", "--state-dir", str(state_dir)], capture_output=True, cwd=REPO)
    assert status.returncode == 3


# --- pure parts -----------------------------------------------------------------------------------


def test_manifest_for_other_pins_is_refused(tmp_path: Path) -> None:
    data = {"pins": {"kubernetes": "v1.1.1"}, "binaries": {}}
    with pytest.raises(manifest.ManifestError, match="make controlplane"):
        manifest.binaries_from(data, PINS, tmp_path / "manifest.json")


def test_manifest_with_a_missing_binary_names_it(tmp_path: Path) -> None:
    data = json.loads(manifest.manifest_path().read_text())
    data["binaries"]["etcd"] = str(tmp_path / "nope")
    with pytest.raises(manifest.ManifestError, match="etcd is missing"):
        manifest.binaries_from(data, PINS, tmp_path / "manifest.json")


def test_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is not installed: run `make controlplane`"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config.prometheus_configuration("http://127.0.0.1:1/targets")))
    checked = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pod_discovery_speaks_the_kubernetes_sd_labels() -> None:
    pod = {
        "metadata": {
            "name": "m-1",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/name": "m"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "m-abc", "controller": True}],
        },
        "spec": {
            "nodeName": "n",
            "containers": [{"name": "c", "ports": [{"containerPort": 8080}, {"containerPort": 9000}]}],
        },
        "status": {
            "podIP": "127.10.0.7",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    groups = podsd.targets([pod, {**pod, "status": {"phase": "Pending"}}])  # no IP yet: left out
    assert [g["targets"] for g in groups] == [["127.10.0.7:8080"], ["127.10.0.7:9000"]]
    labels = groups[0]["labels"]
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "m"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert labels["__meta_kubernetes_pod_controller_name"] == "m-abc"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8080"


def test_kwok_gets_node_stages_only() -> None:
    stages = [{"kind": "Stage", "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Node"}}}]
    docs = config.kwok_configuration(stages)
    kinds = [d["spec"]["resourceRef"]["kind"] for d in docs if d.get("kind") == "Stage"]
    assert kinds == ["Node"]
    assert docs[0]["options"]["nodeLeaseDurationSeconds"] > 0


def test_a_pod_cidr_is_held_by_one_cluster_until_its_holder_exits() -> None:
    first = podcidr.reserve()
    octet = int(first.cidr.split(".")[1])
    holder: subprocess.Popen[bytes] | None = None
    try:
        with podcidr.reserve() as second:
            assert second.cidr != first.cidr
        with pytest.raises(podcidr.CidrsExhausted, match="held by a running cluster"):
            podcidr.reserve([octet])
        # The launcher hands the reservation to the pod runner and closes its own copy.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            pass_fds=(first.fileno(),),
        )
        first.close()
        assert podcidr.held(octet)
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        assert not podcidr.held(octet)  # freed by the kernel with its last holder: nothing to clean up
    finally:
        first.close()
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()


def test_chosen_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = list(launcher.choose_ports().as_dict().values())
    assert len(set(ports)) == len(ports) == 8
    assert all(launcher.PORT_RANGE[0] <= p < launcher.PORT_RANGE[1] for p in ports)


def test_prometheus_answers_queries(cluster: Cluster) -> None:
    query = urllib.parse.urlencode({"query": "vector(1)"})
    with urllib.request.urlopen(f"{cluster.prometheus_url}/api/v1/query?{query}", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    assert body["data"]["result"][0]["value"][1] == "1"
