"""`sentiment-ml train` on tiny data (the tiny model stands in for the encoder); `make model`'s cache key."""

from __future__ import annotations

import argparse
import json
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

    # The directory is a MODEL_PATH for the shared runtime.
    from inference_server.runtime.model import load_model

    assert load_model(a).labels == ("negative", "positive")


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
