"""`make model`: build (or reuse) the default sentiment model; prints its directory as the last line.

The model lands in ``$SENTIMENT_CACHE/models/minilm-rt-<key>/`` where the key hashes the encoder
version, the dataset's sha256 and the training config, so a change to any of them builds a new model
and an unchanged one is reused. A build happens in a side directory renamed into place only when
complete, under a file lock, so an interrupted or concurrent build never leaves a half model behind.

The directory is a MODEL_PATH and also holds ``calibration.json`` (for CALIBRATION_PARAMS_PATH),
``calibration_report.json``, ``metrics.json`` (test split), ``training_config.json`` and the model
card ``README.md``. ``<dir>.sha256`` next to it holds the artifact hash for SentimentModel specs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Final

from inference_server.ml.common import MLInputError, cache_root, write_json_atomic
from inference_server.ml.datasets import default_data_root, ensure_datasets, load_manifest
from inference_server.ml.train import Encoder, TrainConfig, packaged_encoder
from inference_server.runtime.atomic import write_bytes_atomic

DEFAULT_CONFIG: Final = TrainConfig()
# Fixed rather than taken from the CPU quota: the thread count changes the summation order and so the
# weights, and the cache key (the version name) must name one model wherever it is built (given the
# same torch build and kind of CPU). 2 is what the default was built and measured with
# (docs/model-selection.md): a larger machine leaves cores idle, a 1-core one oversubscribes, and both
# get the weights every report describes.
TRAIN_THREADS: Final = 2
CALIBRATION_FILE: Final = "calibration.json"
REQUIRED_FILES: Final = (
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "metrics.json",
    "training_config.json",
    "README.md",
    CALIBRATION_FILE,
    "calibration_report.json",
)


def models_root() -> Path:
    return cache_root() / "models"


def cache_key(encoder_version: str, dataset_sha256: str, config: TrainConfig) -> str:
    canonical = json.dumps(
        {"encoder": encoder_version, "data": dataset_sha256, "config": config.digest()}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_complete(directory: Path) -> bool:
    return directory.is_dir() and all((directory / f).is_file() for f in REQUIRED_FILES)


def _model_dir(encoder: Encoder, data_root: Path, config: TrainConfig) -> Path:
    manifest = load_manifest(data_root, config.dataset)
    return models_root() / f"minilm-rt-{cache_key(encoder.version, str(manifest['sha256']), config)}"


def default_model_dir() -> Path | None:
    """The default model's directory if it has been built (and is complete), else None."""
    try:
        directory = _model_dir(packaged_encoder(), default_data_root(), DEFAULT_CONFIG)
    except MLInputError:
        return None
    return directory if is_complete(directory) else None


def default_calibration_path() -> Path | None:
    directory = default_model_dir()
    return directory / CALIBRATION_FILE if directory else None


def _log(message: str) -> None:
    print(f"[make model] {message}", file=sys.stderr, flush=True)


def _build(final: Path, encoder: Encoder, data_root: Path, config: TrainConfig) -> None:
    from inference_server.ml.calibrate import calibrate_evaluations, fit_warning
    from inference_server.ml.train import train_model
    from inference_server.runtime.model import load_model

    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    version = final.name
    _log(f"fine-tuning {encoder.name} on {config.dataset} into {partial} (about 13-16 min on 2 cores)")
    trained = train_model(
        data_root=data_root,
        output=partial,
        config=config,
        encoder=encoder,
        version=version,
        threads=TRAIN_THREADS,
        published_as=final,
    )
    doc = trained.test.doc
    _log(f"test macro-F1 {doc['macro_f1']:.4f}, accuracy {doc['accuracy']:.4f}; calibrating")
    # Fitted on the validation logits the training's own evaluation computed: no second pass.
    params, report = calibrate_evaluations(
        load_model(partial, version=version), trained.validation, held_out=trained.test
    )
    params.save(partial / CALIBRATION_FILE)
    report["model"]["path"] = str(final)  # where the model is served from, not the side directory
    write_json_atomic(partial / "calibration_report.json", report)
    _log(
        f"temperature {params.temperature:.3f}: validation ECE {report['fitted_on']['ece_before']:.4f} -> "
        f"{report['fitted_on']['ece_after']:.4f}"
    )
    warning = fit_warning(report)
    if warning:
        _log(f"warning: {warning}")
    _publish(partial, final)


def digest_path(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _write_digest(directory: Path, final: Path) -> None:
    """<final>.sha256 from ``directory``'s content (the hash covers relative paths, not the directory's
    name, so the partial's digest is the final's), written atomically."""
    from inference_server.runtime.artifact import sha256_of_artifact

    write_bytes_atomic(digest_path(final), (sha256_of_artifact(directory) + "\n").encode())


def _publish(partial: Path, final: Path) -> None:
    # The digest first: a kill between the two steps then leaves no final directory (the next run
    # rebuilds and rewrites the digest), never a final one without its digest.
    _write_digest(partial, final)
    partial.rename(final)


def ensure_default_model() -> Path:
    """Build the default model unless a complete one is cached; returns its directory."""
    from filelock import FileLock

    encoder = packaged_encoder()
    data_root = default_data_root()
    ensure_datasets(data_root)
    final = _model_dir(encoder, data_root, DEFAULT_CONFIG)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_complete(final):
            _log(f"reusing {final}")
            if not digest_path(final).is_file():  # e.g. a build from before the digest came first
                _log(f"re-creating the missing {digest_path(final).name}")
                _write_digest(final, final)
            return final
        if final.exists():  # incomplete leftovers of an older layout: rebuild
            shutil.rmtree(final)
        _build(final, encoder, data_root, DEFAULT_CONFIG)
    return final


def main() -> int:
    try:
        directory = ensure_default_model()
    except MLInputError as e:
        print(f"make model: error: {e}", file=sys.stderr)
        return 2
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
