"""`sentiment-ml quantize`: FP32 vs both dynamic INT8 backends (torch, ONNX Runtime) on the tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from inference_server.ml import quantize


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    quantize.add_arguments(parser)
    return quantize.run(parser.parse_args([*argv, "--no-progress", "--threads", "1"]))


def test_report_json_and_markdown(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path,
                                  tiny_dataset: str) -> None:
    out, md = tmp_path / "q.json", tmp_path / "q.md"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--single", "8", "--batch-size", "16", "--output", str(out), "--markdown", str(md)) == 0
    doc = json.loads(out.read_text())
    assert set(doc["variants"]) == {"fp32", "int8_torch", "int8_onnxruntime"}
    for v in doc["variants"].values():
        assert v["size_bytes"] > 0 and v["throughput_per_s"] > 0
        assert v["single_latency_ms"]["count"] == 8
        assert v["batch_latency_ms"]["count"] == 5  # 75 test rows in batches of 16
        assert v["macro_f1"] > 0.8
    sizes = {name: v["size_bytes"] for name, v in doc["variants"].items()}
    assert sizes["int8_torch"] < sizes["fp32"] and sizes["int8_onnxruntime"] < sizes["fp32"]
    assert set(doc["comparison"]) == {"int8_torch", "int8_onnxruntime"}
    for c in doc["comparison"].values():
        assert 0.9 <= c["agreement"] <= 1.0 and 0.9 <= c["agreement_alone"] <= 1.0
    for v in doc["variants"].values():
        assert v["alone"]["macro_f1"] > 0.8 and 0.9 <= v["alone"]["same_label_as_batched"] <= 1.0
    # FP32 does not depend on its batch companions: alone and batched give the same labels and F1.
    fp32 = doc["variants"]["fp32"]
    assert fp32["alone"]["same_label_as_batched"] == 1.0 and fp32["alone"]["macro_f1"] == fp32["macro_f1"]
    assert doc["served_int8_backend"] == "onnxruntime" and doc["environment"]["onnxruntime"]
    assert doc["dataset"]["split"] == "test" and doc["dataset"]["rows"] == doc["rows_scored"] == 75
    text = md.read_text()
    assert "| macro-F1 (batches of 16) |" in text and "| macro-F1 (each sentence alone) |" in text
    assert "INT8 ONNX Runtime vs FP32: agreement" in text and "each sentence alone: agreement" in text


def test_limit_scores_the_first_rows(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path,
                                     tiny_dataset: str) -> None:
    out = tmp_path / "q.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--single", "2", "--limit", "20", "--output", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["rows_scored"] == 20 and doc["dataset"]["rows"] == 75
    assert doc["variants"]["int8_onnxruntime"]["batch_latency_ms"]["count"] == 1


def test_bad_arguments_and_missing_model(tmp_path: Path, tiny_data_root: Path, tiny_dataset: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--model", str(tmp_path), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--single", "0") == 2
    assert _run("--model", str(tmp_path), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--limit", "-1") == 2
    assert _run("--model", str(tmp_path / "none"), "--data-dir", str(tiny_data_root),
                "--dataset", tiny_dataset) == 2
    assert "sentiment-ml quantize: error" in capsys.readouterr().err


def test_a_model_with_nan_logits_is_a_one_line_error(
    tmp_path: Path, nan_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """NaN logits gave argmax 0 everywhere, hence made-up F1 and agreement, then a traceback at the write."""
    out = tmp_path / "q.json"
    assert _run("--model", str(nan_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--single", "1", "--limit", "8", "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("sentiment-ml quantize: error: the model produced NaN/inf")
    assert "Traceback" not in err and not out.exists()
