"""Container environment: Kubernetes' env/envFrom resolution and $(VAR) expansion, as pure functions.

Order, as in the kubelet: the base layer (inherited variables, KUBERNETES_SERVICE_*, and the
runner's POD_IP, HOST and PORT), then envFrom sources in order, then env entries in order; each
env value may reference any variable defined before it with $(NAME). Commands and args are
expanded against the complete environment. `$$` is a literal `$`; an undefined $(NAME) stays as is.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
DEFAULT_PORT = 8080


class ConfigError(ValueError):
    """The pod references configuration that does not exist (kubelet: CreateContainerConfigError)."""


@dataclass(frozen=True)
class Sources:
    """ConfigMaps and Secrets of the pod's namespace, by name; absent names do not exist."""

    configmaps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes' $(VAR) expansion (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 >= n:
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            value = lookup(name)
            out.append(value if value is not None else f"$({name})")
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def expand_all(items: list[str], env: Mapping[str, str]) -> list[str]:
    return [expand(item, env.get) for item in items]


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's `data` decoded (base64) to text; undecodable bytes are replaced, never dropped."""
    data = secret.get("data") or {}
    return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}


def configmap_data(configmap: Mapping[str, Any]) -> dict[str, str]:
    data = dict(configmap.get("data") or {})
    for key, value in (configmap.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value).decode("utf-8", "replace")
    return data


def field_ref(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API fieldRef, for the fields the kubelet supports."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _FIELD_SUBSCRIPT.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{key}="{value}"' for key, value in items)
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_ref(container: Mapping[str, Any], resource: str) -> str:
    """resourceFieldRef without divisors: the container's value, else the node's (this machine)."""
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is not None:
        return str(value)
    if name == "cpu":
        return str(os.cpu_count() or 1)
    if name == "memory":
        return str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return "0"


def _key_ref(ref: Mapping[str, Any], kind: str, store: Mapping[str, Mapping[str, str]]) -> str | None:
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    if name not in store:
        if optional:
            return None
        raise ConfigError(f'{kind} "{name}" not found')
    if key not in store[name]:
        if optional:
            return None
        raise ConfigError(f'couldn\'t find key {key} in {kind} "{name}"')
    return store[name][key]


def _env_from(entry: Mapping[str, Any], sources: Sources) -> dict[str, str]:
    prefix = entry.get("prefix", "")
    if "configMapRef" in entry:
        ref, kind, store = entry["configMapRef"], "ConfigMap", sources.configmaps
    elif "secretRef" in entry:
        ref, kind, store = entry["secretRef"], "Secret", sources.secrets
    else:
        raise ConfigError(f"unsupported envFrom entry {dict(entry)!r}")
    name = ref.get("name", "")
    if name not in store:
        if ref.get("optional"):
            return {}
        raise ConfigError(f'{kind} "{name}" not found')
    # The kubelet skips keys that are not valid variable names (and emits an event).
    return {prefix + k: v for k, v in store[name].items() if _C_IDENTIFIER.match(prefix + k)}


def _env_value(
    entry: Mapping[str, Any],
    env: Mapping[str, str],
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    sources: Sources,
    pod_ip: str,
    host_ip: str,
) -> str | None:
    if "valueFrom" not in entry:
        return expand(str(entry.get("value", "")), env.get)
    source = entry["valueFrom"] or {}
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
    if "resourceFieldRef" in source:
        return resource_ref(container, source["resourceFieldRef"].get("resource", ""))
    if "configMapKeyRef" in source:
        return _key_ref(source["configMapKeyRef"], "ConfigMap", sources.configmaps)
    if "secretKeyRef" in source:
        return _key_ref(source["secretKeyRef"], "Secret", sources.secrets)
    raise ConfigError(f"unsupported valueFrom for env {entry.get('name')!r}: {sorted(source)}")


def default_port(container: Mapping[str, Any]) -> int:
    ports = container.get("ports") or []
    return int(ports[0]["containerPort"]) if ports else DEFAULT_PORT


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    sources: Sources,
    base: Mapping[str, str],
    pod_ip: str,
    host_ip: str,
) -> dict[str, str]:
    """The container's full environment. Raises ConfigError naming what is missing."""
    env: dict[str, str] = dict(base)
    env.update({"POD_IP": pod_ip, "HOST": pod_ip, "PORT": str(default_port(container))})
    for entry in container.get("envFrom") or []:
        env.update(_env_from(entry, sources))
    for entry in container.get("env") or []:
        value = _env_value(entry, env, pod, container, sources, pod_ip, host_ip)
        if value is not None:
            env[entry["name"]] = value
    # A wildcard bind address would make every pod listen on every loopback address and
    # collide on the port: in a pod, "all interfaces" means the pod's own IP.
    if env.get("HOST", "") in _WILDCARD_HOSTS:
        env["HOST"] = pod_ip
    return env
