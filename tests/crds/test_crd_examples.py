"""Examples a user copies are valid; invalid instances of both kinds fail, naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from crd_schema import CRD_FILES, load_examples, openapi_schema, schema_nodes, violations

EXAMPLES = load_examples()
DELETE = object()


def example(name: str) -> dict[str, Any]:
    """A fresh copy of the document in examples/NAME.yaml."""
    (doc,) = [doc for path, doc in EXAMPLES if path.stem == name]
    return copy.deepcopy(doc)


def mutate(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set (or, with DELETE, remove) fields named by dotted paths, e.g. {'spec.artifact.sha256': 'x'}."""
    doc = copy.deepcopy(doc)
    for dotted_path, value in changes.items():
        *parents, leaf = dotted_path.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return doc


def test_examples_cover_both_kinds() -> None:
    assert {doc["kind"] for _, doc in EXAMPLES} == set(CRD_FILES)
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(
    ("path", "doc"), EXAMPLES, ids=[f"{p.name}:{d['metadata']['name']}" for p, d in EXAMPLES]
)
def test_example_is_valid(path: Path, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "sentimentops.io/v1alpha1"
    assert [str(v) for v in violations(doc, doc["kind"])] == []


def test_rollout_examples_name_example_models() -> None:
    models = {doc["metadata"]["name"] for _, doc in EXAMPLES if doc["kind"] == "SentimentModel"}
    for _, doc in EXAMPLES:
        if doc["kind"] == "SentimentRollout":
            assert {doc["spec"]["stableModel"], doc["spec"]["candidateModel"]} <= models


SHA = "ab" * 32
# (example, changes, the field the rejection must name, a fragment of its message)
INVALID = [
    # SentimentModel
    ("sentimentmodel-minimal", {"spec.artifact.sha256": "abc123"}, "spec.artifact.sha256", ""),
    (
        "sentimentmodel-minimal",
        {"spec.artifact.sha256": SHA.upper()},
        "spec.artifact.sha256",
        "does not match",
    ),
    (
        "sentimentmodel-minimal",
        {"spec.artifact.uri": "ftp://host/model"},
        "spec.artifact.uri",
        "must be pvc://",
    ),
    (
        "sentimentmodel-minimal",
        {"spec.artifact.uri": "file://relative/path"},
        "spec.artifact.uri",
        "must be pvc://",
    ),
    ("sentimentmodel-minimal", {"spec.artifact": DELETE}, "spec.artifact", "required"),
    ("sentimentmodel-minimal", {"spec.replicas": -1}, "spec.replicas", "minimum"),
    ("sentimentmodel-minimal", {"spec.replicas": "2"}, "spec.replicas", "not of type"),
    ("sentimentmodel-minimal", {"spec.autoscaling": {"max": 3}}, "spec", "mutually exclusive"),
    ("sentimentmodel-minimal", {"spec.replicas": DELETE}, "spec", "set exactly one of spec.replicas"),
    (
        "sentimentmodel-full",
        {"spec.autoscaling.min": 7},
        "spec.autoscaling.min",
        "autoscaling.min must not exceed autoscaling.max",
    ),
    ("sentimentmodel-minimal", {"spec.replica": 2}, "spec.replica", "Additional properties"),
    ("sentimentmodel-minimal", {"spec.version": "1.0 beta"}, "spec.version", "does not match"),
    ("sentimentmodel-minimal", {"spec.inference": {"maxTokens": 0}}, "spec.inference.maxTokens", "minimum"),
    ("sentimentmodel-full", {"spec.calibration.path": "/models/cal.json"}, "spec.calibration", "exactly one"),
    ("sentimentmodel-full", {"spec.drift.window": "1 day"}, "spec.drift.window", "does not match"),
    # the drift job refuses a zero threshold (every window would breach): so does the schema
    ("sentimentmodel-full", {"spec.drift.threshold": 0}, "spec.drift.threshold", "minimum"),
    ("sentimentmodel-full", {"spec.drift.schedule": "hourly"}, "spec.drift.schedule", "does not match"),
    (
        "sentimentmodel-full",
        {"spec.drift.consecutiveBreaches": 0},
        "spec.drift.consecutiveBreaches",
        "minimum",
    ),
    (
        "sentimentmodel-full",
        {"spec.evaluation.dataset.sha256": DELETE},
        "spec.evaluation.dataset.sha256",
        "required",
    ),
    ("sentimentmodel-full", {"spec.resources.requests.cpu": "lots"}, "spec.resources.requests.cpu", ""),
    (
        "sentimentmodel-minimal",
        {"metadata.name": "Sentiment_V1"},
        "metadata.name",
        "metadata.name must be a DNS-1035 label",
    ),
    ("sentimentmodel-minimal", {"metadata.name": "s" * 41}, "metadata.name", "at most 40 characters"),
    ("sentimentmodel-minimal", {"status": {"phase": "Running"}}, "status.phase", "is not one of"),
    # A bare claim or bucket names no file to fetch (DESIGN.md: pvc://claim/path, s3://bucket/key).
    (
        "sentimentmodel-minimal",
        {"spec.artifact.uri": "s3://ml-models"},
        "spec.artifact.uri",
        "must be pvc://",
    ),
    (
        "sentimentmodel-minimal",
        {"spec.artifact.uri": "pvc://sentiment-models"},
        "spec.artifact.uri",
        "must be pvc://",
    ),
    (
        "sentimentmodel-minimal",
        {"spec.artifact.uri": "pvc://sentiment-models/"},
        "spec.artifact.uri",
        "must be pvc://",
    ),
    (
        "sentimentmodel-full",
        {"spec.evaluation.dataset.uri": "s3://datasets"},
        "spec.evaluation.dataset.uri",
        "must be pvc://",
    ),
    # Durations the drift job and Prometheus refuse (an empty window) or cannot use (under a second).
    (
        "sentimentmodel-full",
        {"spec.drift.window": "0s"},
        "spec.drift.window",
        "drift.window must be at least 1s",
    ),
    ("sentimentmodel-full", {"spec.drift.window": "100ns"}, "spec.drift.window", "at least 1s"),
    ("sentimentmodel-full", {"spec.drift.window": "999ms"}, "spec.drift.window", "at least 1s"),
    # What the API server would refuse in the operator's Deployment, refused at apply instead.
    (
        "sentimentmodel-full",
        {"spec.resources.requests.cpu": "-1"},
        "spec.resources.requests",
        "resources.requests values must not be negative",
    ),
    (
        "sentimentmodel-full",
        {"spec.resources.limits.memory": "-2Gi"},
        "spec.resources.limits",
        "resources.limits values must not be negative",
    ),
    (
        "sentimentmodel-full",
        {"spec.resources.limits.cpus": "2"},
        "spec.resources.limits",
        "resources.limits keys must be cpu, memory",
    ),
    ("sentimentmodel-full", {"spec.resources.requests.gpu": 1}, "spec.resources.requests", "keys must be"),
    (
        "sentimentmodel-full",
        {"spec.resources.requests.memory": "4Gi"},
        "spec.resources.requests",
        "must be at most the same resource's value in resources.limits",
    ),
    # 2500m against "2": the comparison is of quantities, not of their spellings
    ("sentimentmodel-full", {"spec.resources.requests.cpu": "2500m"}, "spec.resources.requests", "at most"),
    (
        "sentimentmodel-full",
        # (whole maps: mutate() reads a dot as a path separator)
        {"spec.resources.requests": {"cpu": "500m", "nvidia.com/gpu": 1}},
        "spec.resources.requests",
        "cannot be overcommitted",
    ),
    # a fraction of a GPU: the Deployment built from it would be refused ("must be an integer")
    (
        "sentimentmodel-full",
        {
            "spec.resources.requests": {"cpu": "500m", "nvidia.com/gpu": "500m"},
            "spec.resources.limits": {"cpu": "2", "nvidia.com/gpu": "500m"},
        },
        "spec.resources.requests",
        "extended resource (DOMAIN/NAME, e.g. nvidia.com/gpu) must be written as a whole number",
    ),
    (
        "sentimentmodel-full",
        {"spec.resources": {"limits": {"cpu": "2", "example.com/fpga": "1.5"}}},
        "spec.resources.limits",
        "extended resource (DOMAIN/NAME, e.g. nvidia.com/gpu) must be written as a whole number",
    ),
    # as the API server's isInteger() reads it: the quantity as written, so 2000m is not 2
    (
        "sentimentmodel-full",
        {
            "spec.resources": {
                "requests": {"cpu": "1", "nvidia.com/gpu": "2000m"},
                "limits": {"nvidia.com/gpu": "2"},
            }
        },
        "spec.resources.requests",
        "extended resource (DOMAIN/NAME, e.g. nvidia.com/gpu) must be written as a whole number",
    ),
    (
        "sentimentmodel-minimal",
        {"spec.replicas": DELETE, "spec.autoscaling": {"max": 4}},
        "spec.autoscaling",
        "spec.autoscaling needs a CPU request above 0",
    ),
    (
        "sentimentmodel-full",
        {"spec.resources.requests": {"memory": "1Gi"}, "spec.resources.limits": {"memory": "2Gi"}},
        "spec.autoscaling",
        "needs a CPU request",
    ),
    ("sentimentmodel-full", {"spec.resources.requests.cpu": "0"}, "spec.autoscaling", "needs a CPU request"),
    # SentimentRollout
    (
        "sentimentrollout-minimal",
        {"spec.candidateModel": "sentiment-v1"},
        "spec.candidateModel",
        "must name a different SentimentModel",
    ),
    ("sentimentrollout-minimal", {"spec.stableModel": DELETE}, "spec.stableModel", "required"),
    ("sentimentrollout-minimal", {"spec.service": "Sentiment_Svc"}, "spec.service", "does not match"),
    ("sentimentrollout-minimal", {"spec.steps": []}, "spec.steps", "non-empty"),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"setWeight": 10, "pause": {}}]},
        "spec.steps[0]",
        "exactly one of evaluate",
    ),
    ("sentimentrollout-minimal", {"spec.steps": [{}]}, "spec.steps[0]", "exactly one of evaluate"),
    ("sentimentrollout-minimal", {"spec.steps": [{"setWeight": 150}]}, "spec.steps[0].setWeight", "maximum"),
    ("sentimentrollout-minimal", {"spec.steps": [{"watch": {}}]}, "spec.steps[0].watch.duration", "required"),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"watch": {"duration": "24 hours"}}]},
        "spec.steps[0].watch.duration",
        "does not match",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"rollback": {}}]},
        "spec.steps[0].rollback",
        "Additional properties",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"noData": "Maybe"}},
        "spec.analysis.noData",
        "is not one of",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"treshold": {}}},
        "spec.analysis.treshold",
        "Additional properties",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"thresholds": {"f1DropAbs": 2}}},
        "spec.analysis.thresholds.f1DropAbs",
        "maximum",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"interval": "soon"}},
        "spec.analysis.interval",
        "does not match",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"interval": "0s"}},
        "spec.analysis.interval",
        "analysis.interval must be at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"window": "0s"}},
        "spec.analysis.window",
        "analysis.window must be at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.analysis": {"window": "100ns"}},
        "spec.analysis.window",
        "at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"analysis": {"window": "500ms"}}]},
        "spec.steps[0].analysis.window",
        "steps[].analysis.window must be at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"watch": {"duration": "0s"}}]},
        "spec.steps[0].watch.duration",
        "watch.duration must be at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"pause": {"duration": "0s"}}]},
        "spec.steps[0].pause.duration",
        "pause.duration must be at least 1s",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.shadow": {"enabled": True, "percent": 101}},
        "spec.shadow.percent",
        "maximum",
    ),
    ("sentimentrollout-minimal", {"spec.shadow": {"enabled": True, "percent": 0}}, "spec.shadow", "above 0"),
    (
        "sentimentrollout-minimal",
        {"spec.trafficRouting": {"replicas": {}, "gatewayAPI": {"httpRoute": "r"}}},
        "spec.trafficRouting",
        "exactly one",
    ),
    (
        "sentimentrollout-gateway",
        {"spec.abRouting.header": DELETE},
        "spec.abRouting",
        "needs a header or a cookie",
    ),
    (
        "sentimentrollout-gateway",
        {"spec.trafficRouting": {"replicas": {}}},
        "spec.abRouting.enabled",
        "needs trafficRouting.gatewayAPI",
    ),
    # Mirroring is an HTTPRoute filter: with replica-count routing nothing could copy a request.
    (
        "sentimentrollout-minimal",
        {"spec.shadow": {"enabled": True, "percent": 10}},
        "spec.shadow.enabled",
        "shadow needs trafficRouting.gatewayAPI",
    ),
    (
        "sentimentrollout-gateway",
        {"spec.trafficRouting": {"replicas": {}}, "spec.abRouting": DELETE},
        "spec.shadow.enabled",
        "shadow needs trafficRouting.gatewayAPI",
    ),
    (
        "sentimentrollout-gateway",
        {"spec.promotion.reprocess.sink": DELETE},
        "spec.promotion.reprocess",
        "needs both source and sink",
    ),
    (
        "sentimentrollout-minimal",
        {"spec.trafficRouting": {"replicas": {"weights": [1]}}},
        "spec.trafficRouting.replicas.weights",
        "Additional properties",
    ),
    ("sentimentrollout-minimal", {"status": {"canaryWeight": 101}}, "status.canaryWeight", "maximum"),
    (
        "sentimentrollout-minimal",
        {"status": {"analysis": {"metrics": [{"name": "f1", "verdict": "Maybe"}]}}},
        "status.analysis.metrics[0].verdict",
        "is not one of",
    ),
]


