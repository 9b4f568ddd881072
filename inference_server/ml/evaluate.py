"""`sentiment-ml evaluate`: a model on a dataset split → metrics.json.

metrics.json (schema_version 1) is what `compare`, the registry and the operator's evaluation Job
read::

    {"schema_version": 1, "kind": "evaluation", "created_at": "...Z",
     "model": {"version", "path", "sha256", "quantized", "calibrated", "temperature"},
     "dataset": {"name", "split", "sha256" (of the split file), "dataset_sha256", "rows"},
     "labels": [...], "rows", "macro_f1", "macro_f1_classes" (the labels macro_f1 averages over: those
     in the gold labels or the predictions), "macro_f1_ci95" ([low, high]: 95% bootstrap interval over
     the rows), "accuracy", "ece", "ece_bins", "nll",
     "per_class": {label: {"precision", "recall", "f1", "support"}},
     "confusion_matrix": [[...]]  (rows: true label, columns: predicted, in `labels` order),
     "latency_ms": {"batch_size", "count", "p50", "p95", "mean", "max"}  (per batch),
     "uncalibrated": {"ece", "nll"}  (only when calibrated)}
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from inference_server.contract import JobKind, JobOutcome, JobResult
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
    read_json,
    write_json_atomic,
)
from inference_server.ml.compare import metrics_problems
from inference_server.ml.datasets import (
    Example,
    decode_jsonl,
    default_data_root,
    load_manifest,
    manifest_dataset_sha256,
    read_split_bytes,
    sha256_bytes,
)

if TYPE_CHECKING:
    from inference_server.runtime.calibration import CalibrationParams
    from inference_server.runtime.model import LoadedModel

METRICS_SCHEMA_VERSION: Final = 1
DEFAULT_BATCH_SIZE: Final = 32


@dataclass(frozen=True)
class DatasetRef:
    name: str
    split: str
    sha256: str
    dataset_sha256: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "sha256": self.sha256,
            "dataset_sha256": self.dataset_sha256,
            "rows": self.rows,
        }


def load_dataset_split(root: Path, name: str, split: str) -> tuple[list[Example], DatasetRef]:
    """Examples of a split and the reference that metrics.json records, both hash-checked: the split
    file against its manifest entry, and the dataset sha256 (recorded, and compared by the registry)
    against the split hashes it is computed from — copying it unchecked once recorded a zeroed hash.
    One read of the manifest and of the split file."""
    manifest = load_manifest(root, name)
    dataset_sha = manifest_dataset_sha256(manifest, root, name)
    data, info = read_split_bytes(root, name, split, manifest)
    examples = decode_jsonl(data, str(root / name / f"{split}.jsonl"))
    return examples, DatasetRef(name, split, str(info["sha256"]), dataset_sha, len(examples))


def load_dataset_file(
    path: Path, *, expected_sha256: str | None = None, name: str | None = None
) -> tuple[list[Example], DatasetRef]:
    """An evaluation set given as one JSONL file of {id, text, label} lines — what a SentimentModel's
    spec.evaluation.dataset points at, with the sha256 it declares — rather than a built dataset's
    split. The file's own hash stands for both the split's and the dataset's in metrics.json."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MLInputError(f"--dataset-file {path} not found") from None
    except OSError as exc:
        raise MLInputError(f"cannot read --dataset-file {path}: {exc.strerror or exc}") from None
    actual = sha256_bytes(data)
    if expected_sha256 and actual != expected_sha256.strip().lower():
        raise MLInputError(
            f"--dataset-file {path} has sha256 {actual} but --dataset-sha256 is {expected_sha256}: the file "
            "is not the declared evaluation set (changed, or the hash is wrong)"
        )
    try:
        examples = decode_jsonl(data, str(path))
    except UnicodeDecodeError as exc:
        raise MLInputError(f"--dataset-file {path} is not UTF-8 text ({exc})") from None
    if not examples:
        raise MLInputError(f"--dataset-file {path} holds no examples")
    return examples, DatasetRef(name or path.stem, "file", actual, actual, len(examples))


def label_indices(model_labels: Sequence[str], examples: Sequence[Example]) -> npt.NDArray[np.int64]:
    index = {label: i for i, label in enumerate(model_labels)}
    unknown = sorted({e.label for e in examples} - index.keys())
    if unknown:
        raise MLInputError(f"dataset labels {unknown} are not among the model's labels {list(model_labels)}")
    return np.array([index[e.label] for e in examples], dtype=np.int64)


