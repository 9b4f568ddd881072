"""Pod volumes materialised as local directories: what to write (pure) and writing it (I/O).

emptyDir, configMap, secret, downwardAPI and projected volumes (serviceAccountToken included)
become directories under the pod's own directory; hostPath uses the host path itself; a
persistentVolumeClaim becomes one directory per claim under the state directory, shared by every
pod that mounts the claim (like a ReadWriteMany volume), so tests and the demo can put model
artifacts there: <state-dir>/pvcs/<namespace>/<claim>/.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.podrunner.env import ConfigError, Sources, expand, field_ref, resource_ref

DEFAULT_MODE = 0o644
TokenKey = tuple[str | None, int]  # (audience, expirationSeconds)


@dataclass(frozen=True)
class VolumePlan:
    name: str
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)  # relative path -> (content, mode)
    host_path: str | None = None  # use this path instead of a pod directory
    claim: str | None = None


def _all_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def referenced_names(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(ConfigMap names, Secret names) the pod's env and volumes refer to."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    for container in _all_containers(pod):
        for entry in container.get("envFrom") or []:
            if "configMapRef" in entry:
                configmaps.add(entry["configMapRef"].get("name", ""))
            if "secretRef" in entry:
                secrets.add(entry["secretRef"].get("name", ""))
        for entry in container.get("env") or []:
            source = entry.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                configmaps.add(source["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"].get("name", ""))
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if "configMap" in volume:
            configmaps.add(volume["configMap"].get("name", ""))
        if "secret" in volume:
            secrets.add(volume["secret"].get("secretName", ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                configmaps.add(source["configMap"].get("name", ""))
            if "secret" in source:
                secrets.add(source["secret"].get("name", ""))
    return configmaps - {""}, secrets - {""}


def token_requests(pod: Mapping[str, Any]) -> set[TokenKey]:
    keys: set[TokenKey] = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                keys.add((token.get("audience") or None, int(token.get("expirationSeconds", 3607))))
    return keys


def _safe_relative(path: str, volume: str) -> str:
    normal = posixpath.normpath(path)
    if normal.startswith(("/", "..")) or normal == ".":
        raise ConfigError(
            f"volume {volume!r}: item path {path!r} must be relative and stay inside the volume"
        )
    return normal


def _key_files(
    volume: str,
    kind: str,
    name: str,
    data: Mapping[str, str] | None,
    items: Iterable[Mapping[str, Any]] | None,
    mode: int,
    optional: bool,
) -> dict[str, tuple[bytes, int]]:
    if data is None:
        if optional:
            return {}
        raise ConfigError(f'volume {volume!r}: {kind} "{name}" not found')
    if not items:
        return {_safe_relative(key, volume): (value.encode(), mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            raise ConfigError(f'volume {volume!r}: couldn\'t find key {key} in {kind} "{name}"')
        files[_safe_relative(item.get("path", key), volume)] = (
            data[key].encode(),
            int(item.get("mode", mode)),
        )
    return files


def _downward_files(
    volume: str,
    items: Iterable[Mapping[str, Any]],
    pod: Mapping[str, Any],
    pod_ip: str,
    host_ip: str,
    mode: int,
) -> dict[str, tuple[bytes, int]]:
    containers = {c.get("name"): c for c in _all_containers(pod)}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if "fieldRef" in item:
            value = field_ref(pod, item["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            value = resource_ref(containers.get(ref.get("containerName"), {}), ref.get("resource", ""))
        else:
            raise ConfigError(f"volume {volume!r}: downwardAPI item {item.get('path')!r} has no fieldRef")
        files[_safe_relative(item.get("path", ""), volume)] = (value.encode(), int(item.get("mode", mode)))
    return files


def plan_volume(
    volume: Mapping[str, Any],
    pod: Mapping[str, Any],
    *,
    sources: Sources,
    pod_ip: str,
    host_ip: str,
    tokens: Mapping[TokenKey, str],
    ca_bundle: str = "",
) -> VolumePlan:
    """What the volume holds. Raises ConfigError for missing sources and unsupported volume types."""
    name = volume["name"]
    if "emptyDir" in volume:
        return VolumePlan(name)
    if "hostPath" in volume:
        return VolumePlan(name, host_path=volume["hostPath"].get("path", "/"))
    if "persistentVolumeClaim" in volume:
        return VolumePlan(name, claim=volume["persistentVolumeClaim"].get("claimName", ""))
    if "configMap" in volume:
        ref = volume["configMap"]
        files = _key_files(
            name,
            "ConfigMap",
            ref.get("name", ""),
            sources.configmaps.get(ref.get("name", "")),
            ref.get("items"),
            int(ref.get("defaultMode", DEFAULT_MODE)),
            bool(ref.get("optional")),
        )
        return VolumePlan(name, files)
    if "secret" in volume:
        ref = volume["secret"]
        files = _key_files(
            name,
            "Secret",
            ref.get("secretName", ""),
            sources.secrets.get(ref.get("secretName", "")),
            ref.get("items"),
            int(ref.get("defaultMode", DEFAULT_MODE)),
            bool(ref.get("optional")),
        )
        return VolumePlan(name, files)
    if "downwardAPI" in volume:
        ref = volume["downwardAPI"]
        mode = int(ref.get("defaultMode", DEFAULT_MODE))
        return VolumePlan(name, _downward_files(name, ref.get("items") or [], pod, pod_ip, host_ip, mode))
    if "projected" in volume:
        return VolumePlan(name, _projected_files(volume, pod, sources, pod_ip, host_ip, tokens, ca_bundle))
    kinds = sorted(k for k in volume if k != "name")
    raise ConfigError(f"volume {name!r}: type {kinds} is not supported by the podrunner")


def _projected_files(
    volume: Mapping[str, Any],
    pod: Mapping[str, Any],
    sources: Sources,
    pod_ip: str,
    host_ip: str,
    tokens: Mapping[TokenKey, str],
    ca_bundle: str,
) -> dict[str, tuple[bytes, int]]:
    name = volume["name"]
    mode = int(volume["projected"].get("defaultMode", DEFAULT_MODE))
    files: dict[str, tuple[bytes, int]] = {}
    for source in volume["projected"].get("sources") or []:
        if "configMap" in source:
            ref = source["configMap"]
            cm_name = ref.get("name", "")
            data = sources.configmaps.get(cm_name)
            if data is None and cm_name == "kube-root-ca.crt" and ca_bundle:
                data = {"ca.crt": ca_bundle}  # published by the controller-manager; ours is the same CA
            files |= _key_files(
                name, "ConfigMap", cm_name, data, ref.get("items"), mode, bool(ref.get("optional"))
            )
        elif "secret" in source:
            ref = source["secret"]
            data = sources.secrets.get(ref.get("name", ""))
            files |= _key_files(
                name, "Secret", ref.get("name", ""), data, ref.get("items"), mode, bool(ref.get("optional"))
            )
        elif "downwardAPI" in source:
            files |= _downward_files(
                name, source["downwardAPI"].get("items") or [], pod, pod_ip, host_ip, mode
            )
        elif "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            key = (token.get("audience") or None, int(token.get("expirationSeconds", 3607)))
            files[_safe_relative(token.get("path", "token"), name)] = (tokens[key].encode(), 0o600)
        else:
            raise ConfigError(f"volume {name!r}: projected source {sorted(source)} is not supported")
    return files


def write_volume(plan: VolumePlan, directory: Path) -> None:
    """Materialise a planned volume into `directory` (created; files replaced atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in plan.files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.tmp")
        scratch.write_bytes(content)
        os.chmod(scratch, mode & 0o777)
        os.replace(scratch, target)


def mount_sources(
    container: Mapping[str, Any], local_volume: Mapping[str, str], env: Mapping[str, str]
) -> dict[str, str]:
    """mountPath -> local path for the container's volumeMounts (subPath and subPathExpr honoured)."""

    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        volume = mount.get("name", "")
        if volume not in local_volume:
            raise ConfigError(f"volumeMount {mount.get('mountPath')!r} names unknown volume {volume!r}")
        sub = mount.get("subPath") or ""
        if mount.get("subPathExpr"):
            sub = expand(mount["subPathExpr"], env.get)
        local = local_volume[volume]
        if sub:
            local = str(Path(local) / _safe_relative(sub, volume))
        mounts[mount["mountPath"]] = local
    return mounts
