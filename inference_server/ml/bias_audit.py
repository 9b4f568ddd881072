"""`sentiment-ml bias-audit`: does the model's sentiment change with the identity of the person?

The curated dataset (data/bias_audit_templates.json) crosses neutral, positive and negative template
sentences with identity terms for gender, race/ethnicity, religion, age, nationality and disability,
in the spirit of the Equity Evaluation Corpus: sibling sentences differ only in the identity term.

For every attribute and group the audit reports the positive rate (share predicted `positive`), the
mean probability of `positive` and the mean top-label confidence, over all templates and per template
polarity. The gap of an attribute is the largest max-minus-min across its groups of the positive rate
or the mean positive probability, over all slices; the audit passes when no attribute's gap exceeds the
threshold. An identity term the model's tokenizer maps (even partly) to its unknown token is invisible
to the model, so sibling sentences look alike and the gap reads 0: such a group is "not auditable" and
fails its attribute. The result is JSON (for the registry) and markdown (for people); exit code 0 = pass,
1 = fail, 2 = nothing decided (bad input, or a model whose outputs are not finite).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference_server.contract import Env
from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    MLInputError,
    add_model_arguments,
    cli_error,
    load_model_of,
    write_json_atomic,
)

DATASET_PATH: Final = Path(__file__).with_name("data") / "bias_audit_templates.json"
DEFAULT_THRESHOLD: Final = 0.10
POSITIVE_LABEL: Final = "positive"
POLARITIES: Final = ("neutral", "positive", "negative")
SLICES: Final = ("all", *POLARITIES)
GAP_METRICS: Final = ("positive_rate", "mean_positive_probability")


class BiasAuditError(MLInputError):
    """The audit dataset is malformed or the model cannot be audited (e.g. no `positive` label)."""


@dataclass(frozen=True)
class AuditRow:
    id: str
    text: str
    attribute: str
    group: str
    term: str
    template: str
    polarity: str


# --- the dataset (pure) ---------------------------------------------------------------------------
def _fill(template: str, slot: str, term: str) -> str:
    text = template.replace(slot, term)
    return text[:1].upper() + text[1:]


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, str) and x for x in value)


def _templates(spec: Mapping[str, Any], slot: str) -> Mapping[str, list[str]]:
    templates = spec["templates"]
    if not isinstance(templates, Mapping) or set(templates) != set(POLARITIES):
        raise BiasAuditError(
            f"templates must be an object with keys {list(POLARITIES)}, got {templates!r:.80}"
        )
    for polarity in POLARITIES:
        if not _is_text_list(templates[polarity]):
            raise BiasAuditError(f"templates/{polarity} must be a non-empty list of sentences")
        for template in templates[polarity]:
            if slot not in template:
                raise BiasAuditError(f"templates/{polarity}: template {template!r} has no {slot} slot")
    return templates


def _attributes(spec: Mapping[str, Any]) -> Mapping[str, Mapping[str, list[str]]]:
    # Every later step (per-group statistics, the largest gap) needs at least one attribute with two
    # comparable groups; an empty or mis-shaped spec would otherwise fail there with max() of nothing.
    attributes = spec["attributes"]
    if not isinstance(attributes, Mapping) or not attributes:
        raise BiasAuditError("attributes must be a non-empty object of attribute -> {group: [terms]}")
    for attribute, groups in attributes.items():
        where = f"attributes/{attribute}"
        if not isinstance(groups, Mapping):
            raise BiasAuditError(
                f"{where} must be an object of group -> [terms], got {type(groups).__name__}"
            )
        if len(groups) < 2:
            raise BiasAuditError(f"{where} needs at least two groups to compare")
        bad = [g for g, terms in groups.items() if not _is_text_list(terms)]
        if bad:
            raise BiasAuditError(f"{where}/{bad[0]} must be a non-empty list of identity terms")
        if len({len(terms) for terms in groups.values()}) != 1:
            raise BiasAuditError(f"{where}: every group needs the same, non-zero number of terms")
    return attributes


def expand(spec: Mapping[str, Any]) -> list[AuditRow]:
    """Every template × identity term, in a stable order with content-derived IDs."""
    if not isinstance(spec, Mapping):
        raise BiasAuditError(f"the dataset must be a JSON object, got {type(spec).__name__}")
    try:
        slot = spec["slot"]
        if not isinstance(slot, str) or not slot:
            raise BiasAuditError(f"slot must be a non-empty string, got {slot!r}")
        templates, attributes = _templates(spec, slot), _attributes(spec)
    except KeyError as exc:
        raise BiasAuditError(f"the dataset lacks {exc}: needs slot, templates, attributes") from None
    rows: list[AuditRow] = []
    for attribute, groups in attributes.items():
        for group, terms in groups.items():
            for term in terms:
                for polarity in POLARITIES:
                    for template in templates[polarity]:
                        text = _fill(template, slot, term)
                        rid = hashlib.sha256(f"{attribute}|{group}|{text}".encode()).hexdigest()[:16]
                        rows.append(AuditRow(rid, text, attribute, group, term, template, polarity))
    return rows


def load_dataset(path: Path = DATASET_PATH) -> tuple[list[AuditRow], str]:
    """The expanded rows and the sha256 of the dataset file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BiasAuditError(f"cannot read the bias-audit dataset {path}: {exc}") from exc
    try:
        spec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BiasAuditError(f"bias-audit dataset {path} is not valid JSON: {exc}") from exc
    try:
        rows = expand(spec)
    except BiasAuditError as exc:
        raise BiasAuditError(f"bias-audit dataset {path}: {exc}") from None
    return rows, hashlib.sha256(raw).hexdigest()


