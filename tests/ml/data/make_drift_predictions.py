"""Writes tests/ml/data/drift_{reference,rt_test,tweets}.jsonl: the default model's predictions (label and
calibrated top-label confidence, one JSON object per line, the format `sentiment-ml drift
--reference-predictions/--current-predictions` reads) on the samples docs/reports/drift.md uses:
reference = 1000 of rotten_tomatoes:validation (seed 0), current = 1000 of rotten_tomatoes:test and
1000 of tweets:test (seed 1). Uses drift.py's own sampling and scoring, as `drift --sample 1000` does.

From the repository root (about a minute on 2 threads):

    .venv/bin/python tests/ml/data/make_drift_predictions.py "$(make -s model | tail -1)" tests/ml/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WINDOWS = {
    "reference": ("rotten_tomatoes:validation", 0),
    "rt_test": ("rotten_tomatoes:test", 1),
    "tweets": ("tweets:test", 1),
}


def main(model_dir: Path, out_dir: Path) -> None:
    import numpy as np
    import torch

    from inference_server.ml import drift
    from inference_server.runtime.calibration import CalibrationParams, probabilities
    from inference_server.runtime.model import load_model, predict_logits

    torch.set_num_threads(2)
    model = load_model(model_dir, version=model_dir.name)
    calibration = CalibrationParams.load(model_dir / "calibration.json")
    for name, (spec, seed) in WINDOWS.items():
        texts = drift._sample(drift.load_texts(spec), 1000, seed)
        # What drift.score_texts computes (batches of 64, calibrated probabilities, top label), per row.
        logits = np.concatenate([predict_logits(model, texts[i : i + 64]) for i in range(0, len(texts), 64)])
        probs = probabilities(logits, calibration)
        rows = [
            {"label": model.labels[int(p.argmax())], "confidence": round(float(p.max()), 6)} for p in probs
        ]
        path = out_dir / f"drift_{name}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        print(f"{name}: {spec} seed {seed}, {len(rows)} rows -> {path}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
