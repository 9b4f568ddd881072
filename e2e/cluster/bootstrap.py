"""What the launcher does through the API once the API server answers: the fake Node, CRDs, waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.processes import StartError

FIELD_MANAGER = "sentiment-cluster-launcher"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# What crds/*.yaml and the Gateway API's standard channel contain (all cluster-scoped).
COLLECTIONS: dict[tuple[str, str], str] = {
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
    ): "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
    ),
}


def load_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the files, in order; a non-Kubernetes document is an error."""
    docs: list[dict[str, Any]] = []
    for path in paths:
        # libyaml when present: the Gateway API CRDs are ~1 MB, 8x faster to parse than pure Python.
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                raise StartError(f"{path}: a document without apiVersion/kind; is it a Kubernetes manifest?")
            docs.append(doc)
    return docs


def crd_names(docs: Iterable[dict[str, Any]]) -> list[str]:
    return [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]


def collection_path(doc: dict[str, Any]) -> str:
    """The REST collection of a cluster-scoped object the launcher knows how to apply."""
    key = (doc["apiVersion"], doc["kind"])
    if key not in COLLECTIONS:
        known = ", ".join(kind for _, kind in COLLECTIONS)
        raise StartError(
            f"cannot apply {doc['kind']} ({doc['apiVersion']}) {doc.get('metadata', {}).get('name')}: "
            f"the launcher applies only {known}; create other objects from the tests"
        )
    return COLLECTIONS[key]


def _send(
    api: client.ApiClient, method: str, path: str, body: dict[str, Any], content_type: str
) -> tuple[int, str]:
    response = api.call_api(
        method,
        api.configuration.host + path,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,  # JSON-encoded by the client, also for apply-patch+yaml (JSON is YAML)
    )
    response.read()
    return response.status, (response.data or b"").decode(errors="replace")


def apply(api: client.ApiClient, docs: Iterable[dict[str, Any]]) -> None:
    """Create each object, or server-side apply it when it exists (a reused cluster), so applying
    twice is harmless and picks up edits. Raw requests: a plain create costs the API server less
    than an apply (no merge of the large CRD schemas), and skipping the client's model
    conversion of ~1 MB of CRDs saves seconds of a start."""
    query = f"fieldManager={FIELD_MANAGER}"

    def apply_one(doc: dict[str, Any]) -> None:
        collection, name = collection_path(doc), doc["metadata"]["name"]
        status, text = _send(api, "POST", f"{collection}?{query}", doc, "application/json")
        if status == 409:
            status, text = _send(
                api, "PATCH", f"{collection}/{name}?{query}&force=true", doc, "application/apply-patch+yaml"
            )
        if status >= 300:
            raise StartError(f"applying {doc['kind']} {name} failed: HTTP {status}: {text[:2000]}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(apply_one, doc) for doc in docs]:
            future.result()


def _poll(what: str, check: Callable[[], tuple[bool, str]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            ok, last = check()
        except ApiException as exc:
            ok, last = False, f"HTTP {exc.status} {exc.reason}"
        if ok:
            return
        if time.monotonic() > deadline:
            raise StartError(f"{what}: not after {timeout_s:.0f} s (last: {last})")
        time.sleep(0.2)


def _condition(conditions: Iterable[Any] | None, kind: str) -> str:
    for cond in conditions or ():
        if cond.type == kind:
            return str(cond.status)
    return "Unknown"


def wait_established(api: client.ApiClient, names: Iterable[str], timeout_s: float = 60) -> None:
    ext = client.ApiextensionsV1Api(api)
    for name in names:

        def established(name: str = name) -> tuple[bool, str]:
            crd = ext.read_custom_resource_definition(name)
            status = _condition(crd.status.conditions if crd.status else None, "Established")
            return status == "True", f"Established={status}"

        _poll(f"CRD {name} Established", established, timeout_s)


def create_node(api: client.ApiClient, manifest: dict[str, Any]) -> None:
    try:
        client.CoreV1Api(api).create_node(manifest)
    except ApiException as exc:
        if exc.status != 409:  # already there: a reused etcd
            raise StartError(
                f"creating Node {manifest['metadata']['name']}: HTTP {exc.status}: {exc.body}"
            ) from exc


def wait_node_ready(api: client.ApiClient, name: str, timeout_s: float = 60) -> None:
    core = client.CoreV1Api(api)

    def ready() -> tuple[bool, str]:
        node = core.read_node(name)
        status = _condition(node.status.conditions if node.status else None, "Ready")
        return status == "True", f"Ready={status}"

    _poll(f"Node {name} Ready (KWOK sets it)", ready, timeout_s)


def wait_default_serviceaccount(api: client.ApiClient, namespace: str, timeout_s: float = 60) -> None:
    """Pods are refused until their namespace's `default` ServiceAccount exists (the
    controller-manager creates it a moment after the namespace)."""
    core = client.CoreV1Api(api)

    def exists() -> tuple[bool, str]:
        try:
            core.read_namespaced_service_account("default", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False, "not created yet"
            raise
        return True, "exists"

    _poll(f"ServiceAccount {namespace}/default (the controller-manager creates it)", exists, timeout_s)