# --- the evaluation (pure) ------------------------------------------------------------------------
def group_stats(
    p_positive: npt.NDArray[np.float64],
    predicted_positive: npt.NDArray[np.bool_],
    confidence: npt.NDArray[np.float64],
) -> dict[str, float]:
    return {
        "n": int(p_positive.size),
        "positive_rate": float(predicted_positive.mean()),
        "mean_positive_probability": float(p_positive.mean()),
        "mean_confidence": float(confidence.mean()),
    }


def _gap_order(gap: Mapping[str, Any]) -> float:
    # A NaN gap must rank as the largest (and fail), not lose every comparison and vanish.
    value = float(gap["gap"])
    return math.inf if math.isnan(value) else value


def _not_auditable(
    rows: Sequence[AuditRow], attribute: str, unknown_terms: Collection[str]
) -> dict[str, list[str]]:
    """group -> its terms that hold the tokenizer's unknown token, for the groups that have any."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r.attribute == attribute and r.term in unknown_terms and r.term not in out.get(r.group, []):
            out.setdefault(r.group, []).append(r.term)
    return out


def _require_finite(p: npt.NDArray[np.float64]) -> None:
    bad = int((~np.isfinite(p)).any(axis=1).sum())
    if bad:
        raise BiasAuditError(
            f"the model gave NaN/inf probabilities for {bad} of {len(p)} sentences; its weights are "
            "broken (a diverged training run?), so nothing can be audited"
        )


def evaluate(
    rows: Sequence[AuditRow],
    probs: npt.ArrayLike,
    labels: Sequence[str],
    *,
    threshold: float,
    unknown_terms: Collection[str] = frozenset(),
) -> dict[str, Any]:
    """Per-group statistics, gaps per attribute and the verdict, from class probabilities per row.
    ``unknown_terms``: identity terms the model's tokenizer cannot see (see `unknown_token_terms`)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(rows), len(labels)):
        raise ValueError(
            f"probabilities of shape {p.shape} do not match {len(rows)} rows x {len(labels)} labels"
        )
    _require_finite(p)
    if POSITIVE_LABEL not in labels:
        raise BiasAuditError(f"the model has no {POSITIVE_LABEL!r} label (labels: {list(labels)})")
    pos = labels.index(POSITIVE_LABEL)
    p_pos = p[:, pos]
    is_pos = p.argmax(axis=1) == pos
    conf = p.max(axis=1)
    attr = np.array([r.attribute for r in rows])
    group = np.array([r.group for r in rows])
    polarity = np.array([r.polarity for r in rows])

    attributes: dict[str, Any] = {}
    for a in dict.fromkeys(r.attribute for r in rows):
        groups = list(dict.fromkeys(r.group for r in rows if r.attribute == a))
        per_slice: dict[str, dict[str, dict[str, float]]] = {}
        gaps: list[dict[str, Any]] = []
        for sl in SLICES:
            in_slice = (attr == a) & ((polarity == sl) if sl != "all" else True)
            stats = {
                g: group_stats(
                    p_pos[in_slice & (group == g)],
                    is_pos[in_slice & (group == g)],
                    conf[in_slice & (group == g)],
                )
                for g in groups
            }
            per_slice[sl] = stats
            for metric in GAP_METRICS:
                ordered = sorted(groups, key=lambda g: stats[g][metric])
                lo, hi = ordered[0], ordered[-1]
                gaps.append(
                    {
                        "slice": sl,
                        "metric": metric,
                        "gap": stats[hi][metric] - stats[lo][metric],
                        "highest": hi,
                        "lowest": lo,
                    }
                )
        largest = max(gaps, key=_gap_order)
        invisible = _not_auditable(rows, a, unknown_terms)
        attributes[a] = {
            "groups": groups,
            "stats": per_slice,
            "gaps": gaps,
            "largest_gap": largest,
            "not_auditable": invisible,
            # `<=` is False for NaN; an invisible term fakes a gap of 0, so it cannot pass either.
            "passed": bool(largest["gap"] <= threshold) and not invisible,
        }
    failed = [a for a, v in attributes.items() if not v["passed"]]
    overall = max((v["largest_gap"] for v in attributes.values()), key=_gap_order)
    return {
        "threshold": threshold,
        "rows": len(rows),
        "passed": not failed,
        "attributes_failed": failed,
        "attributes_not_auditable": [a for a, v in attributes.items() if v["not_auditable"]],
        "largest_gap": overall["gap"],
        "largest_gap_detail": {
            "attribute": next(a for a, v in attributes.items() if v["largest_gap"] is overall),
            **overall,
        },
        "overall_positive_rate_by_polarity": {
            sl: float(is_pos[polarity == sl].mean()) for sl in POLARITIES if (polarity == sl).any()
        },
        "attributes": attributes,
    }


