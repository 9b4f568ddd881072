"""The model-selection candidates that are not the fine-tuned model, measured on the same test split.

- ``vader``: the VADER lexicon (vaderSentiment); compound > 0 → positive, so a compound of exactly 0
  (no sentiment word found) counts as negative.
- ``frozen_lr``: the packaged encoder frozen, mean-pooled token embeddings, scikit-learn logistic
  regression fitted on the train split.

``python -m inference_server.ml.baselines --output docs/reports/baselines.json`` writes macro-F1,
accuracy, single-sentence latency, fit time and size for each (docs/model-selection.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_server.ml import metrics as M
from inference_server.ml.common import MLInputError, write_json_atomic
from inference_server.ml.datasets import LABELS, Example, default_data_root


def _summary(
    name: str,
    probs: npt.ArrayLike,
    y: npt.ArrayLike,
    single_ms: Sequence[float],
    size_bytes: int,
    fit_seconds: float,
) -> dict[str, Any]:
    q = M.classification_metrics(probs, y, LABELS)
    return {
        "candidate": name,
        "macro_f1": q["macro_f1"],
        "accuracy": q["accuracy"],
        "single_latency_ms": M.latency_summary(single_ms),
        "size_bytes": size_bytes,
        "fit_seconds": fit_seconds,
    }


def vader_probabilities(compound: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """[negative, positive] scores from VADER's compound in [-1, 1]. A score, not a calibrated
    probability: only argmax is used, and on the tie at compound 0 argmax takes the first column,
    negative (docs/reports/baselines.json was measured so)."""
    p_pos = (np.asarray(compound, dtype=np.float64) + 1.0) / 2.0
    return np.stack([1.0 - p_pos, p_pos], axis=1)


def vader(test: Sequence[Example], y: npt.ArrayLike, n_single: int) -> dict[str, Any]:
    from vaderSentiment import vaderSentiment as vs

    analyzer = vs.SentimentIntensityAnalyzer()
    compound = np.array([analyzer.polarity_scores(e.text)["compound"] for e in test])
    probs = vader_probabilities(compound)
    single = []
    for e in test[:n_single]:
        t0 = time.perf_counter()
        analyzer.polarity_scores(e.text)
        single.append((time.perf_counter() - t0) * 1000.0)
    lexicon = Path(vs.__file__).with_name("vader_lexicon.txt")
    return _summary("vader", probs, y, single, lexicon.stat().st_size, 0.0)


def _embed(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
    import torch
    from tqdm import tqdm

    out = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc="embedding", unit="batch", file=sys.stderr, mininterval=10.0
    ):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def frozen_lr(
    train: Sequence[Example], test: Sequence[Example], y: npt.ArrayLike, n_single: int
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    from inference_server.ml.train import packaged_encoder

    enc = packaged_encoder()
    tokenizer = AutoTokenizer.from_pretrained(enc.path, local_files_only=True)
    model = AutoModel.from_pretrained(enc.path, local_files_only=True).eval()
    t0 = time.perf_counter()
    x_train = _embed(model, tokenizer, [e.text for e in train])
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=0)
    clf.fit(x_train, [LABELS.index(e.label) for e in train])
    fit_seconds = time.perf_counter() - t0
    probs = clf.predict_proba(_embed(model, tokenizer, [e.text for e in test]))
    single = []
    for e in test[:n_single]:
        t1 = time.perf_counter()
        clf.predict_proba(_embed(model, tokenizer, [e.text]))
        single.append((time.perf_counter() - t1) * 1000.0)
    size = (enc.path / "model.safetensors").stat().st_size + clf.coef_.nbytes + clf.intercept_.nbytes
    return _summary("frozen_lr", probs, y, single, size, fit_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    from inference_server.ml.evaluate import label_indices, load_dataset_split
    from inference_server.runtime.threads import configure_torch_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    root = args.data_dir or default_data_root()
    threads = configure_torch_threads()
    try:
        train, _ = load_dataset_split(root, args.dataset, "train")
        test, ref = load_dataset_split(root, args.dataset, "test")
    except MLInputError as e:
        print(f"baselines: error: {e}", file=sys.stderr)
        return 2
    y = label_indices(LABELS, test)
    results = [vader(test, y, args.single), frozen_lr(train, test, y, args.single)]
    doc = {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dataset": ref.to_dict(),
        "threads": threads,
        "load_average_1m": os.getloadavg()[0],
        "candidates": results,
    }
    write_json_atomic(args.output, doc)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
