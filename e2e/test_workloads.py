"""Real workloads on the fake node: the pod runner (e2e/podrunner) runs each container's command as
a local process with its own loopback pod IP, and reports what happens through the Pod's status.

Deployments become Available only when their readiness probe passes; Jobs complete or fail with
their command's exit code; a process that exits is restarted and counted; Prometheus scrapes an
annotated pod over its pod IP. Everything is polled with generous timeouts (the machine is shared).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import secrets
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.launcher import Cluster

T = TypeVar("T")
TIMEOUT_S = 90.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pod IPs are local

# A tiny Prometheus target: a counter that grows every second, served at $(POD_IP):$(PORT)/metrics.
METRICS_SERVER = """
import os, time
from prometheus_client import Counter, start_http_server
start_http_server(int(os.environ["PORT"]), addr=os.environ["POD_IP"])
ticks = Counter("podrunner_e2e_ticks", "Seconds this pod has been running")
while True:
    ticks.inc()
    time.sleep(1)
"""


def eventually(check: Callable[[], T | None], what: str, timeout_s: float = TIMEOUT_S) -> T:
    """Poll `check` until it returns something truthy; fail with the last value or error seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, OSError, KeyError, IndexError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s (last: {last!r})")


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with NO_PROXY.open(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def pods_of(core: client.CoreV1Api, namespace: str, selector: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def condition(obj: Any, kind: str) -> str | None:
    for entry in obj.status.conditions or []:
        if entry.type == kind:
            return str(entry.status)
    return None


def container_log(cluster: Cluster, namespace: str, pod: str, container: str) -> str:
    path = Path(cluster.state_dir) / "podrunner" / "logs" / namespace / pod / f"{container}.log"
    return path.read_text() if path.exists() else ""


def ready_pod(core: client.CoreV1Api, name: str, namespace: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if condition(pod, "Ready") == "True" else None


def in_pod_cidr(cluster: Cluster, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.pod_cidr)


def test_deployment_becomes_available_and_its_pod_serves_http_at_its_ip(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    token = secrets.token_hex(8)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "site"}, "data": {"index.html": f"served by a pod: {token}"}}
    )
    labels = {"app": "web"}
    container = {
        "name": "web",
        "image": "python:3.11",  # informational: the runner has no images, it runs the command locally
        "command": [
            "python",
            "-m",
            "http.server",
            "$(PORT)",
            "--bind",
            "$(POD_IP)",
            "--directory",
            "/srv/site",
        ],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
        "volumeMounts": [{"name": "site", "mountPath": "/srv/site"}],
    }
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "volumes": [{"name": "site", "configMap": {"name": "site"}}],
                    },
                },
            },
        },
    )

    def available() -> bool:
        deployment = apps.read_namespaced_deployment("web", namespace)
        return condition(deployment, "Available") == "True" and deployment.status.available_replicas == 2

    eventually(available, "Deployment web Available with 2 replicas")
    pods = pods_of(core, namespace, "app=web")
    ips = {pod.status.pod_ip for pod in pods}
    assert len(ips) == 2, f"each pod gets its own IP: {ips}"
    for pod in pods:
        assert condition(pod, "Ready") == "True"
        assert in_pod_cidr(cluster, pod.status.pod_ip)
        assert pod.status.container_statuses[0].ready
        # Both pods use port 8080, each on its own loopback IP.
        assert http_get(f"http://{pod.status.pod_ip}:8080/index.html") == f"served by a pod: {token}"


def test_pod_without_a_ready_server_stays_unready(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "mute"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "none",
                        "command": ["sleep", "300"],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }
                ]
            },
        },
    )

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("mute", namespace)
        statuses = pod.status.container_statuses or []
        return pod if pod.status.phase == "Running" and statuses and statuses[0].state.running else None

    pod = eventually(running, "pod mute Running")
    time.sleep(3)  # several probe periods: nothing listens, so it must not have become Ready
    pod = core.read_namespaced_pod("mute", namespace)
    assert condition(pod, "Ready") == "False"
    assert "unready status: [c]" in next(c.message for c in pod.status.conditions if c.type == "Ready")


class _Answers200(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"not this pod's server")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pod_whose_port_is_taken_on_its_ip_waits_instead_of_probing_the_other_server(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    # Another cluster's (or an orphan's) server already holds IP:port. A hostNetwork pod's IP is the
    # node's, 127.0.0.1, known in advance; any pod IP is checked the same way.
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers200)
    port = other.server_address[1]
    threading.Thread(target=other.serve_forever, daemon=True).start()
    core = client.CoreV1Api(k8s)
    container = {
        "name": "web",
        "image": "none",
        "command": ["python", "-m", "http.server", str(port), "--bind", "$(POD_IP)"],
        "ports": [{"containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
    }
    spec = {"hostNetwork": True, "terminationGracePeriodSeconds": 1, "containers": [container]}
    try:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "squatted"}, "spec": spec})

        def refused() -> client.V1Pod | None:
            pod = core.read_namespaced_pod("squatted", namespace)
            statuses = pod.status.container_statuses or []
            waiting = statuses[0].state.waiting if statuses else None
            return pod if waiting is not None and waiting.reason == "CreateContainerError" else None

        pod = eventually(refused, "pod squatted Waiting with CreateContainerError")
        status = pod.status.container_statuses[0]
        assert f"127.0.0.1:{port}/TCP is already bound" in status.state.waiting.message
        assert condition(pod, "Ready") == "False" and status.restart_count == 0
    finally:
        other.shutdown()
        other.server_close()
    # The runner retries: once the address is free, the pod's own server makes it Ready.
    eventually(lambda: ready_pod(core, "squatted", namespace), "pod squatted Ready once the port is free")
    # The pod's own `python -m http.server` answers now (the squatter is closed: only it can).
    assert "Directory listing for /" in http_get(f"http://127.0.0.1:{port}/")