def require_finite_logits(logits: npt.ArrayLike, where: str) -> None:
    """Refuse NaN/inf logits: argmax of a NaN row is 0 and NaN loses every comparison, so they would
    turn into plausible-looking labels, F1 and gate verdicts instead of an error."""
    z = np.asarray(logits)
    bad = int((~np.isfinite(z)).any(axis=-1).sum()) if z.size else 0
    if bad:
        raise MLInputError(
            f"the model produced NaN/inf logits for {bad} of {len(z)} texts of {where}; "
            "its weights are broken (a diverged training run?): retrain or use another model"
        )


def timed_logits(
    m: LoadedModel, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True
) -> tuple[npt.NDArray[np.float32], list[float]]:
    """Logits in input order and the wall time of each batch in ms (batches in input order, as a
    serving process would see them, rather than length-sorted)."""
    from tqdm import tqdm

    from inference_server.runtime.model import predict_logits

    chunks: list[npt.NDArray[np.float32]] = []
    latencies: list[float] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress, file=sys.stderr):
        batch = texts[start : start + batch_size]
        t0 = time.perf_counter()
        chunks.append(predict_logits(m, batch, batch_size=len(batch)))
        latencies.append((time.perf_counter() - t0) * 1000.0)
    if not chunks:
        return np.zeros((0, len(m.labels)), dtype=np.float32), []
    return np.concatenate(chunks), latencies


def metrics_document(
    *,
    logits: npt.ArrayLike,
    y_true: npt.ArrayLike,
    labels: Sequence[str],
    dataset: DatasetRef,
    model: dict[str, Any],
    latencies_ms: Sequence[float],
    batch_size: int,
    temperature: float | None = None,
) -> dict[str, Any]:
    """The metrics.json document (pure: everything measured is passed in)."""
    probs = M.softmax(logits, temperature or 1.0)
    doc: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "kind": "evaluation",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {**model, "calibrated": temperature is not None, "temperature": temperature},
        "dataset": dataset.to_dict(),
        "labels": list(labels),
        # nll from the logits, as `uncalibrated.nll` and the calibration report compute it: the
        # probabilities' 1e-12 floor would cap a confidently wrong row's loss and make them disagree.
        **M.classification_metrics(
            probs, y_true, labels, nll=M.nll_from_logits(logits, y_true, temperature or 1.0)
        ),
        "latency_ms": {"batch_size": batch_size, **M.latency_summary(latencies_ms)},
    }
    if temperature is not None:
        raw = M.softmax(logits)
        doc["uncalibrated"] = {
            "ece": M.expected_calibration_error(raw, y_true),
            "nll": M.nll_from_logits(logits, y_true),
        }
    return doc


@dataclass(frozen=True)
class Evaluation:
    """A metrics.json document (``doc``) with what it was computed from: `make model` fits its
    calibration on the logits its evaluation already paid for."""

    doc: dict[str, Any]
    logits: npt.NDArray[np.float32]
    y_true: npt.NDArray[np.int64]
    dataset: DatasetRef