@pytest.mark.parametrize(
    ("name", "changes", "field", "fragment"), INVALID, ids=[f"{i[0]}:{i[2]}:{i[3] or 'x'}" for i in INVALID]
)
def test_invalid_instance_is_rejected_naming_the_field(
    name: str, changes: dict[str, Any], field: str, fragment: str
) -> None:
    doc = mutate(example(name), changes)
    found = violations(doc, doc["kind"])
    assert found, f"{changes} was accepted"
    assert field in {v.path for v in found}, [str(v) for v in found]
    assert any(fragment in v.message for v in found if v.path == field), [str(v) for v in found]


def test_every_cel_rule_is_broken_by_an_invalid_case_with_its_own_message() -> None:
    """Each rule is evaluated offline and can fail: a rule cel-python could not evaluate (a missing
    Kubernetes library function) would show up as an evaluation error here, never as a silent pass."""
    rules = {
        (kind, ".".join(path), rule["rule"])
        for kind in CRD_FILES
        for path, node in schema_nodes(openapi_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    }
    broken = set()
    for name, changes, _, _ in INVALID:
        doc = mutate(example(name), changes)
        broken |= {(doc["kind"], *v.rule) for v in violations(doc, doc["kind"]) if v.rule is not None}
    assert sorted(rules - broken) == []


# Values at the edge of a rule that must still be accepted.
VALID_EDGES = [
    ("sentimentmodel-full", {"spec.drift.window": "1s"}),
    ("sentimentmodel-full", {"spec.drift.window": "1.5h"}),
    ("sentimentmodel-minimal", {"spec.artifact.uri": "s3://ml-models/m.tar"}),
    ("sentimentmodel-minimal", {"spec.artifact.uri": "pvc://sentiment-models/minilm"}),
    # a request equal to its limit, and a request spelled differently from a larger limit
    ("sentimentmodel-full", {"spec.resources.requests": {"cpu": "1500m", "memory": "2Gi"}}),
    ("sentimentmodel-full", {"spec.resources.requests": {"cpu": 2, "memory": "2048Mi"}}),
    # a CPU limit alone: Kubernetes defaults the request to it, so the autoscaler has one
    ("sentimentmodel-full", {"spec.resources": {"limits": {"cpu": "2"}}}),
    (
        "sentimentmodel-full",
        {
            "spec.resources": {
                "requests": {"cpu": "500m", "nvidia.com/gpu": 1, "hugepages-2Mi": "64Mi"},
                "limits": {"nvidia.com/gpu": "1", "hugepages-2Mi": "64Mi", "ephemeral-storage": "1Gi"},
            }
        },
    ),
    # other spellings of a whole number: a decimal and a binary suffix
    (
        "sentimentmodel-full",
        {
            "spec.resources": {
                "requests": {"cpu": "1", "example.com/a": "1k", "example.com/b": "1Ki"},
                "limits": {"example.com/a": "1k", "example.com/b": "1Ki"},
            }
        },
    ),
    ("sentimentmodel-minimal", {"spec.resources": {"requests": {"cpu": "0", "memory": "0"}}}),
    ("sentimentrollout-minimal", {"spec.analysis": {"interval": "1s", "window": "1.5s"}}),
    # errorRateFor 0s is a choice, not a mistake: breach at the first analysis above errorRate
    ("sentimentrollout-minimal", {"spec.analysis": {"thresholds": {"errorRateFor": "0s"}}}),
    (
        "sentimentrollout-minimal",
        {"spec.steps": [{"pause": {"duration": "1s"}}, {"watch": {"duration": "1m"}}]},
    ),
    ("sentimentrollout-minimal", {"spec.shadow": {"enabled": False}}),
]


@pytest.mark.parametrize(("name", "changes"), VALID_EDGES, ids=[f"{n}:{c}" for n, c in VALID_EDGES])
def test_instance_at_the_edge_of_a_rule_is_accepted(name: str, changes: dict[str, Any]) -> None:
    doc = mutate(example(name), changes)
    assert [str(v) for v in violations(doc, doc["kind"])] == []
