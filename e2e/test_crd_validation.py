"""The CRDs on a real API server: schema and CEL validation, server-side defaults, status subresource.

The launcher applies crds/*.yaml when the cluster starts; these tests check what the API server
itself makes of them (an offline approximation lives in tests/crds/).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

GROUP, VERSION = "sentimentops.io", "v1alpha1"
REPO = Path(__file__).resolve().parents[1]
CRD_FILES = sorted((REPO / "crds").glob("sentimentops.io_*.yaml"))
PLURALS = {"SentimentModel": "sentimentmodels", "SentimentRollout": "sentimentrollouts"}
TIMEOUT = 30  # seconds per API call


def example(name: str) -> dict[str, Any]:
    """A fresh copy of the one document in examples/NAME.yaml."""
    loaded: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    return loaded


def renamed(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy with a unique name, so tests never collide."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    return doc


def status_of(error: ApiException) -> dict[str, Any]:
    """The metav1.Status the API server sent with a refusal."""
    body: dict[str, Any] = json.loads(error.body or "{}")
    return body


def causes(error: ApiException) -> dict[str, str]:
    """field -> message of every cause in a 422."""
    details = status_of(error).get("details") or {}
    return {c.get("field", ""): c.get("message", "") for c in details.get("causes", [])}


@pytest.fixture
def objects(k8s: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


@pytest.fixture
def create(objects: client.CustomObjectsApi, namespace: str) -> Callable[..., dict[str, Any]]:
    """create(doc, dry_run=False) -> the object as the server stored it (strict field validation)."""

    def _create(doc: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        created: dict[str, Any] = objects.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURALS[doc["kind"]],
            doc,
            field_validation="Strict",
            dry_run="All" if dry_run else None,
            _request_timeout=TIMEOUT,
        )
        return created

    return _create


def rejection(create: Callable[..., dict[str, Any]], doc: dict[str, Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        create(doc)
    return caught.value


# --- the CRDs themselves ------------------------------------------------------------------------
@pytest.mark.parametrize("path", CRD_FILES, ids=[p.name for p in CRD_FILES])
def test_crd_is_established_with_the_schema_in_the_repo(k8s: client.ApiClient, path: Path) -> None:
    wanted = yaml.safe_load(path.read_text())
    served = get_json(
        k8s, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{wanted['metadata']['name']}"
    )
    conditions = {c["type"]: c["status"] for c in served["status"].get("conditions", [])}
    assert conditions.get("Established") == "True", conditions
    assert conditions.get("NamesAccepted") == "True", conditions
    assert conditions.get("NonStructuralSchema") in (None, "False"), conditions
    assert served["spec"]["versions"] == wanted["spec"]["versions"], (
        "the cluster serves other versions than crds/ holds: restart it (make cluster-down cluster-up)"
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_is_accepted(create: Callable[..., dict[str, Any]], name: str) -> None:
    doc = example(name)
    stored = create(doc, dry_run=True)
    assert stored["metadata"]["name"] == doc["metadata"]["name"]


# --- SentimentModel -----------------------------------------------------------------------------
def test_minimal_model_is_accepted_and_defaulted(create: Callable[..., dict[str, Any]]) -> None:
    doc = renamed(example("sentimentmodel-minimal"))
    doc["spec"]["drift"] = {}
    spec = create(doc)["spec"]
    assert spec["inference"] == {"maxTokens": 256, "enableBatch": True, "maxBatchSize": 32, "batchWaitMs": 3}
    assert spec["features"] == {"quantized": False, "explainability": False}
    assert spec["drift"]["consecutiveBreaches"] == 3
    assert spec["drift"]["schedule"] == "0 * * * *"
    assert spec["replicas"] == 2 and "autoscaling" not in spec


SHA = "ab" * 32
INVALID_MODELS = [
    # (changes to spec, field the 422 names, fragment of the message)
    ({"artifact": {"uri": "pvc://models/v1", "sha256": "not-a-sha"}}, "spec.artifact.sha256", "should match"),
    ({"artifact": {"uri": "ftp://host/model", "sha256": SHA}}, "spec.artifact.uri", "must be pvc://"),
    ({"replicas": -1}, "spec.replicas", "should be greater than or equal to 0"),
    ({"replicas": 2, "autoscaling": {"max": 3}}, "spec", "mutually exclusive"),
    (
        {"replicas": None, "autoscaling": {"min": 5, "max": 2}},
        "spec.autoscaling.min",
        "must not exceed autoscaling.max",
    ),
    ({"inference": {"maxTokens": 7}}, "spec.inference.maxTokens", "greater than or equal to 8"),
    ({"drift": {"window": "1 day"}}, "spec.drift.window", "should match"),
    ({"drift": {"threshold": 0}}, "spec.drift.threshold", "should be greater than 0"),
    ({"calibration": {"path": "/c.json", "configMapRef": {"name": "c"}}}, "spec.calibration", "exactly one"),
    # a bare claim or bucket names no file to fetch
    ({"artifact": {"uri": "s3://ml-models", "sha256": SHA}}, "spec.artifact.uri", "must be pvc://"),
    ({"artifact": {"uri": "pvc://sentiment-models", "sha256": SHA}}, "spec.artifact.uri", "must be pvc://"),
    (
        {"evaluation": {"dataset": {"uri": "s3://datasets", "sha256": SHA}}},
        "spec.evaluation.dataset.uri",
        "must be pvc://",
    ),
    # the drift job refuses a window under 1ms, Prometheus an empty range
    ({"drift": {"window": "0s"}}, "spec.drift.window", "drift.window must be at least 1s"),
    ({"drift": {"window": "100ns"}}, "spec.drift.window", "drift.window must be at least 1s"),
    # what the Deployment and the HPA the operator builds would be refused for
    ({"resources": {"requests": {"cpu": "-1"}}}, "spec.resources.requests", "must not be negative"),
    ({"resources": {"limits": {"memory": "-2Gi"}}}, "spec.resources.limits", "must not be negative"),
    ({"resources": {"limits": {"cpus": "2"}}}, "spec.resources.limits", "resources.limits keys must be cpu"),
    (
        {"resources": {"requests": {"memory": "4Gi"}, "limits": {"memory": "2Gi"}}},
        "spec.resources.requests",
        "must be at most the same resource's value in resources.limits",
    ),
    (
        {"resources": {"requests": {"cpu": "2500m"}, "limits": {"cpu": 2}}},
        "spec.resources.requests",
        "must be at most",
    ),
    (
        {"resources": {"requests": {"nvidia.com/gpu": 1}}},
        "spec.resources.requests",
        "cannot be overcommitted",
    ),
    (
        {"resources": {"requests": {"nvidia.com/gpu": "500m"}, "limits": {"nvidia.com/gpu": "500m"}}},
        "spec.resources.requests",
        "must be written as a whole number",
    ),
    (
        {"resources": {"limits": {"nvidia.com/gpu": "1.5"}}},
        "spec.resources.limits",
        "must be written as a whole number",
    ),
    # the server's isInteger() reads the quantity as written (tests/crds/crd_schema.py follows it)
    (
        {"resources": {"requests": {"nvidia.com/gpu": "2000m"}, "limits": {"nvidia.com/gpu": 2}}},
        "spec.resources.requests",
        "must be written as a whole number",
    ),
    ({"replicas": None, "autoscaling": {"max": 4}}, "spec.autoscaling", "needs a CPU request above 0"),
    (
        {"replicas": None, "autoscaling": {"max": 4}, "resources": {"requests": {"cpu": "0"}}},
        "spec.autoscaling",
        "needs a CPU request above 0",
    ),
]


def minimal_model_with(changes: dict[str, Any]) -> dict[str, Any]:
    """The minimal SentimentModel example under a fresh name, with `changes` applied to its spec (a
    value of None removes that key)."""
    doc = renamed(example("sentimentmodel-minimal"))
    for key, value in changes.items():
        if value is None:
            doc["spec"].pop(key)
        else:
            doc["spec"][key] = value
    return doc


@pytest.mark.parametrize(("changes", "field", "fragment"), INVALID_MODELS, ids=[i[1] for i in INVALID_MODELS])
def test_invalid_model_is_rejected_naming_the_field(
    create: Callable[..., dict[str, Any]], changes: dict[str, Any], field: str, fragment: str
) -> None:
    doc = minimal_model_with(changes)
    error = rejection(create, doc)
    assert error.status == 422, error.body
    assert status_of(error)["reason"] == "Invalid"
    assert field in causes(error), status_of(error)["message"]
    assert fragment in causes(error)[field], causes(error)
    assert field in status_of(error)["message"]


# Values at the edge of a rule that the real server (its CEL quantity and duration libraries, not the
# offline stand-ins) must accept.
MODELS_AT_THE_EDGE = [
    {"drift": {"window": "1s"}},
    {"artifact": {"uri": "s3://ml-models/m.tar", "sha256": SHA}},
    {"resources": {"requests": {"cpu": "1500m", "memory": "2048Mi"}, "limits": {"cpu": 2, "memory": "2Gi"}}},
    # a CPU limit alone: Kubernetes defaults the request to it, so the autoscaler has one
    {"replicas": None, "autoscaling": {"max": 4}, "resources": {"limits": {"cpu": "2"}}},
    {
        "resources": {
            "requests": {"nvidia.com/gpu": 1, "hugepages-2Mi": "64Mi"},
            "limits": {"nvidia.com/gpu": "1", "hugepages-2Mi": "64Mi", "ephemeral-storage": "1Gi"},
        }
    },
    # other spellings of a whole number: a decimal and a binary suffix
    {
        "resources": {
            "requests": {"example.com/a": "1k", "example.com/b": "1Ki"},
            "limits": {"example.com/a": "1k", "example.com/b": "1Ki"},
        }
    },
]


@pytest.mark.parametrize("changes", MODELS_AT_THE_EDGE, ids=[str(c) for c in MODELS_AT_THE_EDGE])
def test_model_at_the_edge_of_a_rule_is_accepted(
    create: Callable[..., dict[str, Any]], changes: dict[str, Any]
) -> None:
    doc = minimal_model_with(changes)
    create(doc, dry_run=True)


def test_model_name_that_cannot_name_its_objects_is_rejected(create: Callable[..., dict[str, Any]]) -> None:
    doc = example("sentimentmodel-minimal")
    doc["metadata"]["name"] = "9-lives"  # a valid object name, but no valid Service name
    error = rejection(create, doc)
    assert error.status == 422
    assert "metadata.name must be a DNS-1035 label" in causes(error)["metadata.name"]


def test_unknown_field_is_rejected_under_strict_field_validation(
    create: Callable[..., dict[str, Any]],
) -> None:
    doc = renamed(example("sentimentmodel-minimal"))
    doc["spec"]["replica"] = 3
    error = rejection(create, doc)
    assert error.status == 400, error.body  # strict decoding errors are BadRequest, not Invalid
    assert 'unknown field "spec.replica"' in status_of(error)["message"]


# --- SentimentRollout ---------------------------------------------------------------------------
def test_minimal_rollout_gets_designs_default_plan(create: Callable[..., dict[str, Any]]) -> None:
    spec = create(renamed(example("sentimentrollout-minimal")))["spec"]
    assert spec["steps"] == [
        {"evaluate": {}},
        {"warmup": {}},
        {"setWeight": 10},
        {"watch": {"duration": "24h"}},
        {"setWeight": 100},
        {"watch": {"duration": "1h"}},
    ]
    assert spec["trafficRouting"] == {"replicas": {}}
    assert spec["analysis"]["noData"] == "Hold"
    assert spec["analysis"]["thresholds"] == {
        "latencyP95RegressionPct": 25,
        "f1DropAbs": 0.02,
        "errorRate": 0.02,
        "errorRateFor": "15m",
    }
    assert spec["gates"] == {"preDeployEvaluation": True, "warmup": {"requests": 100}}
    assert (spec["paused"], spec["abort"], spec["advisory"]) == (False, False, False)


INVALID_ROLLOUTS = [
    ({"candidateModel": "sentiment-v1"}, "spec.candidateModel", "must name a different SentimentModel"),
    ({"steps": [{"setWeight": 10, "pause": {}}]}, "spec.steps[0]", "exactly one of evaluate"),
    ({"steps": [{"setWeight": 150}]}, "spec.steps[0].setWeight", "less than or equal to 100"),
    ({"shadow": {"enabled": True, "percent": 101}}, "spec.shadow.percent", "less than or equal to 100"),
    ({"analysis": {"noData": "Maybe"}}, "spec.analysis.noData", 'supported values: "Hold", "Fail", "Pass"'),
    (
        {"abRouting": {"enabled": True, "header": {"name": "x", "value": "y"}}},
        "spec.abRouting.enabled",
        "gatewayAPI",
    ),
    (
        {"shadow": {"enabled": True, "percent": 10}},
        "spec.shadow.enabled",
        "shadow needs trafficRouting.gatewayAPI",
    ),
    ({"analysis": {"interval": "0s"}}, "spec.analysis.interval", "analysis.interval must be at least 1s"),
    ({"analysis": {"window": "0s"}}, "spec.analysis.window", "analysis.window must be at least 1s"),
    ({"analysis": {"window": "100ns"}}, "spec.analysis.window", "analysis.window must be at least 1s"),
    (
        {"steps": [{"analysis": {"window": "500ms"}}]},
        "spec.steps[0].analysis.window",
        "steps[].analysis.window must be at least 1s",
    ),
    (
        {"steps": [{"watch": {"duration": "0s"}}]},
        "spec.steps[0].watch.duration",
        "watch.duration must be at least 1s",
    ),
    (
        {"steps": [{"pause": {"duration": "0s"}}]},
        "spec.steps[0].pause.duration",
        "pause.duration must be at least 1s",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"), INVALID_ROLLOUTS, ids=[i[1] for i in INVALID_ROLLOUTS]
)
def test_invalid_rollout_is_rejected_naming_the_field(
    create: Callable[..., dict[str, Any]], changes: dict[str, Any], field: str, fragment: str
) -> None:
    doc = renamed(example("sentimentrollout-minimal"))
    doc["spec"].update(changes)
    error = rejection(create, doc)
    assert error.status == 422, error.body
    assert field in causes(error), status_of(error)["message"]
    assert fragment in causes(error)[field], causes(error)


ROLLOUTS_AT_THE_EDGE = [
    {"analysis": {"interval": "1s", "window": "1.5s"}},
    # errorRateFor 0s is a choice, not a mistake: a breach at the first analysis above errorRate
    {"analysis": {"thresholds": {"errorRateFor": "0s"}}},
    {"steps": [{"pause": {"duration": "1s"}}, {"watch": {"duration": "1m"}}, {"analysis": {"window": "1s"}}]},
]


@pytest.mark.parametrize("changes", ROLLOUTS_AT_THE_EDGE, ids=[str(c) for c in ROLLOUTS_AT_THE_EDGE])
def test_rollout_at_the_edge_of_a_rule_is_accepted(
    create: Callable[..., dict[str, Any]], changes: dict[str, Any]
) -> None:
    doc = renamed(example("sentimentrollout-minimal"))
    doc["spec"].update(changes)
    create(doc, dry_run=True)


# --- status subresource -------------------------------------------------------------------------
def test_spec_and_status_are_written_separately(
    create: Callable[..., dict[str, Any]], objects: client.CustomObjectsApi, namespace: str
) -> None:
    doc = renamed(example("sentimentrollout-minimal"))
    name, plural = doc["metadata"]["name"], PLURALS[doc["kind"]]
    doc["status"] = {"phase": "Promoted"}  # ignored on create: status has its own endpoint
    created = create(doc)
    assert "status" not in created or "phase" not in created["status"]
    generation = created["metadata"]["generation"]

    status = {"phase": "Progressing", "currentStep": 3, "canaryWeight": 10, "observedGeneration": generation}
    after_status = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name,
        {"status": status, "spec": {"abort": True}},
        _request_timeout=TIMEOUT,
    )  # fmt: skip
    assert after_status["status"] == status
    assert after_status["spec"]["abort"] is False  # the status endpoint does not touch spec
    assert after_status["metadata"]["generation"] == generation

    after_spec = objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name,
        {"spec": {"paused": True}, "status": {"phase": "Aborted"}},
        _request_timeout=TIMEOUT,
    )  # fmt: skip
    assert after_spec["spec"]["paused"] is True
    assert after_spec["status"] == status  # the main endpoint does not touch status
    assert after_spec["metadata"]["generation"] == generation + 1


def test_status_is_validated_too(
    create: Callable[..., dict[str, Any]], objects: client.CustomObjectsApi, namespace: str
) -> None:
    doc = create(renamed(example("sentimentmodel-minimal")))
    with pytest.raises(ApiException) as caught:
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "sentimentmodels", doc["metadata"]["name"],
            {"status": {"phase": "Running"}},
            _request_timeout=TIMEOUT,
        )  # fmt: skip
    assert caught.value.status == 422
    assert "status.phase" in causes(caught.value)


def test_printer_columns(
    create: Callable[..., dict[str, Any]], k8s: client.ApiClient, namespace: str
) -> None:
    doc = create(renamed(example("sentimentmodel-minimal")))
    table = _table(k8s, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/sentimentmodels")
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:5] == ["Name", "Version", "Phase", "Ready", "Replicas"]
    row = next(r for r in table["rows"] if r["cells"][0] == doc["metadata"]["name"])
    assert row["cells"][1] == "1.0.0"


def _table(k8s: client.ApiClient, path: str) -> dict[str, Any]:
    """GET path as a meta.k8s.io Table, the way kubectl get asks for it."""
    return get_json(k8s, path, accept="application/json;as=Table;v=v1;g=meta.k8s.io")


def get_json(k8s: client.ApiClient, path: str, accept: str = "application/json") -> dict[str, Any]:
    """GET an API path and return the JSON exactly as the server sent it (no model conversion)."""
    method, url, headers, _, _ = k8s.param_serialize(
        "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = k8s.call_api(method, url, headers, _request_timeout=TIMEOUT)
    response.read()
    assert response.status == 200, response.data
    loaded: dict[str, Any] = json.loads(response.data)
    return loaded