def test_job_runs_its_command_with_its_environment_and_completes(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "greeting"}, "data": {"word": "hello"}}
    )
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "greet"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "none",
                                "command": ["sh", "-c", "echo $(GREETING) from $(POD_NAME) at $POD_IP"],
                                "env": [
                                    {
                                        "name": "GREETING",
                                        "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "word"}},
                                    },
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )
    eventually(
        lambda: batch.read_namespaced_job("greet", namespace).status.succeeded == 1, "Job greet succeeded"
    )
    job = batch.read_namespaced_job("greet", namespace)
    assert condition(job, "Complete") == "True"
    [pod] = pods_of(core, namespace, "job-name=greet")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    expected = f"hello from {pod.metadata.name} at {pod.status.pod_ip}"
    assert container_log(cluster, namespace, pod.metadata.name, "main").strip() == expected


def test_failing_job_pod_is_failed_with_its_exit_code(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "broken"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "none",
                                "command": ["sh", "-c", "echo failing >&2; exit 3"],
                            }
                        ],
                    }
                },
            },
        },
    )
    eventually(
        lambda: condition(batch.read_namespaced_job("broken", namespace), "Failed") == "True", "Job failed"
    )
    [pod] = pods_of(core, namespace, "job-name=broken")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert "failing" in container_log(cluster, namespace, pod.metadata.name, "main")


def test_indexed_job_gives_each_pod_its_completion_index(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "shards"},
            "spec": {
                "completionMode": "Indexed",
                "completions": 3,
                "parallelism": 3,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "none",
                                "command": ["sh", "-c", "echo shard $JOB_COMPLETION_INDEX"],
                            }
                        ],
                    }
                },
            },
        },
    )
    eventually(
        lambda: batch.read_namespaced_job("shards", namespace).status.succeeded == 3, "3 shards succeeded"
    )
    logs = sorted(
        container_log(cluster, namespace, pod.metadata.name, "main").strip()
        for pod in pods_of(core, namespace, "job-name=shards")
    )
    assert logs == ["shard 0", "shard 1", "shard 2"]


def test_exited_process_is_restarted_and_counted(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "flaky"},
            "spec": {
                "containers": [
                    {"name": "c", "image": "none", "command": ["sh", "-c", "echo run; sleep 1; exit 4"]}
                ]
            },
        },
    )

    def restarted_twice() -> client.V1ContainerStatus | None:
        status = core.read_namespaced_pod("flaky", namespace).status.container_statuses[0]
        return status if status.restart_count >= 2 else None

    status = eventually(restarted_twice, "two restarts of pod flaky")
    assert status.last_state.terminated.exit_code == 4
    assert core.read_namespaced_pod("flaky", namespace).status.phase == "Running"
    assert container_log(cluster, namespace, "flaky", "c").count("run") >= 2


def test_deleted_pod_stops_its_process_and_goes_away(
    cluster: Cluster, k8s: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "server"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "c",
                        "image": "none",
                        "command": ["python", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }
                ],
            },
        },
    )
    pod = eventually(lambda: ready_pod(core, "server", namespace), "pod server Ready")
    ip = pod.status.pod_ip
    with socket.create_connection((ip, 8080), timeout=5):
        pass
    core.delete_namespaced_pod("server", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("server", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    eventually(gone, "pod server deleted")
    with pytest.raises(OSError), socket.create_connection((ip, 8080), timeout=2):
        pass


def prometheus_query(cluster: Cluster, promql: str) -> list[dict[str, Any]]:
    url = f"{cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_an_annotated_pod(cluster: Cluster, k8s: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": "exporter",
                "labels": {"app": "exporter"},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9100"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "metrics",
                        "image": "none",
                        "command": ["python", "-c", METRICS_SERVER],
                        "ports": [{"containerPort": 9100, "name": "metrics"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/metrics", "port": "metrics"},
                            "periodSeconds": 1,
                        },
                    }
                ]
            },
        },
    )
    pod = eventually(lambda: ready_pod(core, "exporter", namespace), "pod exporter Ready")
    assert "podrunner_e2e_ticks_total" in http_get(f"http://{pod.status.pod_ip}:9100/metrics")
    selector = f'namespace="{namespace}",pod="exporter"'
    [up] = eventually(lambda: prometheus_query(cluster, f"up{{{selector}}} == 1"), "Prometheus up == 1")
    assert up["metric"]["instance"] == f"{pod.status.pod_ip}:9100"
    assert up["metric"]["app"] == "exporter"  # pod labels are copied onto the series
    ticks = eventually(
        lambda: prometheus_query(cluster, f"podrunner_e2e_ticks_total{{{selector}}} > 0"), "scraped samples"
    )
    assert float(ticks[0]["value"][1]) > 0
