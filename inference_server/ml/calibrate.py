"""`sentiment-ml calibrate`: temperature scaling fitted on the validation split.

One scalar T divides the logits before softmax: it changes confidences, never the predicted label,
so F1 is untouched. T minimises the validation NLL (scipy's bounded scalar search over log T). The
params file is what the server reads from CALIBRATION_PARAMS_PATH; the report gives ECE and NLL
before and after on the fitting split and on a held-out split.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from inference_server.ml import metrics as M
from inference_server.ml.common import (
    EXIT_OK,
    MLInputError,
    add_data_dir_argument,
    add_model_arguments,
    check_output_file,
    cli_error,
    load_model_of,
    model_path_of,
    write_json_atomic,
)
from inference_server.ml.datasets import Example, default_data_root

if TYPE_CHECKING:
    from inference_server.ml.evaluate import DatasetRef, Evaluation
    from inference_server.runtime.calibration import CalibrationParams
    from inference_server.runtime.model import LoadedModel

MIN_ROWS: Final = 30
MIN_PER_CLASS: Final = 5
T_BOUNDS: Final = (0.05, 20.0)
# A fitted T within 1% of a bound is the search stopping at the wall, not a minimum it found.
BOUND_TOLERANCE: Final = 0.01


class CalibrationDataError(MLInputError):
    """The split cannot support a temperature fit (too few rows, or not every class present)."""


def check_fit_data(
    y: npt.ArrayLike,
    n_classes: int,
    *,
    logits: npt.ArrayLike | None = None,
    min_rows: int = MIN_ROWS,
    min_per_class: int = MIN_PER_CLASS,
    where: str = "calibration split",
) -> None:
    """A temperature fitted on one class (or a handful of rows) just learns "be confident": refuse.
    NaN logits are refused too: the search would return some T inside its bounds and write it."""
    if logits is not None:
        from inference_server.ml.evaluate import require_finite_logits

        require_finite_logits(logits, where)
    t = np.asarray(y, dtype=np.int64)
    if t.size < min_rows:
        raise CalibrationDataError(
            f"{where} has {t.size} rows; need at least {min_rows} to fit a temperature"
        )
    counts = np.bincount(t, minlength=n_classes)
    thin = [i for i, c in enumerate(counts) if c < min_per_class]
    if thin:
        raise CalibrationDataError(
            f"{where} is degenerate: classes {thin} have fewer than {min_per_class} rows "
            f"(counts {counts.tolist()}); calibrate on a split holding every class"
        )


def fit_temperature(logits: npt.ArrayLike, y: npt.ArrayLike, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature minimising mean NLL (searched in log space, where NLL is smooth and the
    bounds are symmetric around T=1)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    result = minimize_scalar(
        lambda log_t: M.nll_from_logits(z, t, math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(result.x))


def calibration_figures(logits: npt.ArrayLike, y: npt.ArrayLike, temperature: float) -> dict[str, float]:
    before = M.softmax(logits)
    after = M.softmax(logits, temperature)
    ece_b, ece_a = M.expected_calibration_error(before, y), M.expected_calibration_error(after, y)
    return {
        "ece_before": ece_b,
        "ece_after": ece_a,
        "nll_before": M.nll_from_logits(logits, y),
        "nll_after": M.nll_from_logits(logits, y, temperature),
        "ece_reduction": (ece_b - ece_a) / ece_b if ece_b > 0 else 0.0,
        "accuracy": M.accuracy(y, before.argmax(axis=1)),
    }


def at_bound(temperature: float, bounds: tuple[float, float] = T_BOUNDS) -> bool:
    low, high = bounds
    return temperature <= low * (1 + BOUND_TOLERANCE) or temperature >= high / (1 + BOUND_TOLERANCE)


def fit_warning(report: dict[str, Any]) -> str | None:
    """Why the fitted T should not be trusted, in one line, or None. A split the model gets all right
    has no error to calibrate against: NLL keeps falling as T shrinks, so the fit reports a
    "perfect" ECE and makes the next wrong answer look certain. A T at a bound is no minimum either."""
    temperature = report["temperature"]
    fitted = report["fitted_on"]
    where = f"{fitted['dataset']['name']}/{fitted['dataset']['split']}"
    if fitted["accuracy"] >= 1.0:
        return (
            f"the model makes no errors on {where}, so the fitted temperature {temperature:.4g} is "
            "not a calibration: fit on a split where it makes mistakes"
        )
    if report["at_bound"]:
        low, high = report["bounds"]
        return (
            f"the fitted temperature {temperature:.4g} is at the search bound [{low}, {high}]: the "
            f"NLL on {where} has no minimum inside it (a constant or broken predictor?)"
        )
    return None


def fit(
    logits: npt.ArrayLike,
    y: npt.ArrayLike,
    n_classes: int,
    ref: DatasetRef,
    held_out: tuple[npt.ArrayLike, npt.ArrayLike, DatasetRef] | None = None,
) -> tuple[CalibrationParams, dict[str, Any]]:
    """Pure fit: params for CALIBRATION_PARAMS_PATH plus the report document."""
    from inference_server.runtime.calibration import CalibrationParams

    check_fit_data(y, n_classes, logits=logits, where=f"{ref.name}/{ref.split}")
    if held_out is not None:
        from inference_server.ml.evaluate import require_finite_logits

        require_finite_logits(held_out[0], f"{held_out[2].name}/{held_out[2].split}")
    temperature = fit_temperature(logits, y)
    fitted = calibration_figures(logits, y, temperature)
    params = CalibrationParams(
        temperature=temperature,
        fitted_on=f"{ref.name}/{ref.split}@sha256:{ref.sha256}",
        metrics={k: fitted[k] for k in ("ece_before", "ece_after", "nll_before", "nll_after")},
    )
    report: dict[str, Any] = {
        "temperature": temperature,
        "bounds": list(T_BOUNDS),
        "at_bound": at_bound(temperature),
        "ece_bins": M.DEFAULT_ECE_BINS,
        "fitted_on": {"dataset": ref.to_dict(), **fitted},
    }
    if held_out is not None:
        h_logits, h_y, h_ref = held_out
        report["held_out"] = {"dataset": h_ref.to_dict(), **calibration_figures(h_logits, h_y, temperature)}
    return params, report


def calibrate_model(
    m: LoadedModel,
    fit_examples: Sequence[Example],
    fit_ref: DatasetRef,
    held_out: tuple[Sequence[Example], DatasetRef] | None = None,
    *,
    progress: bool = True,
) -> tuple[CalibrationParams, dict[str, Any]]:
    from inference_server.ml.evaluate import label_indices, timed_logits

    y = label_indices(m.labels, fit_examples)
    check_fit_data(y, len(m.labels), where=f"{fit_ref.name}/{fit_ref.split}")  # before the slow part
    logits, _ = timed_logits(m, [e.text for e in fit_examples], progress=progress)
    h = None
    if held_out is not None:
        h_examples, h_ref = held_out
        h_logits, _ = timed_logits(m, [e.text for e in h_examples], progress=progress)
        h = (h_logits, label_indices(m.labels, h_examples), h_ref)
    return _naming_model(m, *fit(logits, y, len(m.labels), fit_ref, h))


def calibrate_evaluations(
    m: LoadedModel, fit_on: Evaluation, held_out: Evaluation | None = None
) -> tuple[CalibrationParams, dict[str, Any]]:
    """`calibrate_model` on logits an evaluation already computed (no second pass over the splits)."""
    h = (held_out.logits, held_out.y_true, held_out.dataset) if held_out is not None else None
    return _naming_model(m, *fit(fit_on.logits, fit_on.y_true, len(m.labels), fit_on.dataset, h))


def _naming_model(
    m: LoadedModel, params: CalibrationParams, report: dict[str, Any]
) -> tuple[CalibrationParams, dict[str, Any]]:
    report["model"] = {"version": m.version, "path": str(m.path)}
    return params, report


def markdown_summary(report: dict[str, Any]) -> str:
    rows = []
    for key in ("fitted_on", "held_out"):
        if key in report:
            r = report[key]
            d = r["dataset"]
            rows.append(
                f"| {d['name']}/{d['split']} ({d['rows']} rows) | {r['ece_before']:.4f} | "
                f"{r['ece_after']:.4f} | {r['ece_reduction']:.0%} | {r['nll_before']:.4f} | "
                f"{r['nll_after']:.4f} |"
            )
    return (
        "| split | ECE before | ECE after | ECE reduction | NLL before | NLL after |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    # MODEL_PATH / MODEL_VERSION defaults as in the other commands; no --calibration: this fits one.
    add_model_arguments(parser, calibration=False)
    add_data_dir_argument(parser)
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--split", default="validation", help="split to fit on (default: %(default)s)")
    parser.add_argument(
        "--held-out-split",
        default="test",
        help="split to check the fit on ('none' to skip; default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="calibration params JSON to write (what CALIBRATION_PARAMS_PATH reads)",
    )
    parser.add_argument("--report", type=Path, default=None, help="write the before/after report JSON here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from inference_server.ml.evaluate import load_dataset_split
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    root = args.data_dir or default_data_root()
    try:
        model_path = model_path_of(args)
        check_output_file(args.output, "--output")
        check_output_file(args.report, "--report")
        fit_examples, fit_ref = load_dataset_split(root, args.dataset, args.split)
        held = None
        if args.held_out_split.lower() != "none":
            held = load_dataset_split(root, args.dataset, args.held_out_split)
        m = load_model_of(args, model_path)
        params, report = calibrate_model(m, fit_examples, fit_ref, held, progress=not args.no_progress)
    except (MLInputError, ArtifactError, ModelLoadError) as e:
        return cli_error("calibrate", str(e))
    # Atomic: the server reads this file, and must never see half of it.
    write_json_atomic(args.output, params.to_dict())
    if args.report:
        write_json_atomic(args.report, report)
    else:
        print(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    f = report["fitted_on"]
    print(
        f"temperature={params.temperature:.4f} ECE {f['ece_before']:.4f} -> {f['ece_after']:.4f} "
        f"({f['ece_reduction']:.0%} lower), NLL {f['nll_before']:.4f} -> {f['nll_after']:.4f}",
        file=sys.stderr,
    )
    warning = fit_warning(report)
    if warning:
        print(f"sentiment-ml calibrate: warning: {warning}", file=sys.stderr)
    return EXIT_OK