def evaluate(
    m: LoadedModel,
    examples: Sequence[Example],
    dataset: DatasetRef,
    *,
    calibration: CalibrationParams | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> Evaluation:
    if not examples:
        raise MLInputError(f"dataset {dataset.name!r} split {dataset.split!r} is empty")
    y = label_indices(m.labels, examples)
    logits, latencies = timed_logits(m, [e.text for e in examples], batch_size=batch_size, progress=progress)
    require_finite_logits(logits, f"{dataset.name}/{dataset.split}")
    model_info = {"version": m.version, "path": str(m.path), "sha256": m.sha256, "quantized": m.quantized}
    doc = metrics_document(
        logits=logits,
        y_true=y,
        labels=m.labels,
        dataset=dataset,
        model=model_info,
        latencies_ms=latencies,
        batch_size=batch_size,
        temperature=calibration.temperature if calibration else None,
    )
    return Evaluation(doc, logits, y, dataset)


def load_metrics(path: Path) -> dict[str, Any]:
    """Read a metrics.json and check it has what the gate needs."""
    doc = read_json(path, "metrics file")
    if not isinstance(doc, dict):
        raise MLInputError(f"{path}: a metrics file holds a JSON object")
    if doc.get("schema_version") != METRICS_SCHEMA_VERSION:
        raise MLInputError(f"{path}: unsupported metrics schema_version {doc.get('schema_version')!r}")
    missing = [k for k in ("macro_f1", "dataset", "labels") if k not in doc]
    if missing:
        raise MLInputError(f"{path}: metrics file lacks {', '.join(missing)}")
    problems = metrics_problems(doc)
    if problems:
        raise MLInputError(f"{path}: {'; '.join(problems)}")
    return doc


def job_result(doc: dict[str, Any]) -> JobResult:
    """The evaluation as the contract's JobResult (what the operator reads from a ConfigMap)."""
    return JobResult(
        kind=JobKind.EVALUATION,
        outcome=JobOutcome.SUCCEEDED,
        model_version=str(doc["model"]["version"]),
        finished_at=str(doc["created_at"]),
        metrics={
            "f1": doc["macro_f1"],
            "accuracy": doc["accuracy"],
            "ece": doc["ece"],
            "nll": doc["nll"],
            "latency_p50_ms": doc["latency_ms"]["p50"],
            "latency_p95_ms": doc["latency_ms"]["p95"],
        },
        detail={"dataset": doc["dataset"], "labels": doc["labels"], "calibrated": doc["model"]["calibrated"]},
    )


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The shared flags default to the server image's MODEL_PATH / MODEL_VERSION /
    # CALIBRATION_PARAMS_PATH, so the evaluation Job records the served version and confidences;
    # --version stays as the older spelling of --model-version.
    add_model_arguments(parser, version_aliases=("--version",))
    add_data_dir_argument(parser)
    parser.add_argument("--dataset", default="rotten_tomatoes", help="a built dataset (`datasets`)")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--dataset-file",
        type=Path,
        default=None,
        help="evaluate on this JSONL file of {id, text, label} lines instead of --dataset/--split",
    )
    parser.add_argument(
        "--dataset-sha256", default=None, help="with --dataset-file: refuse it unless it has this sha256"
    )
    parser.add_argument("--dataset-name", default=None, help="with --dataset-file: its name (default: stem)")
    parser.add_argument("--quantized", action="store_true", help="evaluate the dynamic INT8 copy")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--output", type=Path, default=None, help="write metrics.json here (default: stdout)")
    parser.add_argument(
        "--job-result",
        type=Path,
        default=None,
        help="also write the contract's JobResult JSON here (for the evaluation Job)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json

    from inference_server.runtime.calibration import CalibrationError, CalibrationParams
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    if args.batch_size < 1:
        return cli_error("evaluate", "--batch-size must be at least 1")
    try:
        model_path = model_path_of(args)
        check_output_file(args.output, "--output")
        check_output_file(args.job_result, "--job-result")
        if args.dataset_file is not None:
            examples, ref = load_dataset_file(
                args.dataset_file, expected_sha256=args.dataset_sha256, name=args.dataset_name
            )
        elif args.dataset_sha256 or args.dataset_name:
            raise MLInputError("--dataset-sha256 and --dataset-name go with --dataset-file")
        else:
            examples, ref = load_dataset_split(args.data_dir or default_data_root(), args.dataset, args.split)
        calibration = CalibrationParams.load(args.calibration) if args.calibration else None
        m = load_model_of(args, model_path, quantized=args.quantized)
        doc = evaluate(
            m,
            examples,
            ref,
            calibration=calibration,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        ).doc
    except (MLInputError, CalibrationError, ArtifactError, ModelLoadError) as e:
        return cli_error("evaluate", str(e))
    if args.output:
        write_json_atomic(args.output, doc)
    else:
        # allow_nan=False as write_json_atomic: stdout is redirected into files that other tools parse.
        print(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))
    if args.job_result:
        args.job_result.parent.mkdir(parents=True, exist_ok=True)
        args.job_result.write_text(job_result(doc).to_json() + "\n")
    low, high = doc["macro_f1_ci95"]
    print(
        f"{ref.name}/{ref.split}: macro_f1={doc['macro_f1']:.4f} (95% interval {low:.4f}-{high:.4f}) "
        f"accuracy={doc['accuracy']:.4f} "
        f"ece={doc['ece']:.4f} nll={doc['nll']:.4f} p50={doc['latency_ms']['p50']:.1f}ms/batch",
        file=sys.stderr,
    )
    return EXIT_OK
