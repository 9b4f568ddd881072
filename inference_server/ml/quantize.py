"""`sentiment-ml quantize`: FP32 against both dynamic INT8 backends the server can serve.

All variants come from the same model directory through the code the server runs under
enable_quantized_model (runtime.quantization.int8_variant): torch dynamic INT8 (Linear layers only)
and ONNX Runtime INT8 (fused encoder, the default; INT8_BACKEND selects). Measured: size, single-sentence
latency and per-batch latency/throughput over the split — calls interleaved variant by variant, so
background load hits all alike — macro-F1 of each and the rate at which each INT8 agrees with FP32,
both in batches and with every sentence scored alone (dynamic INT8's answers depend on the batch).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

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
from inference_server.ml.datasets import default_data_root

if TYPE_CHECKING:
    from inference_server.ml.evaluate import DatasetRef
    from inference_server.runtime.model import LoadedModel

DEFAULT_SINGLE: Final = 100
WARMUP_CALLS: Final = 5
# Report order; the keys of doc["variants"]. "int8_onnxruntime" is what enable_quantized_model serves
# by default, "int8_torch" what INT8_BACKEND=torch serves.
VARIANTS: Final = ("fp32", "int8_torch", "int8_onnxruntime")
TITLES: Final = {
    "fp32": "FP32 (torch)",
    "int8_torch": "INT8 torch dynamic",
    "int8_onnxruntime": "INT8 ONNX Runtime",
}


def size_bytes(m: LoadedModel) -> int:
    """Serialized size: the ONNX file for ONNX Runtime, the state dict as torch.save writes it for torch
    (comparable across fp32 and packed INT8)."""
    from inference_server.runtime.onnx_int8 import OrtClassifier

    if isinstance(m.model, OrtClassifier):
        return m.model.size_bytes
    import torch

    buf = io.BytesIO()
    torch.save(m.model.state_dict(), buf)
    return buf.tell()


def single_latencies(models: Sequence[LoadedModel], texts: Sequence[str]) -> list[list[float]]:
    """ms per single-text call for each model, calls interleaved model by model."""
    from inference_server.runtime.model import predict_logits

    for m in models:
        for text in texts[:WARMUP_CALLS]:
            predict_logits(m, [text])
    out: list[list[float]] = [[] for _ in models]
    for text in texts:
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            predict_logits(m, [text])
            out[i].append((time.perf_counter() - t0) * 1000.0)
    return out


def batched_logits(
    models: Sequence[LoadedModel], texts: Sequence[str], *, batch_size: int, progress: bool
) -> tuple[list[Any], list[list[float]]]:
    """Logits (input order) and ms per batch for each model; each batch runs on every model in turn."""
    from tqdm import tqdm

    from inference_server.runtime.model import predict_logits

    chunks: list[list[Any]] = [[] for _ in models]
    ms: list[list[float]] = [[] for _ in models]
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress, file=sys.stderr):
        batch = texts[start : start + batch_size]
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            chunks[i].append(predict_logits(m, batch, batch_size=len(batch)))
            ms[i].append((time.perf_counter() - t0) * 1000.0)
    return [np.concatenate(c) for c in chunks], ms


def alone_logits(models: Sequence[LoadedModel], texts: Sequence[str], *, progress: bool) -> list[Any]:
    """Logits of every text scored alone, one call each, for each model: what a lone request gets.

    Dynamic INT8 quantizes activations with one scale per call, i.e. per padded batch, so an INT8
    text's logits (and sometimes its label) depend on the texts it was batched with; FP32's do not.
    Scoring alone gives the batch-free figure and, against `batched_logits`, how much the batch moves.
    """
    from tqdm import tqdm

    from inference_server.runtime.model import predict_logits

    rows: list[list[Any]] = [[] for _ in models]
    for text in tqdm(texts, desc="alone", unit="text", disable=not progress, file=sys.stderr):
        for i, m in enumerate(models):
            rows[i].append(predict_logits(m, [text])[0])
    return [np.stack(r) for r in rows]


def alone_summary(logits: Any, batched: Any, y: Any, labels: Sequence[str]) -> dict[str, float]:
    """Quality with every text alone, and the share of texts whose label is the same alone and batched."""
    pred = np.asarray(logits).argmax(axis=1)
    same = float(np.mean(pred == np.asarray(batched).argmax(axis=1)))
    return {
        "macro_f1": M.macro_f1(y, pred, len(labels)),
        "accuracy": M.accuracy(y, pred),
        "same_label_as_batched": same,
    }


def variant_summary(
    name: str,
    *,
    size: int,
    logits: Any,
    y: Any,
    labels: Sequence[str],
    batch_ms: Sequence[float],
    single_ms: Sequence[float],
    batch_size: int,
) -> dict[str, Any]:
    probs = M.softmax(logits)
    q = M.classification_metrics(probs, y, labels)
    seconds = sum(batch_ms) / 1000.0
    return {
        "variant": name,
        "size_bytes": size,
        "macro_f1": q["macro_f1"],
        "accuracy": q["accuracy"],
        "ece": q["ece"],
        "single_latency_ms": M.latency_summary(single_ms),
        "batch_latency_ms": {"batch_size": batch_size, **M.latency_summary(batch_ms)},
        "throughput_per_s": (len(y) / seconds) if seconds > 0 else 0.0,
    }


def comparison(
    fp32: dict[str, Any], int8: dict[str, Any], agreement: float, agreement_alone: float
) -> dict[str, float]:
    return {
        "agreement": agreement,
        "agreement_alone": agreement_alone,
        "macro_f1_delta_points_alone": (int8["alone"]["macro_f1"] - fp32["alone"]["macro_f1"]) * 100,
        "size_ratio": int8["size_bytes"] / fp32["size_bytes"],
        "single_p50_speedup": fp32["single_latency_ms"]["p50"] / max(int8["single_latency_ms"]["p50"], 1e-9),
        "throughput_speedup": int8["throughput_per_s"] / max(fp32["throughput_per_s"], 1e-9),
        "macro_f1_delta_points": (int8["macro_f1"] - fp32["macro_f1"]) * 100,
    }


def build_variants(fp32: LoadedModel, threads: int) -> dict[str, LoadedModel]:
    from inference_server.runtime.quantization import int8_variant

    return {
        "fp32": fp32,
        "int8_torch": int8_variant(fp32, backend="torch"),
        "int8_onnxruntime": int8_variant(fp32, backend="onnxruntime", threads=threads),
    }


def run_experiment(
    fp32: LoadedModel,
    texts: Sequence[str],
    y: Any,
    ref: DatasetRef,
    *,
    n_single: int,
    batch_size: int,
    threads: int,
    progress: bool = True,
) -> dict[str, Any]:
    import onnxruntime
    import torch

    from inference_server.ml.evaluate import require_finite_logits
    from inference_server.runtime.quantization import DEFAULT_INT8_BACKEND

    models = build_variants(fp32, threads)
    names = list(models)
    single = single_latencies(list(models.values()), texts[:n_single])
    logits, batch_ms = batched_logits(list(models.values()), texts, batch_size=batch_size, progress=progress)
    for name, z in zip(names, logits, strict=True):  # NaN logits would make up labels, F1 and agreement
        require_finite_logits(z, f"{ref.name}/{ref.split} ({name})")
    alone = alone_logits(list(models.values()), texts, progress=progress)
    results = {
        name: variant_summary(
            name,
            size=size_bytes(models[name]),
            logits=logits[i],
            y=y,
            labels=fp32.labels,
            batch_ms=batch_ms[i],
            single_ms=single[i],
            batch_size=batch_size,
        )
        for i, name in enumerate(names)
    }
    for i, name in enumerate(names):
        results[name]["alone"] = alone_summary(alone[i], logits[i], y, fp32.labels)
    labels = {name: logits[i].argmax(axis=1) for i, name in enumerate(names)}
    labels_alone = {name: alone[i].argmax(axis=1) for i, name in enumerate(names)}
    return {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"version": fp32.version, "path": str(fp32.path)},
        "dataset": ref.to_dict(),
        "environment": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "threads": threads,
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        "served_int8_backend": DEFAULT_INT8_BACKEND,
        "rows_scored": len(texts),
        "single_calls": len(single[0]),
        "variants": results,
        "comparison": {
            name: comparison(
                results["fp32"],
                results[name],
                float(np.mean(labels["fp32"] == labels[name])),
                float(np.mean(labels_alone["fp32"] == labels_alone[name])),
            )
            for name in names
            if name != "fp32"
        },
    }


def markdown(doc: dict[str, Any]) -> str:
    variants = [doc["variants"][name] for name in VARIANTS]

    def cell(v: dict[str, Any], dotted: str, fmt: str) -> str:
        d: Any = v
        for part in dotted.split("."):
            d = d[part]
        return format(d, fmt)

    def row(label: str, key: str, fmt: str) -> str:
        return f"| {label} | " + " | ".join(cell(v, key, fmt) for v in variants) + " |"

    bs = variants[0]["batch_latency_ms"]["batch_size"]
    env = doc["environment"]
    lines = [
        f"Model `{doc['model']['version']}` on {doc['dataset']['name']}/{doc['dataset']['split']} "
        f"({doc['rows_scored']} of {doc['dataset']['rows']} rows, "
        f"sha256 `{doc['dataset']['sha256'][:16]}…`); torch "
        f"{env['torch']}, onnxruntime {env['onnxruntime']}, {env['threads']} thread(s), 1-min load "
        f"average {env['load_average_1m']:.1f} during the run. The server serves "
        f"`int8_{doc['served_int8_backend']}` under enable_quantized_model.",
        "",
        "| | " + " | ".join(TITLES[n] for n in VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
        "| size (MB; torch: state dict, ONNX Runtime: model file) | "
        + " | ".join(f"{v['size_bytes'] / 1e6:.1f}" for v in variants)
        + " |",
        row(f"macro-F1 (batches of {bs})", "macro_f1", ".4f"),
        row(f"accuracy (batches of {bs})", "accuracy", ".4f"),
        row("macro-F1 (each sentence alone)", "alone.macro_f1", ".4f"),
        row("same label alone as in its batch", "alone.same_label_as_batched", ".1%"),
        row("single sentence p50 (ms)", "single_latency_ms.p50", ".1f"),
        row("single sentence p95 (ms)", "single_latency_ms.p95", ".1f"),
        row(f"batch of {bs} p50 (ms)", "batch_latency_ms.p50", ".1f"),
        row(f"batch of {bs} p95 (ms)", "batch_latency_ms.p95", ".1f"),
        row("throughput (sentences/s, batched)", "throughput_per_s", ".1f"),
        "",
    ]
    for name, c in doc["comparison"].items():
        lines.append(
            f"- {TITLES[name]} vs FP32: agreement (same label) **{c['agreement']:.1%}**; size "
            f"×{c['size_ratio']:.2f}; single-sentence speed-up ×{c['single_p50_speedup']:.2f}; throughput "
            f"×{c['throughput_speedup']:.2f}; macro-F1 change {c['macro_f1_delta_points']:+.2f} points "
            f"(each sentence alone: agreement {c['agreement_alone']:.1%}, "
            f"{c['macro_f1_delta_points_alone']:+.2f} points)."
        )
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    # MODEL_PATH / MODEL_VERSION defaults as in the other commands. No --calibration: temperature
    # scaling does not change labels, and agreement and F1 are what the comparison measures.
    add_model_arguments(parser, calibration=False)
    add_data_dir_argument(parser)
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--single",
        type=int,
        default=DEFAULT_SINGLE,
        help="single-sentence calls per variant (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--limit", type=int, default=0, help="use only the first N rows of the split (default: all)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU quota)")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here (default: stdout)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a markdown table here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from inference_server.ml.evaluate import label_indices, load_dataset_split
    from inference_server.runtime.model import ArtifactError, ModelLoadError
    from inference_server.runtime.threads import configure_torch_threads

    if args.single < 1 or args.batch_size < 1 or args.limit < 0:
        return cli_error("quantize", "--single and --batch-size must be at least 1, --limit at least 0")
    threads = configure_torch_threads(args.threads)
    try:
        model_path = model_path_of(args)
        check_output_file(args.output, "--output")
        check_output_file(args.markdown, "--markdown")
        examples, ref = load_dataset_split(args.data_dir or default_data_root(), args.dataset, args.split)
        if args.limit:
            examples = examples[: args.limit]
        if not examples:
            raise MLInputError(f"{ref.name}/{ref.split} is empty")
        m = load_model_of(args, model_path)
        y = label_indices(m.labels, examples)
        doc = run_experiment(
            m,
            [e.text for e in examples],
            y,
            ref,
            n_single=args.single,
            batch_size=args.batch_size,
            threads=threads,
            progress=not args.no_progress,
        )
    except (MLInputError, ArtifactError, ModelLoadError) as e:
        return cli_error("quantize", str(e))
    if args.output:
        write_json_atomic(args.output, doc)
    else:
        print(json.dumps(doc, indent=2, sort_keys=True))
    md = markdown(doc)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md)
    print(md, file=sys.stderr)
    return EXIT_OK
