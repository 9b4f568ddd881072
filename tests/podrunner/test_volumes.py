from __future__ import annotations

import stat
from pathlib import Path

import pytest

from e2e.podrunner.env import ConfigError, Sources
from e2e.podrunner.volumes import mount_sources, plan_volume, referenced_names, token_requests, write_volume

POD = {
    "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"a": "b"}},
    "spec": {
        "containers": [
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/app"},
                    {"name": "cfg", "mountPath": "/etc/one.json", "subPath": "one.json"},
                ],
            }
        ],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cm1", "items": [{"key": "one", "path": "one.json"}]}},
            {
                "name": "sa",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    },
}


def plan(volume: dict, sources: Sources, tokens: dict | None = None, ca: str = "") -> object:
    return plan_volume(
        volume,
        POD,
        sources=sources,
        pod_ip="127.10.0.2",
        host_ip="127.0.0.1",
        tokens=tokens or {},
        ca_bundle=ca,
    )


def test_referenced_names_and_tokens() -> None:
    assert referenced_names(POD) == ({"cm1", "kube-root-ca.crt"}, {"s1"})
    assert token_requests(POD) == {(None, 3607)}


def test_config_map_items_and_missing_sources(tmp_path: Path) -> None:
    volume = POD["spec"]["volumes"][0]
    planned = plan(volume, Sources(configmaps={"cm1": {"one": '{"t": 1}', "two": "x"}}))
    write_volume(planned, tmp_path / "cfg")
    assert (tmp_path / "cfg" / "one.json").read_text() == '{"t": 1}'
    assert not (tmp_path / "cfg" / "two").exists()
    assert stat.S_IMODE((tmp_path / "cfg" / "one.json").stat().st_mode) == 0o644
    with pytest.raises(ConfigError, match='ConfigMap "cm1" not found'):
        plan(volume, Sources())


def test_projected_service_account_volume_uses_the_ca_bundle_fallback(tmp_path: Path) -> None:
    volume = POD["spec"]["volumes"][1]
    planned = plan(volume, Sources(), tokens={(None, 3607): "tok"}, ca="CA PEM")
    write_volume(planned, tmp_path / "sa")
    assert (tmp_path / "sa" / "token").read_text() == "tok"
    assert (tmp_path / "sa" / "ca.crt").read_text() == "CA PEM"
    assert (tmp_path / "sa" / "namespace").read_text() == "n"


def test_secret_volume_mode_and_paths_cannot_escape(tmp_path: Path) -> None:
    secret_volume = {"name": "s", "secret": {"secretName": "s1", "defaultMode": 0o400}}
    write_volume(plan(secret_volume, Sources(secrets={"s1": {"k": "v"}})), tmp_path)
    assert (tmp_path / "k").read_text() == "v"
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o400
    escaping = {"name": "s", "secret": {"secretName": "s1", "items": [{"key": "k", "path": "../k"}]}}
    with pytest.raises(ConfigError, match="stay inside the volume"):
        plan(escaping, Sources(secrets={"s1": {"k": "v"}}))


def test_unsupported_volume_types_are_named() -> None:
    with pytest.raises(ConfigError, match="csi"):
        plan({"name": "x", "csi": {"driver": "d"}}, Sources())


def test_mounts_with_sub_path() -> None:
    mounts = mount_sources(POD["spec"]["containers"][0], {"cfg": "/state/cfg"}, {})
    assert mounts == {"/etc/app": "/state/cfg", "/etc/one.json": "/state/cfg/one.json"}
    with pytest.raises(ConfigError, match="unknown volume"):
        mount_sources({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, {}, {})
