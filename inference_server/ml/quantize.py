"""`sentiment-ml quantize`: the FP32 → dynamic INT8 experiment.

Both variants come from the same model directory (runtime.quantization.quantize_dynamic_int8, the
code the server runs under enable_quantized_model). Measured: serialized size, single-sentence
latency (fp32 and int8 calls interleaved, so background load hits both alike), per-batch latency and
throughput over the whole split, macro-F1 of each and the rate at which they agree on the label.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from inference_server.ml import metrics as M
from inference_server.ml.common import (
    EXIT_OK,
    MLInputError,
    add_data_dir_argument,
    cli_error,
    write_json_atomic,
)
from inference_server.ml.datasets import default_data_root

if TYPE_CHECKING:
    from inference_server.ml.evaluate import DatasetRef
    from inference_server.runtime.model import LoadedModel

DEFAULT_SINGLE: Final = 100
WARMUP_CALLS: Final = 5


def serialized_bytes(model: Any) -> int:
    """Bytes of the state dict as torch.save writes it: comparable across fp32 and packed INT8."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
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


def comparison(fp32: dict[str, Any], int8: dict[str, Any], agreement: float) -> dict[str, float]:
    return {
        "agreement": agreement,
        "size_ratio": int8["size_bytes"] / fp32["size_bytes"],
        "single_p50_speedup": fp32["single_latency_ms"]["p50"] / max(int8["single_latency_ms"]["p50"], 1e-9),
        "throughput_speedup": int8["throughput_per_s"] / max(fp32["throughput_per_s"], 1e-9),
        "macro_f1_delta_points": (int8["macro_f1"] - fp32["macro_f1"]) * 100,
    }


def run_experiment(
    fp32: LoadedModel,
    texts: Sequence[str],
    y: Any,
    ref: DatasetRef,
    *,
    n_single: int,
    batch_size: int,
    progress: bool = True,
) -> dict[str, Any]:
    from inference_server.ml.evaluate import timed_logits
    from inference_server.runtime.quantization import quantize_dynamic_int8

    int8 = replace(fp32, model=quantize_dynamic_int8(fp32.model), quantized=True)
    sizes = {"fp32": serialized_bytes(fp32.model), "int8": serialized_bytes(int8.model)}
    single = single_latencies([fp32, int8], texts[:n_single])
    results: dict[str, dict[str, Any]] = {}
    predictions = {}
    for name, m, s in (("fp32", fp32, single[0]), ("int8", int8, single[1])):
        logits, batch_ms = timed_logits(m, texts, batch_size=batch_size, progress=progress)
        predictions[name] = logits.argmax(axis=1)
        results[name] = variant_summary(
            name,
            size=sizes[name],
            logits=logits,
            y=y,
            labels=fp32.labels,
            batch_ms=batch_ms,
            single_ms=s,
            batch_size=batch_size,
        )
    agreement = float(np.mean(predictions["fp32"] == predictions["int8"]))
    import torch

    return {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"version": fp32.version, "path": str(fp32.path)},
        "dataset": ref.to_dict(),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        "single_calls": len(single[0]),
        "fp32": results["fp32"],
        "int8": results["int8"],
        "comparison": comparison(results["fp32"], results["int8"], agreement),
    }


def markdown(doc: dict[str, Any]) -> str:
    f, q, c = doc["fp32"], doc["int8"], doc["comparison"]

    def row(label: str, key: str, fmt: str) -> str:
        return f"| {label} | {format(key_of(f, key), fmt)} | {format(key_of(q, key), fmt)} |"

    def key_of(d: dict[str, Any], dotted: str) -> Any:
        for part in dotted.split("."):
            d = d[part]
        return d

    lines = [
        f"Model `{doc['model']['version']}` on {doc['dataset']['name']}/{doc['dataset']['split']} "
        f"({doc['dataset']['rows']} rows, sha256 `{doc['dataset']['sha256'][:16]}…`); torch "
        f"{doc['environment']['torch']}, {doc['environment']['threads']} thread(s), 1-min load average "
        f"{doc['environment']['load_average_1m']:.1f} during the run.",
        "",
        "| | FP32 | dynamic INT8 |",
        "|---|---|---|",
        f"| size (state dict, MB) | {f['size_bytes'] / 1e6:.1f} | {q['size_bytes'] / 1e6:.1f} |",
        row("macro-F1", "macro_f1", ".4f"),
        row("accuracy", "accuracy", ".4f"),
        row("single sentence p50 (ms)", "single_latency_ms.p50", ".1f"),
        row("single sentence p95 (ms)", "single_latency_ms.p95", ".1f"),
        row(f"batch of {f['batch_latency_ms']['batch_size']} p50 (ms)", "batch_latency_ms.p50", ".1f"),
        row(f"batch of {f['batch_latency_ms']['batch_size']} p95 (ms)", "batch_latency_ms.p95", ".1f"),
        row("throughput (sentences/s, batched)", "throughput_per_s", ".1f"),
        "",
        f"Agreement (same label): **{c['agreement']:.1%}**; size ×{c['size_ratio']:.2f}; single-sentence "
        f"speed-up ×{c['single_p50_speedup']:.2f}; throughput ×{c['throughput_speedup']:.2f}; macro-F1 "
        f"change {c['macro_f1_delta_points']:+.2f} points.",
    ]
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="fp32 model directory (MODEL_PATH)")
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU quota)")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here (default: stdout)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a markdown table here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from inference_server.ml.evaluate import label_indices, load_dataset_split
    from inference_server.runtime.model import ArtifactError, ModelLoadError, load_model
    from inference_server.runtime.threads import configure_torch_threads

    if args.single < 1 or args.batch_size < 1:
        return cli_error("quantize", "--single and --batch-size must be at least 1")
    configure_torch_threads(args.threads)
    try:
        examples, ref = load_dataset_split(args.data_dir or default_data_root(), args.dataset, args.split)
        if not examples:
            raise MLInputError(f"{ref.name}/{ref.split} is empty")
        m = load_model(args.model, version=args.model.resolve().name)
        y = label_indices(m.labels, examples)
        doc = run_experiment(
            m,
            [e.text for e in examples],
            y,
            ref,
            n_single=args.single,
            batch_size=args.batch_size,
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
