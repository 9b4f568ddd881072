"""Env resolution and $(VAR) expansion, checked against Kubernetes' documented semantics."""

from __future__ import annotations

import base64

import pytest

from e2e.podrunner.env import ConfigError, Sources, expand, resolve_env, secret_data

POD = {
    "metadata": {"name": "web-1", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web"}},
    "spec": {"nodeName": "kwok-node", "serviceAccountName": "sa"},
}


def lookup(values: dict[str, str]):
    return values.get


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x-$(A)-$(B)", "x-1-two"),
        ("$(MISSING)", "$(MISSING)"),  # undefined references stay as written
        ("$$(A)", "$(A)"),  # $$ escapes
        ("$$$(A)", "$1"),
        ("$(A", "$(A"),  # unterminated
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, lookup({"A": "1", "B": "two"})) == expected


def resolve(container: dict, sources: Sources | None = None, base: dict | None = None) -> dict[str, str]:
    return resolve_env(
        POD,
        container,
        sources=sources or Sources(),
        base=base or {},
        pod_ip="127.10.0.7",
        host_ip="127.0.0.1",
    )


def test_injected_pod_ip_host_and_port() -> None:
    env = resolve({"name": "c", "ports": [{"containerPort": 9000}]})
    assert env["POD_IP"] == "127.10.0.7"
    assert env["HOST"] == "127.10.0.7"
    assert env["PORT"] == "9000"
    assert resolve({"name": "c"})["PORT"] == "8080"


def test_wildcard_host_becomes_the_pod_ip_but_explicit_addresses_are_kept() -> None:
    assert resolve({"name": "c", "env": [{"name": "HOST", "value": "0.0.0.0"}]})["HOST"] == "127.10.0.7"
    assert resolve({"name": "c", "env": [{"name": "HOST", "value": "127.0.0.5"}]})["HOST"] == "127.0.0.5"


def test_env_values_reference_earlier_variables_only() -> None:
    container = {
        "name": "c",
        "env": [
            {"name": "FIRST", "value": "a-$(SECOND)"},
            {"name": "SECOND", "value": "b"},
            {"name": "THIRD", "value": "$(SECOND)-$(POD_IP)-$(BASE)"},
        ],
    }
    env = resolve(container, base={"BASE": "z"})
    assert env["FIRST"] == "a-$(SECOND)"
    assert env["THIRD"] == "b-127.10.0.7-z"


def test_field_refs() -> None:
    container = {
        "name": "c",
        "env": [
            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ],
    }
    env = resolve(container)
    assert (env["N"], env["NS"], env["IP"], env["APP"]) == ("web-1", "ns1", "127.10.0.7", "web")


def test_config_map_and_secret_refs_and_env_from_order() -> None:
    sources = Sources(
        configmaps={"cfg": {"A": "from-cm", "B": "cm-b", "bad-key": "skipped"}},
        secrets={"sec": {"B": "from-secret", "TOKEN": "s3cret"}},
    )
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}, "prefix": "S_"}],
        "env": [
            {"name": "A", "value": "explicit wins"},
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "B"}}},
        ],
    }
    env = resolve(container, sources)
    assert env["A"] == "explicit wins"
    assert env["B"] == "cm-b"
    assert env["S_B"] == "from-secret"
    assert env["K"] == "s3cret"
    assert env["M"] == "cm-b"
    assert "bad-key" not in env


def test_missing_references_name_the_object_and_optional_ones_are_skipped() -> None:
    missing = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(ConfigError, match='ConfigMap "nope" not found'):
        resolve(missing)
    no_key = {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ConfigError, match='couldn\'t find key k in Secret "s"'):
        resolve(no_key, Sources(secrets={"s": {}}))
    optional = {
        "name": "c",
        "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}}
        ],
        "envFrom": [{"secretRef": {"name": "gone", "optional": True}}],
    }
    assert "X" not in resolve(optional)


def test_secret_data_is_decoded() -> None:
    encoded = base64.b64encode(b"hunter2").decode()
    assert secret_data({"data": {"password": encoded}}) == {"password": "hunter2"}
