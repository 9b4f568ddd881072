"""A thin asynchronous client for the few API calls the runner makes (httpx, JSON dicts)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx


class ApiError(RuntimeError):
    def __init__(self, status: int, text: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {text[:300]}")
        self.status = status


class WatchExpired(RuntimeError):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True)
class Endpoint:
    server: str
    ssl_context: ssl.SSLContext | bool
    headers: Mapping[str, str]
    ca_file: str | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.server)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def load_endpoint(kubeconfig: str) -> Endpoint:
    """Server URL and credentials from a kubeconfig (parsed by the kubernetes client, inline data too)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Bearer tokens (static or from an exec plugin) appear among the client's auth settings.
    settings: dict[str, dict[str, Any]] = dict(configuration.auth_settings())
    headers = {
        str(setting["key"]).title(): str(setting["value"])
        for setting in settings.values()
        if setting.get("in") == "header" and setting.get("value")
    }
    verify: ssl.SSLContext | bool
    if configuration.host.startswith("https"):
        if configuration.verify_ssl:
            verify = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            verify = ssl.create_default_context()
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            verify.load_cert_chain(configuration.cert_file, configuration.key_file)
    else:
        verify = False
    return Endpoint(configuration.host.rstrip("/"), verify, headers, configuration.ssl_ca_cert)


class Kube:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client = httpx.AsyncClient(
            base_url=endpoint.server,
            verify=endpoint.ssl_context,
            headers=dict(endpoint.headers),
            timeout=httpx.Timeout(30.0),
            trust_env=False,  # the API server is local: never send it through an HTTP(S)_PROXY
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, what)
        body: dict[str, Any] = response.json()
        return body

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, None when it does not exist."""
        try:
            return await self._request("GET", path, f"get {path}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, node: str) -> dict[str, Any]:
        params = {"fieldSelector": f"spec.nodeName={node}"}
        return await self._request("GET", "/api/v1/pods", "list pods", params=params)

    async def watch_pods(self, node: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        params = {
            "fieldSelector": f"spec.nodeName={node}",
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        timeout = httpx.Timeout(30.0, read=330.0)
        async with self._client.stream("GET", "/api/v1/pods", params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise WatchExpired("watch resourceVersion expired")
            if response.status_code >= 400:
                raise ApiError(response.status_code, (await response.aread()).decode(), "watch pods")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise WatchExpired(status.get("message", "watch expired"))
                    raise ApiError(int(status.get("code", 500)), status.get("message", ""), "watch pods")
                yield event["type"], event["object"]

    async def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            f"patch status of pod {namespace}/{name}",
            content=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Delete with grace 0 (the kubelet's final step), only the pod with this uid."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            await self._request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                f"delete pod {namespace}/{name}",
                json=body,
            )
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or a newer pod with the same name
                raise

    async def service_account_token(
        self,
        namespace: str,
        service_account: str,
        pod: Mapping[str, Any],
        audience: str | None,
        expiration_s: int,
    ) -> str:
        meta = pod["metadata"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": expiration_s,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        result = await self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            f"token for serviceaccount {namespace}/{service_account}",
            json=body,
        )
        return str(result["status"]["token"])