def _verdict_cell(attribute: Mapping[str, Any]) -> str:
    invisible = attribute.get("not_auditable") or {}
    if invisible:
        return f"FAIL (not auditable: {', '.join(invisible)})"
    return "pass" if attribute["passed"] else "FAIL"


def not_auditable_summary(result: Mapping[str, Any], limit: int | None = 3) -> str:
    """One phrase naming the groups with invisible terms (the first ``limit``, None = all, with a
    term each), or '' when there are none."""
    pairs = [
        f"{a}/{g} ({terms[0]!r})"
        for a, v in result["attributes"].items()
        for g, terms in (v.get("not_auditable") or {}).items()
    ]
    if not pairs:
        return ""
    shown = pairs if limit is None else pairs[:limit]
    more = f" and {len(pairs) - len(shown)} more" if len(pairs) > len(shown) else ""
    return f"not auditable, terms the tokenizer maps to its unknown token: {', '.join(shown)}{more}"


def render_markdown(result: Mapping[str, Any]) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    model, dataset = result.get("model", {}), result.get("dataset", {})
    lines = [
        f"# Bias audit: {verdict}",
        "",
        f"Model `{model.get('version', '?')}`, dataset `{Path(str(dataset.get('path', '?'))).name}` "
        f"(sha256 `{str(dataset.get('sha256', '?'))[:12]}…`, {result['rows']} sentences), "
        f"threshold {result['threshold']:.2f} on the largest gap of positive rate or mean P(positive).",
        "",
        "Positive rate by template polarity (all groups): "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["overall_positive_rate_by_polarity"].items()),
        "",
    ]
    invisible = not_auditable_summary(result, limit=None)
    if invisible:
        lines += [f"**{invisible[:1].upper()}{invisible[1:]}.**", ""]
    lines += [
        "| attribute | largest gap | metric | slice | highest group | lowest group | verdict |",
        "|---|---:|---|---|---|---|---|",
    ]
    for a, v in result["attributes"].items():
        g = v["largest_gap"]
        lines.append(
            f"| {a} | {g['gap']:.3f} | {g['metric']} | {g['slice']} | {g['highest']} | {g['lowest']} | "
            f"{_verdict_cell(v)} |"
        )
    for a, v in result["attributes"].items():
        lines += [
            "",
            f"## {a}",
            "",
            "| group | n | positive rate | mean P(positive) | mean confidence | positive rate, neutral |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for grp in v["groups"]:
            s, n = v["stats"]["all"][grp], v["stats"]["neutral"][grp]
            lines.append(
                f"| {grp} | {s['n']} | {s['positive_rate']:.3f} | {s['mean_positive_probability']:.3f} | "
                f"{s['mean_confidence']:.3f} | {n['positive_rate']:.3f} |"
            )
    return "\n".join(lines) + "\n"


# --- the shell --------------------------------------------------------------------------------------
def score(
    model: Any, texts: Sequence[str], calibration: Any, batch_size: int = 64
) -> npt.NDArray[np.float64]:
    from tqdm import tqdm

    from inference_server.runtime.calibration import probabilities
    from inference_server.runtime.model import predict_logits

    parts = [
        predict_logits(model, texts[i : i + batch_size], batch_size=batch_size)
        for i in tqdm(range(0, len(texts), batch_size), desc="bias audit", unit="batch", file=sys.stderr)
    ]
    logits = np.concatenate(parts) if parts else np.zeros((0, len(model.labels)), dtype=np.float32)
    return probabilities(logits, calibration)


def unknown_token_terms(tokenizer: Any, terms: Collection[str]) -> set[str]:
    """The terms that tokenize to (or through) the tokenizer's unknown token, as written and with the
    capital a sentence-initial term gets. A byte-level tokenizer has no unknown token: nothing is."""
    unk = getattr(tokenizer, "unk_token", None)
    if not unk:
        return set()
    return {
        term
        for term in terms
        if any(unk in tokenizer.tokenize(form) for form in (term, term[:1].upper() + term[1:]))
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--dataset", type=Path, default=DATASET_PATH, help="templates × terms JSON")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"largest allowed gap between groups (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--output", type=Path, help="write the result JSON here (default: stdout)")
    parser.add_argument("--markdown", type=Path, help="also write a markdown report here")


def run(args: argparse.Namespace) -> int:
    from inference_server.runtime.calibration import CalibrationError, CalibrationParams
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    if not 0 <= args.threshold <= 1:
        return cli_error("bias-audit", f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.model is None:
        return cli_error("bias-audit", f"give --model or set {Env.MODEL_PATH}")
    try:
        rows, dataset_sha = load_dataset(args.dataset)
        model = load_model_of(args)
        calibration = CalibrationParams.load(args.calibration) if args.calibration else None
        probs = score(model, [r.text for r in rows], calibration)
        unknown = unknown_token_terms(model.tokenizer, {r.term for r in rows})
        result = evaluate(rows, probs, model.labels, threshold=args.threshold, unknown_terms=unknown)
    except (MLInputError, ModelLoadError, ArtifactError, CalibrationError) as exc:
        return cli_error("bias-audit", str(exc), EXIT_BAD_INPUT)
    result = {
        "kind": "bias_audit",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "model": {
            "version": model.version,
            "path": str(args.model),
            "calibrated": calibration is not None,
        },
        "dataset": {"path": str(args.dataset), "sha256": dataset_sha},
        "dataset_sha256": dataset_sha,
        **result,
    }
    if args.output:
        write_json_atomic(args.output, result)
    else:
        # allow_nan=False as write_json_atomic: the registry and other tools parse this.
        print(json.dumps(result, indent=2, sort_keys=True, allow_nan=False))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(result), encoding="utf-8")
    d = result["largest_gap_detail"]
    invisible = not_auditable_summary(result)
    print(
        f"bias-audit: {'PASS' if result['passed'] else 'FAIL'}: {invisible + '; ' if invisible else ''}"
        f"largest gap {d['gap']:.3f} "
        f"({d['attribute']}, {d['metric']}, {d['slice']} templates: {d['highest']} vs {d['lowest']}) "
        f"vs threshold {args.threshold}",
        file=sys.stderr,
    )
    return EXIT_OK if result["passed"] else EXIT_GATE_FAILED
