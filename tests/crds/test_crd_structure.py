"""The two CRDs are valid, structural, cheap to validate, and carry DESIGN.md's contract."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import celpy
import kubernetes_validate
import pytest
from crd_schema import (
    CRD_FILES,
    Quantity,
    apply_defaults,
    cel_violations,
    compile_cel,
    load_crd,
    openapi_schema,
    parse_quantity,
    schema_nodes,
    schema_violations,
    structural_problems,
    to_jsonschema,
    unbounded_under_rules,
)

from inference_server.contract import DRIFT_THRESHOLD_DEFAULT
from inference_server.settings import ServerSettings

KINDS = sorted(CRD_FILES)
# The Kubernetes release the local control plane builds (e2e/controlplane); kubernetes-validate
# ships its schemas.
K8S_VERSION = "1.37.0"


@pytest.mark.parametrize("kind", KINDS)
def test_crd_passes_kubernetes_validate_strict(kind: str) -> None:
    kubernetes_validate.validate(load_crd(kind), K8S_VERSION, strict=True)


def test_kubernetes_validate_strict_rejects_an_unknown_schema_key() -> None:
    crd = copy.deepcopy(load_crd("SentimentModel"))
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["maxLenght"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="maxLenght"):
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind", KINDS)
def test_crd_identity(kind: str) -> None:
    crd = load_crd(kind)
    spec = crd["spec"]
    plural = spec["names"]["plural"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.sentimentops.io"
    assert CRD_FILES[kind].name == f"sentimentops.io_{plural}.yaml"
    assert spec["group"] == "sentimentops.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["shortNames"] == {"SentimentModel": ["sm"], "SentimentRollout": ["srollout"]}[kind]
    assert "sentiment" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    assert structural_problems(openapi_schema(kind)) == []


def test_structural_check_catches_what_the_api_server_refuses() -> None:
    broken = copy.deepcopy(openapi_schema("SentimentModel"))
    spec = broken["properties"]["spec"]
    del spec["properties"]["version"]["type"]
    spec["properties"]["image"]["anyOf"] = [{"type": "string", "default": "x"}]
    spec["properties"]["resources"]["additionalProperties"] = {"type": "string"}
    spec["properties"]["replicas"]["$ref"] = "#/definitions/x"
    problems = structural_problems(broken)
    assert any(p.startswith("spec.version: has no type") for p in problems)
    assert any("spec.image: anyOf may not set 'default'" in p for p in problems)
    assert any("spec.resources: properties and additionalProperties" in p for p in problems)
    assert any("spec.replicas: '$ref' is not allowed" in p for p in problems)


@pytest.mark.parametrize("kind", KINDS)
def test_strings_and_lists_seen_by_cel_rules_are_bounded(kind: str) -> None:
    assert unbounded_under_rules(openapi_schema(kind)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_compiles_and_has_a_message(kind: str) -> None:
    rules = [
        rule
        for _, node in schema_nodes(openapi_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules, "each CRD carries CEL rules"
    for rule in rules:
        compile_cel(rule["rule"])
        assert rule.get("message") or rule.get("messageExpression"), rule["rule"]
        if "messageExpression" in rule:
            compile_cel(rule["messageExpression"])


def _defaults(kind: str) -> list[tuple[tuple[str, ...], dict[str, Any], Any]]:
    return [
        (path, node, node["default"])
        for path, node in schema_nodes(openapi_schema(kind))
        if "default" in node
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_default_is_valid_where_it_lands(kind: str) -> None:
    import jsonschema

    for path, node, default in _defaults(kind):
        filled = apply_defaults(default, node)
        errors = list(jsonschema.Draft4Validator(to_jsonschema(node)).iter_errors(filled))
        assert errors == [], f"default of {'.'.join(path)}: {errors[0].message if errors else ''}"
        assert cel_violations(filled, node) == [], f"default of {'.'.join(path)} breaks a CEL rule"


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    (version,) = load_crd(kind)["spec"]["versions"]
    known = {"." + ".".join(path) for path, _ in schema_nodes(openapi_schema(kind))}
    known.add(".metadata.creationTimestamp")
    columns = version["additionalPrinterColumns"]
    assert {c["name"] for c in columns} >= {"Phase", "Age"}
    for column in columns:
        assert column["jsonPath"] in known, column


# DESIGN.md, "Custom resources": every field it names, at the path it names.
MODEL_SPEC_FIELDS = [
    "version", "artifact.uri", "artifact.sha256", "image", "replicas", "autoscaling.min",
    "autoscaling.max", "autoscaling.target", "resources.limits", "resources.requests",
    "inference.maxTokens", "inference.enableBatch", "inference.maxBatchSize", "inference.batchWaitMs",
    "inference.rateLimit.inferPerSecond", "inference.rateLimit.batchPerSecond",
    "calibration.configMapRef.name", "calibration.configMapRef.key", "calibration.path",
    "features.quantized", "features.explainability", "drift.schedule", "drift.threshold",
    "drift.consecutiveBreaches", "drift.window", "drift.notify", "evaluation.dataset.name",
    "evaluation.dataset.uri", "evaluation.dataset.sha256",
]  # fmt: skip
MODEL_STATUS_FIELDS = [
    "phase", "conditions", "observedGeneration", "endpoint", "evaluation.f1", "evaluation.accuracy",
    "evaluation.ece", "evaluation.datasetSha256", "latencyBaseline.p50", "latencyBaseline.p95",
    "drift.lastScore", "drift.consecutiveBreaches", "drift.lastRun", "drift.history",
]  # fmt: skip
ROLLOUT_SPEC_FIELDS = [
    "service", "stableModel", "candidateModel", "trafficRouting.gatewayAPI.httpRoute",
    "trafficRouting.replicas", "steps", "analysis.interval", "analysis.prometheus.url",
    "analysis.minSamples", "analysis.noData", "analysis.thresholds.latencyP95RegressionPct",
    "analysis.thresholds.f1DropAbs", "analysis.thresholds.errorRate", "analysis.thresholds.errorRateFor",
    "gates.preDeployEvaluation", "gates.warmup.requests", "abRouting.enabled", "abRouting.header",
    "abRouting.cookie", "abRouting.sticky", "shadow.enabled", "shadow.percent", "promotion.auto",
    "promotion.reprocess.enabled", "promotion.reprocess.source", "promotion.reprocess.sink",
    "paused", "abort", "advisory",
]  # fmt: skip
ROLLOUT_STATUS_FIELDS = [
    "phase", "conditions", "observedGeneration", "currentStep", "canaryWeight", "stepStartedAt",
    "analysis.lastRun", "analysis.metrics.[].stable", "analysis.metrics.[].canary",
    "analysis.metrics.[].threshold", "analysis.metrics.[].samples", "analysis.metrics.[].verdict",
    "breaches.[].metric", "breaches.[].since", "message", "history",
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "section", "fields"),
    [
        ("SentimentModel", "spec", MODEL_SPEC_FIELDS),
        ("SentimentModel", "status", MODEL_STATUS_FIELDS),
        ("SentimentRollout", "spec", ROLLOUT_SPEC_FIELDS),
        ("SentimentRollout", "status", ROLLOUT_STATUS_FIELDS),
    ],
)
def test_design_fields_are_in_the_schema(kind: str, section: str, fields: list[str]) -> None:
    known = {".".join(path) for path, _ in schema_nodes(openapi_schema(kind)["properties"][section])}
    assert [f for f in fields if f not in known] == []


def _node(kind: str, *path: str) -> dict[str, Any]:
    node = openapi_schema(kind)
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def test_phases_and_verdicts_are_designs() -> None:
    assert _node("SentimentModel", "status", "phase")["enum"] == [
        "Pending", "Verifying", "Deploying", "Ready", "Degraded", "Failed",
    ]  # fmt: skip
    assert _node("SentimentRollout", "status", "phase")["enum"] == [
        "Pending", "Evaluating", "WarmingUp", "Progressing", "Paused", "Promoting", "Watching",
        "Promoted", "RollingBack", "RolledBack", "Aborted", "Failed",
    ]  # fmt: skip
    verdict = _node("SentimentRollout", "status", "analysis", "metrics", "[]", "verdict")
    assert verdict["enum"] == ["Pass", "Fail", "NoData", "Inconclusive"]
    for kind in KINDS:
        conditions = _node(kind, "status", "conditions")
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["properties"]) >= {
            "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration",
        }  # fmt: skip


def test_rollout_defaults_are_designs_plan_and_thresholds() -> None:
    spec = apply_defaults(
        {"service": "s", "stableModel": "a", "candidateModel": "b"}, _node("SentimentRollout", "spec")
    )
    assert spec["steps"] == [
        {"evaluate": {}},
        {"warmup": {}},
        {"setWeight": 10},
        {"watch": {"duration": "24h"}},
        {"setWeight": 100},
        {"watch": {"duration": "1h"}},
    ]
    assert spec["analysis"]["noData"] == "Hold"
    assert spec["analysis"]["thresholds"] == {
        "latencyP95RegressionPct": 25,
        "f1DropAbs": 0.02,
        "errorRate": 0.02,
        "errorRateFor": "15m",
    }
    assert spec["trafficRouting"] == {"replicas": {}}
    assert (spec["paused"], spec["abort"], spec["advisory"]) == (False, False, False)


def test_model_defaults() -> None:
    drift = apply_defaults({"drift": {}}, _node("SentimentModel", "spec"))["drift"]
    assert drift["consecutiveBreaches"] == 3
    spec = apply_defaults({}, _node("SentimentModel", "spec"))
    assert spec["inference"]["maxTokens"] == 256
    assert spec["features"] == {"quantized": False, "explainability": False}
    assert "drift" not in spec  # drift watch only when asked for


def test_model_defaults_and_bounds_are_what_the_server_and_the_drift_job_take() -> None:
    """A default the server does not use, or a value the CRD accepts and the server refuses (a pod that
    will not start), is a mistake found at 3 a.m.: tie the CRD to the settings it becomes."""
    fields = ServerSettings.model_fields
    inference = _node("SentimentModel", "spec")["properties"]["inference"]["properties"]
    spec = apply_defaults({"drift": {}}, _node("SentimentModel", "spec"))
    for crd_field, setting in (
        ("maxTokens", "max_tokens"),
        ("maxBatchSize", "max_batch_size"),
        ("batchWaitMs", "batch_wait_ms"),
    ):
        assert spec["inference"][crd_field] == fields[setting].default, crd_field
        bounds = {type(m).__name__: m for m in fields[setting].metadata}
        if "Ge" in bounds:
            assert inference[crd_field]["minimum"] >= bounds["Ge"].ge, crd_field
        if "Le" in bounds:
            assert inference[crd_field]["maximum"] <= bounds["Le"].le, crd_field
    assert spec["drift"]["threshold"] == DRIFT_THRESHOLD_DEFAULT == fields["drift_threshold"].default
    drift = _node("SentimentModel", "spec")["properties"]["drift"]["properties"]["threshold"]
    bounds = {type(m).__name__: m for m in fields["drift_threshold"].metadata}
    assert drift["minimum"] == bounds["Gt"].gt and drift["exclusiveMinimum"] is True  # OpenAPI v3.0 form
    assert drift["maximum"] == bounds["Le"].le
    # Rate limits: the server takes any rate >= 0 (0 turns a limit off); the CRD took whole numbers >= 1,
    # so a limit could be neither turned off nor set to 0.5/s.
    limits = inference["rateLimit"]["properties"]
    for crd_field, setting in (
        ("inferPerSecond", "rate_limit_infer_per_second"),
        ("batchPerSecond", "rate_limit_batch_per_second"),
        ("explainPerSecond", "rate_limit_explain_per_second"),
    ):
        bounds = {type(m).__name__: m for m in fields[setting].metadata}
        assert limits[crd_field]["type"] == "number", crd_field
        assert limits[crd_field]["minimum"] == bounds["Ge"].ge == 0, crd_field


def test_status_schema_is_closed() -> None:
    """Status fields the operator writes must be declared: pruning would drop anything else silently."""
    for kind in KINDS:
        status = openapi_schema(kind)["properties"]["status"]
        assert [p for p, n in schema_nodes(status) if n.get("x-kubernetes-preserve-unknown-fields")] == []
        found = schema_violations(
            {"apiVersion": "x", "kind": kind, "spec": {}, "status": {"phasee": "Ready"}}, kind
        )
        assert "status.phasee" in {v.path for v in found}


# The offline stand-in for Kubernetes' quantity(): values as resource.ParseQuantity reads them.
# e2e/test_crd_validation.py checks the rules with the API server's own library.
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("2", Fraction(2)),
        ("+1", Fraction(1)),
        ("-1", Fraction(-1)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("1Gi", Fraction(2**30)),
        ("1G", Fraction(10**9)),
        ("1E", Fraction(10**18)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("2.5Mi", Fraction(5 * 2**19)),
        ("100n", Fraction(1, 10**7)),
    ],
)
def test_quantity_shim_reads_what_kubernetes_reads(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == Quantity(value)


@pytest.mark.parametrize("text", ["", "lots", "1 Gi", "1gi", "1e1.5", "1Kb", "--1", "."])
def test_quantity_shim_refuses_what_kubernetes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="quantities must match"):
        parse_quantity(text)
    assert not compile_cel("isQuantity(self)").evaluate({"self": celpy.json_to_cel(text)})
