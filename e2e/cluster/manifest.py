"""Where the built binaries are: the manifest e2e/controlplane/build.sh writes into the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from e2e.cluster.config import Binaries

REPO = Path(__file__).resolve().parents[2]
VERSIONS_ENV = REPO / "e2e" / "controlplane" / "versions.env"
BUILD_HINT = "run `make controlplane` (a cold build takes about half an hour on 2 cores)"


class ManifestError(RuntimeError):
    """The binaries are not built, or were built for other pinned versions."""


def cache_dir() -> Path:
    return Path(os.environ.get("SENTIMENT_CACHE") or Path.home() / ".cache" / "sentiment-rollouts")


def manifest_path() -> Path:
    return cache_dir() / "controlplane" / "manifest.json"


def parse_pins(text: str) -> dict[str, str]:
    """versions.env's KEY=VALUE lines (comments and blanks ignored)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def expected_pins(pins: dict[str, str]) -> dict[str, str]:
    return {
        "kubernetes": pins["K8S_VERSION"],
        "etcd": pins["ETCD_VERSION"],
        "kwok": pins["KWOK_VERSION"],
        "gateway_api": pins["GATEWAY_API_VERSION"],
    }


def binaries_from(manifest: dict[str, object], pins: dict[str, str], source: Path) -> Binaries:
    """Check a parsed manifest against the pins and that every file it names exists."""
    if manifest.get("pins") != expected_pins(pins):
        raise ManifestError(
            f"{source} was built for {manifest.get('pins')}, "
            f"but versions.env pins {expected_pins(pins)}: {BUILD_HINT}"
        )
    bins = manifest.get("binaries")
    if not isinstance(bins, dict):
        raise ManifestError(f"{source} has no 'binaries' table: {BUILD_HINT}")
    paths = {
        name: Path(str(bins.get(name) or ""))
        for name in (
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "etcd",
            "kwok",
            "prometheus",
        )
    }
    for name, path in paths.items():
        if not str(path) or not path.is_file() or not os.access(path, os.X_OK):
            hint = "install Debian's `prometheus` package" if name == "prometheus" else BUILD_HINT
            raise ManifestError(f"{name} is missing (manifest {source} says '{path}'): {hint}")
    stages = Path(str(manifest.get("kwok_stages", "")))
    crds = Path(str(manifest.get("gateway_api_crds", "")))
    for what, directory in (("KWOK node stages", stages), ("Gateway API CRDs", crds)):
        if not directory.is_dir():
            raise ManifestError(f"{what} are missing ('{directory}'): {BUILD_HINT}")
    versions = manifest.get("versions")
    return Binaries(
        kube_apiserver=paths["kube-apiserver"],
        kube_controller_manager=paths["kube-controller-manager"],
        kube_scheduler=paths["kube-scheduler"],
        etcd=paths["etcd"],
        kwok=paths["kwok"],
        prometheus=paths["prometheus"],
        kwok_stages=stages,
        gateway_api_crds=crds,
        versions={str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {},
    )


def load() -> Binaries:
    path = manifest_path()
    if not path.is_file():
        raise ManifestError(f"the control-plane binaries are not built ({path} is missing): {BUILD_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}): {BUILD_HINT}") from exc
    return binaries_from(manifest, parse_pins(VERSIONS_ENV.read_text()), path)
