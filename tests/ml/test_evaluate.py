"""`sentiment-ml evaluate`: metrics.json from a model and a hash-checked split."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from inference_server.contract import JobKind, JobResult
from inference_server.ml import evaluate
from inference_server.ml.datasets import Example, Source, write_dataset


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args([*argv, "--no-progress"]))


def test_metrics_json(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str) -> None:
    out, job = tmp_path / "metrics.json", tmp_path / "job.json"
    assert _run("--model", str(tiny_model_dir), "--version", "v1", "--data-dir", str(tiny_data_root),
                "--dataset", tiny_dataset, "--output", str(out), "--job-result", str(job),
                "--batch-size", "16") == 0
    doc = evaluate.load_metrics(out)
    manifest = json.loads((tiny_data_root / tiny_dataset / "manifest.json").read_text())
    assert doc["dataset"] == {"name": tiny_dataset, "split": "test", "rows": 75,
                              "sha256": manifest["splits"]["test"]["sha256"],
                              "dataset_sha256": manifest["sha256"]}
    assert doc["model"]["version"] == "v1" and doc["model"]["calibrated"] is False
    assert doc["labels"] == ["negative", "positive"]
    assert doc["macro_f1"] > 0.9  # the tiny model knows these words
    assert sum(map(sum, doc["confusion_matrix"])) == 75
    assert set(doc["per_class"]) == {"negative", "positive"}
    assert doc["macro_f1_classes"] == ["negative", "positive"]
    assert 0 <= doc["ece"] <= 1 and doc["nll"] > 0
    assert doc["latency_ms"]["count"] == 5 and doc["latency_ms"]["p95"] >= doc["latency_ms"]["p50"] > 0
    result = JobResult.from_json(job.read_text())
    assert result.kind == JobKind.EVALUATION and result.metrics["f1"] == doc["macro_f1"]


def test_calibrated_evaluation_reports_both(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path,
                                            tiny_dataset: str) -> None:
    params = tmp_path / "cal.json"
    params.write_text(json.dumps({"temperature": 3.0}))
    out = tmp_path / "m.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--calibration", str(params), "--output", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["model"]["calibrated"] is True and doc["model"]["temperature"] == 3.0
    assert doc["nll"] != doc["uncalibrated"]["nll"]


def test_failures_are_one_line_and_exit_2(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path,
                                          tiny_dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data-dir", str(tiny_data_root), "--dataset", tiny_dataset]
    split = tiny_data_root / tiny_dataset / "test.jsonl"
    original = split.read_text()
    split.write_text(original.replace("positive", "negative", 1))  # tamper
    assert _run("--model", str(tiny_model_dir), *common) == 2
    assert "sha256" in capsys.readouterr().err
    # Each split is checked when it is read: an intact one still evaluates (as test_datasets loads it).
    assert _run("--model", str(tiny_model_dir), *common, "--split", "validation") == 0
    split.write_text(original)
    wrong_sha = ["--model-sha256", "0" * 64]
    assert _run("--model", str(tiny_model_dir), *common, "--split", "validation", *wrong_sha) == 2
    assert "expected" in capsys.readouterr().err
    assert _run("--model", str(tmp_path / "nope"), *common, "--split", "validation") == 2
    assert _run("--model", str(tiny_model_dir), *common, "--split", "validation", "--batch-size", "0") == 2

    ex = [Example("1", "great", "joyful"), Example("2", "awful", "negative")]
    write_dataset(tmp_path / "d", "odd", {"test": ex}, Source("t", "0", "f"))
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--dataset", "odd") == 2
    assert "joyful" in capsys.readouterr().err


def test_a_manifest_whose_dataset_hash_differs_is_refused(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The dataset sha256 goes into metrics.json and the registry: it was copied without a check.
    path = tiny_data_root / tiny_dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    out = tmp_path / "m.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "000000000000" in err and not out.exists()


def test_model_flags_default_to_the_server_image_environment(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from inference_server.contract import Env
    from inference_server.ml import calibrate, quantize

    monkeypatch.delenv(Env.CALIBRATION_PARAMS_PATH, raising=False)
    monkeypatch.delenv(Env.MODEL_PATH, raising=False)
    monkeypatch.delenv(Env.MODEL_VERSION, raising=False)
    common = ("--data-dir", str(tiny_data_root), "--dataset", tiny_dataset)
    assert _run(*common) == 2
    assert "give --model or set MODEL_PATH" in capsys.readouterr().err

    monkeypatch.setenv(Env.MODEL_PATH, str(tiny_model_dir))
    monkeypatch.setenv(Env.MODEL_VERSION, "served-v3")
    out = tmp_path / "m.json"
    assert _run(*common, "--output", str(out)) == 0  # an evaluation Job in the server image: no flags
    assert json.loads(out.read_text())["model"]["version"] == "served-v3"
    assert _run(*common, "--version", "v-flag", "--output", str(out)) == 0  # the older flag still wins
    assert json.loads(out.read_text())["model"]["version"] == "v-flag"
    for module in (calibrate, quantize):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        args = parser.parse_args(["--output", str(out)])
        assert (args.model, args.model_version) == (tiny_model_dir, "served-v3"), module.__name__


def test_nll_is_the_same_quantity_calibrated_or_not() -> None:
    """metrics.json's nll and uncalibrated.nll are both the logits' NLL (at T and at 1): with T = 1 they
    are equal even for a confidently wrong row, whose probability a floor would otherwise cap."""
    doc = evaluate.metrics_document(
        logits=np.array([[30.0, 0.0], [0.0, 3.0]], dtype=np.float32),
        y_true=np.array([1, 1]),
        labels=("negative", "positive"),
        dataset=evaluate.DatasetRef(name="d", split="test", sha256="0" * 64, dataset_sha256="1" * 64, rows=2),
        model={"version": "v"},
        latencies_ms=[1.0],
        batch_size=2,
        temperature=1.0,
    )
    exact = (30.0 + math.log1p(math.exp(-30.0)) + math.log1p(math.exp(-3.0))) / 2
    assert doc["nll"] == pytest.approx(exact) and doc["uncalibrated"]["nll"] == pytest.approx(exact)


@pytest.mark.parametrize("to_file", [True, False])
def test_nan_logits_are_a_one_line_input_error(
    tmp_path: Path, nan_model_dir: Path, tiny_data_root: Path, tiny_dataset: str, to_file: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A diverged model's NaN logits gave argmax 0 everywhere: a plausible macro-F1 printed as a success
    next to NaN ece/nll (and a traceback with --output). Now nothing is written and the exit is 2."""
    out = tmp_path / "m.json"
    argv = ["--model", str(nan_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset]
    assert _run(*argv, *(["--output", str(out)] if to_file else [])) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("sentiment-ml evaluate: error: the model produced NaN/inf logits for 75 of 75")
    assert "Traceback" not in captured.err


def test_an_evaluation_set_given_as_one_file_with_its_declared_sha256(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_root: Path,
    tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A SentimentModel declares its evaluation set as one JSONL file and its sha256; evaluate took only a
    # built dataset's split, so the operator's evaluation Job had nothing to pass it.
    import hashlib

    split = tiny_data_root / tiny_dataset / "test.jsonl"
    held = tmp_path / "held-out.jsonl"
    held.write_bytes(split.read_bytes())
    sha = hashlib.sha256(held.read_bytes()).hexdigest()
    out = tmp_path / "metrics.json"
    base = ["--model", str(tiny_model_dir), "--dataset-file", str(held)]
    assert (
        _run(*base, "--dataset-sha256", sha.upper(), "--dataset-name", "rt-held-out", "--output", str(out))
        == 0
    )
    doc = evaluate.load_metrics(out)
    assert doc["dataset"] == {
        "name": "rt-held-out",
        "split": "file",
        "rows": 75,
        "sha256": sha,
        "dataset_sha256": sha,
    }
    assert doc["macro_f1"] > 0.9
    capsys.readouterr()
    assert _run(*base, "--dataset-sha256", "0" * 64) == 2
    assert "is not the declared evaluation set" in capsys.readouterr().err
    assert _run("--model", str(tiny_model_dir), "--dataset-sha256", sha) == 2
    assert "go with --dataset-file" in capsys.readouterr().err
    assert _run("--model", str(tiny_model_dir), "--dataset-file", str(tmp_path / "missing.jsonl")) == 2
    assert "not found" in capsys.readouterr().err
