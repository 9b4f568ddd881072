"""`sentiment-ml compare`: the pre-deploy gate."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from inference_server.ml import compare
from inference_server.ml.common import MLInputError


def _metrics(f1: float, sha: str = "a" * 64, version: str = "v") -> dict[str, Any]:
    return {"schema_version": 1, "macro_f1": f1, "labels": ["negative", "positive"],
            "model": {"version": version},
            "dataset": {"name": "rotten_tomatoes", "split": "test", "sha256": sha}}


def _run(tmp_path: Path, candidate: dict[str, Any], baseline: dict[str, Any], *extra: str) -> int:
    (tmp_path / "c.json").write_text(json.dumps(candidate))
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    args = parser.parse_args(["--candidate", str(tmp_path / "c.json"), "--baseline", str(tmp_path / "b.json"),
                              "--output", str(tmp_path / "decision.json"), *extra])
    return compare.run(args)


def test_small_drop_passes_and_large_drop_fails() -> None:
    assert compare.gate(_metrics(0.835), _metrics(0.85)).passed  # 1.5 points
    assert compare.gate(_metrics(0.90), _metrics(0.85)).passed  # improvement
    assert compare.gate(_metrics(0.83), _metrics(0.85)).passed  # exactly 2 points: allowed
    decision = compare.gate(_metrics(0.82), _metrics(0.85))
    assert not decision.passed
    assert decision.reasons == [
        "macro-F1 dropped 3.00 points (0.8500 -> 0.8200), more than the allowed 2.00"
    ]


def test_threshold_is_configurable() -> None:
    assert not compare.gate(_metrics(0.84), _metrics(0.85), max_f1_drop=0.005).passed
    assert compare.gate(_metrics(0.80), _metrics(0.85), max_f1_drop=0.06).passed
    with pytest.raises(ValueError):
        compare.gate(_metrics(0.8), _metrics(0.8), max_f1_drop=-1)


def test_different_dataset_or_labels_fail_even_with_better_f1() -> None:
    decision = compare.gate(_metrics(0.95, sha="b" * 64), _metrics(0.85))
    assert not decision.passed
    assert any("different data" in r for r in decision.reasons)
    other = _metrics(0.95)
    other["labels"] = ["negative", "neutral", "positive"]
    assert any("label sets differ" in r for r in compare.gate(other, _metrics(0.85)).reasons)
    no_sha = _metrics(0.95)
    del no_sha["dataset"]["sha256"]
    assert not compare.gate(no_sha, _metrics(0.85)).passed


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, _metrics(0.84, version="cand"), _metrics(0.85, version="prod")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "pass" and out["candidate_version"] == "cand"
    assert json.loads((tmp_path / "decision.json").read_text()) == out

    assert _run(tmp_path, _metrics(0.80), _metrics(0.85)) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] is False
    assert "gate FAIL" in captured.err and "5.00 points" in captured.err

    assert _run(tmp_path, _metrics(0.84), _metrics(0.85), "--max-f1-drop", "0.001") == 1


def test_cli_unreadable_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = copy.deepcopy(_metrics(0.8))
    bad["schema_version"] = 99
    assert _run(tmp_path, bad, _metrics(0.85)) == 2
    assert "schema_version" in capsys.readouterr().err
    missing = _metrics(0.8)
    del missing["macro_f1"]
    assert _run(tmp_path, missing, _metrics(0.85)) == 2
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    nope = str(tmp_path / "nope.json")
    args = parser.parse_args(["--candidate", nope, "--baseline", nope])
    assert compare.run(args) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("bad_f1", [float("nan"), float("inf"), "0.9", True, 1.5, -0.1, None])
def test_f1_that_is_not_a_finite_fraction_is_exit_2_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_f1: Any
) -> None:
    # NaN never compares greater than the allowed drop: before this check a NaN candidate passed.
    assert _run(tmp_path, _metrics(bad_f1), _metrics(0.85)) == 2
    err = capsys.readouterr().err
    assert "c.json" in err and "macro_f1" in err and err.count("\n") == 1
    assert not (tmp_path / "decision.json").exists()
    assert _run(tmp_path, _metrics(0.85), _metrics(bad_f1)) == 2
    assert "b.json" in capsys.readouterr().err
    with pytest.raises(MLInputError, match="macro_f1"):  # the pure gate, as the registry calls it
        compare.gate(_metrics(bad_f1), _metrics(0.85))


@pytest.mark.parametrize("drop", ["nan", "inf", "-0.01", "1.5", "two"])
def test_max_f1_drop_must_be_a_finite_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _run(tmp_path, _metrics(0.5), _metrics(0.85), "--max-f1-drop", drop)
    assert exit_.value.code == 2 and "--max-f1-drop" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_f1_drop"):
        compare.gate(_metrics(0.5), _metrics(0.85), max_f1_drop=float(drop) if drop != "two" else 2.0)


def test_metrics_of_the_wrong_shape_or_a_directory_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = _metrics(0.9)
    listed["dataset"] = ["x"]
    assert _run(tmp_path, listed, _metrics(0.85)) == 2
    assert "c.json" in (err := capsys.readouterr().err) and "dataset" in err
    bad_labels = _metrics(0.9)
    bad_labels["labels"] = "negative,positive"
    assert _run(tmp_path, bad_labels, _metrics(0.85)) == 2
    assert "labels" in capsys.readouterr().err

    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    (tmp_path / "b.json").write_text(json.dumps(_metrics(0.85)))
    a_dir = tmp_path / "adir"
    a_dir.mkdir()
    args = parser.parse_args(["--candidate", str(a_dir), "--baseline", str(tmp_path / "b.json")])
    assert compare.run(args) == 2
    assert "is a directory" in capsys.readouterr().err
    args = parser.parse_args(["--candidate", str(tmp_path / "b.json"), "--baseline", str(tmp_path / "b.json"),
                              "--output", str(a_dir)])
    assert compare.run(args) == 2
    assert "--output" in capsys.readouterr().err


def test_a_model_field_that_is_not_an_object_and_an_output_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `"model": "v2"` crashed with an AttributeError traceback; an --output under a regular file failed
    # only after the verdict was printed ("File exists").
    named_oddly = {**_metrics(0.9), "model": "v2"}
    assert _run(tmp_path, named_oddly, _metrics(0.89)) == 0
    assert json.loads((tmp_path / "decision.json").read_text())["candidate_version"] is None
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    args = parser.parse_args(["--candidate", str(tmp_path / "b.json"), "--baseline", str(tmp_path / "b.json"),
                              "--output", str(tmp_path / "afile" / "sub" / "decision.json")])
    assert compare.run(args) == 2
    out = capsys.readouterr()
    assert out.out == "" and "afile is a file, not a directory" in out.err
