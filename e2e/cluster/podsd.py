"""Pod discovery for Prometheus over HTTP SD: `python -m e2e.cluster.podsd --kubeconfig K --listen HOST:PORT`.

Debian's prometheus package (2.42) is built without the Kubernetes service discovery
(`kubernetes_sd_configs` is an unknown field there). This small server is the equivalent: on every
GET /targets it lists the cluster's Pods and answers in Prometheus' HTTP SD format with the *same*
`__meta_kubernetes_pod_*` labels `kubernetes_sd_configs` (role: pod) would produce, so the scrape
config's relabelling is the standard one a real cluster uses (prometheus.io/scrape, /port, /path).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

PREFIX = "__meta_kubernetes_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def sanitize(name: str) -> str:
    """Prometheus' strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes `_`."""
    return _INVALID.sub("_", name)


def _pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    labels = {
        f"{PREFIX}namespace": meta.get("namespace", ""),
        f"{PREFIX}pod_name": meta.get("name", ""),
        f"{PREFIX}pod_ip": status.get("podIP", ""),
        f"{PREFIX}pod_uid": meta.get("uid", ""),
        f"{PREFIX}pod_node_name": spec.get("nodeName", ""),
        f"{PREFIX}pod_host_ip": status.get("hostIP", ""),
        f"{PREFIX}pod_phase": status.get("phase", ""),
        f"{PREFIX}pod_ready": "unknown",
    }
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            labels[f"{PREFIX}pod_ready"] = str(cond.get("status", "unknown")).lower()
    for kind, values in (("label", meta.get("labels")), ("annotation", meta.get("annotations"))):
        for key, value in (values or {}).items():
            labels[f"{PREFIX}pod_{kind}_{sanitize(key)}"] = str(value)
            labels[f"{PREFIX}pod_{kind}present_{sanitize(key)}"] = "true"
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller"):
            labels[f"{PREFIX}pod_controller_kind"] = owner.get("kind", "")
            labels[f"{PREFIX}pod_controller_name"] = owner.get("name", "")
    return labels


def targets(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """HTTP SD target groups: one per container port (one per container without ports), like
    the Kubernetes SD's pod role. Pods without an IP yet are left out, as Prometheus does."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        pod_ip = (pod.get("status") or {}).get("podIP")
        if not pod_ip:
            continue
        base = _pod_labels(pod)
        for container in (pod.get("spec") or {}).get("containers") or []:
            container_labels = {**base, f"{PREFIX}pod_container_name": container.get("name", "")}
            ports = container.get("ports") or []
            if not ports:
                groups.append({"targets": [pod_ip], "labels": container_labels})
            for port in ports:
                number = str(port.get("containerPort", ""))
                groups.append(
                    {
                        "targets": [f"{pod_ip}:{number}"],
                        "labels": {
                            **container_labels,
                            f"{PREFIX}pod_container_port_name": port.get("name", ""),
                            f"{PREFIX}pod_container_port_number": number,
                            f"{PREFIX}pod_container_port_protocol": port.get("protocol", "TCP"),
                        },
                    }
                )
    return groups


def _handler(api: client.CoreV1Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/targets":
                self._answer(404, {"error": f"unknown path {self.path}; Prometheus asks GET /targets"})
                return
            try:
                raw = api.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=5)
                pods = json.loads(raw.data)["items"]
            except Exception as exc:
                # Prometheus keeps the previous targets when a refresh fails.
                self._answer(503, {"error": f"listing pods failed: {exc}"})
                return
            self._answer(200, targets(pods))

        def _answer(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one request every scrape interval: too chatty for the log

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster.podsd", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve GET /targets on (loopback)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"podsd: --listen must be HOST:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    api = client.CoreV1Api(kube_config.new_client_from_config(config_file=args.kubeconfig))
    server = ThreadingHTTPServer((host, int(port)), _handler(api))
    print(f"podsd: serving Prometheus HTTP SD on http://{args.listen}/targets", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
