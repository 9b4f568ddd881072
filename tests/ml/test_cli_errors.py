"""Failures of every `sentiment-ml` command are one line and exit 2, never a traceback (shared code)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from inference_server.ml import compare
from inference_server.ml.cli import main as cli
from inference_server.ml.common import write_json_atomic


def _raise(exc: BaseException) -> Any:
    def run(_args: Any) -> int:
        raise exc

    return run


def test_an_unexpected_os_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        compare, "run", _raise(PermissionError(13, "Permission denied", "/srv/decision.json"))
    )
    assert cli(["compare", "--candidate", "c.json", "--baseline", "b.json"]) == 2
    assert capsys.readouterr().err == "sentiment-ml compare: error: /srv/decision.json: Permission denied\n"


def test_a_programming_error_keeps_its_traceback_and_is_never_a_verdict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bug stays visible (its traceback), but exits 2, "nothing decided": left to the interpreter it
    # exited 1, which a Job reads as "gate failed".
    monkeypatch.setattr(compare, "run", _raise(KeyError("macro_f1")))
    assert cli(["compare", "--candidate", "c.json", "--baseline", "b.json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'macro_f1'" in err
    assert err.rstrip().endswith("internal error (traceback above); no verdict was reached")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_outputs_never_hold_nan_or_infinity(tmp_path: Path, value: float) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomic(path, {"macro_f1": value})
    assert not path.exists() and list(tmp_path.iterdir()) == []
    write_json_atomic(path, {"macro_f1": 0.5})
    assert json.loads(path.read_text()) == {"macro_f1": 0.5}


def test_calibrate_output_that_is_a_directory_is_refused_before_the_fit(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_root: Path,
    tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = [
        "calibrate",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(tiny_data_root),
        "--dataset",
        tiny_dataset,
        "--no-progress",
    ]
    assert cli([*common, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sentiment-ml calibrate: error: --output {tmp_path} is a directory")
    assert err.count("\n") == 1
    assert cli([*common, "--output", str(tmp_path / "cal.json"), "--report", str(tmp_path)]) == 2
    assert "--report" in capsys.readouterr().err and not (tmp_path / "cal.json").exists()
    assert cli([*common, "--output", str(tmp_path / "cal.json")]) == 0
    assert json.loads((tmp_path / "cal.json").read_text())["temperature"] > 0


def _model_commands(tmp_path: Path, model: Path, data_root: Path, dataset: str) -> dict[str, list[str]]:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": i, "text": "great film"}) + "\n" for i in range(3)))
    on_data = ["--model", str(model), "--data-dir", str(data_root), "--dataset", dataset]
    return {
        "evaluate": ["evaluate", *on_data, "--split", "test"],
        "calibrate": ["calibrate", *on_data, "--output", str(tmp_path / "cal.json")],
        "quantize": ["quantize", *on_data, "--output", str(tmp_path / "q.json")],
        "bias-audit": ["bias-audit", "--model", str(model)],
        "explain": [
            "explain",
            "--model",
            str(model),
            "--text",
            "great film",
            "--output",
            str(tmp_path / "x.html"),
        ],
        "drift": [
            "drift",
            "--model",
            str(model),
            "--reference-dataset",
            str(texts),
            "--current-dataset",
            str(texts),
        ],
        "reprocess": [
            "reprocess",
            "--model",
            str(model),
            "--input",
            str(texts),
            "--output-dir",
            str(tmp_path / "o"),
        ],
    }


@pytest.mark.parametrize(
    "command", ["evaluate", "calibrate", "quantize", "bias-audit", "explain", "drift", "reprocess"]
)
def test_every_job_refuses_a_model_that_is_not_the_declared_artifact(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_root: Path,
    tiny_dataset: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    # Only evaluate took --model-sha256, and no job read $MODEL_SHA256: a Job in the server image scored
    # whatever sat at MODEL_PATH, even where the pods would have refused to serve it.
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))  # the image's model, and the pod's hash for it
    monkeypatch.setenv("MODEL_SHA256", "0" * 64)
    argv = _model_commands(tmp_path, tiny_model_dir, tiny_data_root, tiny_dataset)[command]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "Traceback" not in err and err.strip().count("\n") <= 1


def test_a_job_given_the_right_artifact_sha256_runs(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_server.runtime.artifact import sha256_of_artifact

    # Spelt as the server's settings accept it; and $MODEL_SHA256 belongs to $MODEL_PATH only: a candidate
    # evaluated in the same image is not held to the served model's hash.
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("MODEL_SHA256", "sha256:" + sha256_of_artifact(tiny_model_dir).upper())
    explain = ["explain", "--text", "great", "--output", str(tmp_path / "x.html")]
    assert cli([*explain, "--model", str(tiny_model_dir)]) == 0
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, candidate)
    (candidate / "README.md").write_text("another artifact")
    assert cli([*explain, "--model", str(candidate)]) == 0
    assert cli([*explain, "--model", str(candidate), "--model-sha256", "0" * 64]) == 2
