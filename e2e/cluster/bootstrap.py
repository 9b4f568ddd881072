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
from kubernetes.dynamic import DynamicClient

from e2e.cluster.processes import StartError

FIELD_MANAGER = "sentiment-cluster-launcher"


def load_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the files, in order; a non-Kubernetes document is an error."""
    docs: list[dict[str, Any]] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                raise StartError(f"{path}: a document without apiVersion/kind; is it a Kubernetes manifest?")
            docs.append(doc)
    return docs


def crd_names(docs: Iterable[dict[str, Any]]) -> list[str]:
    return [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]


def apply(api: client.ApiClient, docs: Iterable[dict[str, Any]], cache_file: Path) -> None:
    """Create each object, or server-side apply it when it exists (a reused cluster), so applying
    twice is harmless and picks up edits. A plain create costs the API server less than an apply
    (no merge of the large CRD schemas), which counts on a fresh cluster's start."""
    dynamic = DynamicClient(api, cache_file=str(cache_file))

    def apply_one(doc: dict[str, Any]) -> None:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        meta = doc.get("metadata", {})
        try:
            try:
                dynamic.create(
                    resource, body=doc, namespace=meta.get("namespace"), field_manager=FIELD_MANAGER
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                dynamic.server_side_apply(
                    resource,
                    body=doc,
                    name=meta.get("name"),
                    namespace=meta.get("namespace"),
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True,
                )
        except ApiException as exc:
            raise StartError(
                f"applying {doc['kind']} {meta.get('name')} failed: "
                f"HTTP {exc.status} {exc.reason}: {exc.body}"
            ) from exc

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
