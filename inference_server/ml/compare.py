"""`sentiment-ml compare`: the pre-deploy gate — a candidate's metrics.json against the baseline's.

The candidate fails when its macro-F1 is more than ``max_f1_drop`` (absolute, default 0.02 = 2
points) below the baseline's, or when the two were not measured on the same data (split sha256 and
labels must match: F1 on different data says nothing about a regression). Exit code 0 = pass,
1 = fail, 2 = unreadable input; the decision is printed (and optionally written) as JSON with
every check's values, threshold and reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from inference_server.ml.common import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    MLInputError,
    check_output_file,
    cli_error,
    is_unit_fraction,
    unit_fraction_arg,
    write_json_atomic,
)

DEFAULT_MAX_F1_DROP: Final = 0.02


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str
    candidate: Any = None
    baseline: Any = None
    threshold: Any = None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verdict": "pass" if self.passed else "fail",
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }


def metrics_problems(doc: Mapping[str, Any]) -> list[str]:
    """What keeps a metrics document from being gated, field by field (empty when it can be).

    macro_f1 must be a finite real in [0, 1]: a NaN never compares greater than the allowed drop, so
    a NaN candidate would pass, and "0.9", true or inf are not scores. dataset and labels, when
    present, must have the shapes the checks below read."""
    problems = []
    if "macro_f1" not in doc:
        problems.append("macro_f1 is missing")
    elif not is_unit_fraction(doc["macro_f1"]):
        problems.append(f"macro_f1 is {doc['macro_f1']!r}, not a finite number in [0, 1]")
    dataset = doc.get("dataset")
    if dataset is not None and not isinstance(dataset, Mapping):
        problems.append(f"dataset is {type(dataset).__name__}, not an object with name, split, sha256")
    labels = doc.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        problems.append(f"labels is {labels!r}, not a list of label names")
    return problems


def _require_gateable(doc: Mapping[str, Any], role: str) -> None:
    # The CLI checked its files when it read them; this guards the other caller, the registry, whose
    # stored metrics may predate that check.
    problems = metrics_problems(doc)
    if problems:
        raise MLInputError(f"{role} metrics: {'; '.join(problems)}")


def _dataset_check(candidate: dict[str, Any], baseline: dict[str, Any]) -> Check:
    c, b = candidate.get("dataset") or {}, baseline.get("dataset") or {}
    c_id = (c.get("name"), c.get("split"), c.get("sha256"))
    b_id = (b.get("name"), b.get("split"), b.get("sha256"))
    if not c.get("sha256") or not b.get("sha256"):
        return Check(
            "same_dataset",
            False,
            "a metrics file records no dataset sha256: cannot compare",
            c.get("sha256"),
            b.get("sha256"),
        )
    if c_id != b_id:
        return Check(
            "same_dataset",
            False,
            f"evaluated on different data: candidate {c_id[0]}/{c_id[1]} "
            f"sha256 {str(c_id[2])[:12]}…, baseline {b_id[0]}/{b_id[1]} sha256 {str(b_id[2])[:12]}…",
            c.get("sha256"),
            b.get("sha256"),
        )
    return Check(
        "same_dataset",
        True,
        f"both on {c_id[0]}/{c_id[1]} sha256 {str(c_id[2])[:12]}…",
        c.get("sha256"),
        b.get("sha256"),
    )


def _labels_check(candidate: dict[str, Any], baseline: dict[str, Any]) -> Check:
    c, b = list(candidate.get("labels") or []), list(baseline.get("labels") or [])
    if sorted(c) != sorted(b):
        return Check("same_labels", False, f"label sets differ: candidate {c}, baseline {b}", c, b)
    return Check("same_labels", True, f"labels {c}", c, b)


def _f1_check(candidate: dict[str, Any], baseline: dict[str, Any], max_drop: float) -> Check:
    c, b = float(candidate["macro_f1"]), float(baseline["macro_f1"])
    drop = b - c
    # A tiny epsilon keeps an exact-threshold drop (float noise in b - c) on the passing side.
    if drop > max_drop + 1e-12:
        return Check(
            "macro_f1_drop",
            False,
            f"macro-F1 dropped {drop * 100:.2f} points ({b:.4f} -> {c:.4f}), "
            f"more than the allowed {max_drop * 100:.2f}",
            c,
            b,
            max_drop,
        )
    return Check(
        "macro_f1_drop",
        True,
        f"macro-F1 {c:.4f} vs baseline {b:.4f} (change {-drop * 100:+.2f} points, "
        f"allowed drop {max_drop * 100:.2f})",
        c,
        b,
        max_drop,
    )


def gate(
    candidate: dict[str, Any], baseline: dict[str, Any], *, max_f1_drop: float = DEFAULT_MAX_F1_DROP
) -> GateDecision:
    """Pure decision over two metrics documents (evaluate's metrics.json format)."""
    if not is_unit_fraction(max_f1_drop):
        raise ValueError(f"max_f1_drop must be a finite number in [0, 1], got {max_f1_drop!r}")
    _require_gateable(candidate, "candidate")
    _require_gateable(baseline, "baseline")
    checks = [
        _dataset_check(candidate, baseline),
        _labels_check(candidate, baseline),
        _f1_check(candidate, baseline, max_f1_drop),
    ]
    return GateDecision(all(c.passed for c in checks), checks)


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", type=Path, required=True, help="the candidate's metrics.json")
    parser.add_argument("--baseline", type=Path, required=True, help="the production model's metrics.json")
    parser.add_argument(
        "--max-f1-drop",
        type=unit_fraction_arg,
        default=DEFAULT_MAX_F1_DROP,
        help="largest allowed macro-F1 drop, absolute (default: %(default)s = 2 points)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the decision JSON here")


def _model_version(metrics: Mapping[str, Any]) -> Any:
    """metrics.json's model version when it names one (a hand-made file may hold anything there)."""
    model = metrics.get("model")
    return model.get("version") if isinstance(model, Mapping) else None


def run(args: argparse.Namespace) -> int:
    from inference_server.ml.evaluate import load_metrics

    try:
        check_output_file(args.output, "--output")
        candidate, baseline = load_metrics(args.candidate), load_metrics(args.baseline)
        decision = gate(candidate, baseline, max_f1_drop=args.max_f1_drop)
    except (MLInputError, ValueError) as e:
        return cli_error("compare", f"cannot compare: {e}")
    doc = {
        **decision.to_dict(),
        "candidate": str(args.candidate),
        "baseline": str(args.baseline),
        "candidate_version": _model_version(candidate),
        "baseline_version": _model_version(baseline),
    }
    print(json.dumps(doc, indent=2, sort_keys=True))
    if args.output:
        write_json_atomic(args.output, doc)
    verdict = "PASS" if decision.passed else "FAIL: " + "; ".join(decision.reasons)
    print(f"gate {verdict}", file=sys.stderr)
    return EXIT_OK if decision.passed else EXIT_GATE_FAILED
