"""Failures of every `sentiment-ml` command are one line and exit 2, never a traceback (shared code)."""

from __future__ import annotations

import json
import math
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


def test_a_programming_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the environment's failures are turned into messages; a bug must stay visible.
    monkeypatch.setattr(compare, "run", _raise(KeyError("macro_f1")))
    with pytest.raises(KeyError):
        cli(["compare", "--candidate", "c.json", "--baseline", "b.json"])


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
