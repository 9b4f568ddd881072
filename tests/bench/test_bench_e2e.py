"""A tiny end-to-end run of the benchmark harness: the tiny model, a tiny dataset, `--quick` (a handful of
requests per cell), all three variants over real HTTP. Asserts the report's structure and that every
request was answered correctly — never a timing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from inference_server.bench import server_bench
from inference_server.bench.report import SECTIONS
from inference_server.ml.datasets import Example, Source, split_examples, write_dataset
from inference_server.tiny_model import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

DATASET = "bench_reviews"


def _dataset(root: Path) -> Path:
    """Review-like sentences of 5–40 words over the tiny model's vocabulary, both labels."""
    rng = random.Random(0)
    examples = []
    for i in range(160):
        label = ("negative", "positive")[i % 2]
        pool = POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS
        words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(4, 38))] + [rng.choice(pool)]
        examples.append(Example(f"b-{i:04d}", " ".join(words) + f" {i}", label))
    splits = split_examples(examples, seed=0, fractions=(0.25, 0.25, 0.5))
    write_dataset(
        root, DATASET, splits, Source("tests", "0", "test_bench_e2e.py"), seed=0, fractions=(0.25, 0.25, 0.5)
    )
    return root


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert server_bench.main(["--variants", "naive,gpu"]) == server_bench.EXIT_USAGE
    assert "--variants" in capsys.readouterr().err
    assert server_bench.main(["--model", str(tmp_path / "missing")]) == server_bench.EXIT_USAGE
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_writes_a_complete_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_root = _dataset(tmp_path / "datasets")
    report = tmp_path / "reports" / "server-benchmark.md"
    rc = server_bench.main(
        [
            "--quick",
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(data_root),
            "--dataset",
            DATASET,
            "--report",
            str(report),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == server_bench.EXIT_OK
    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "QUICK RUN" in text
    raw = json.loads(report.with_suffix(".json").read_text())
    cells = {(r["variant"], r["length"], r["concurrency"]) for r in raw["closed"]}
    assert cells == {
        (v, n, c) for v in ("naive", "fp32", "int8") for n in ("short", "long") for c in (1, 8, 32, 64)
    }
    assert {(r["variant"], r["length"]) for r in raw["open"]} == {
        (v, n) for v in ("naive", "fp32", "int8") for n in ("short", "long")
    }
    for run in raw["closed"] + raw["open"]:
        assert run["summary"]["errors"] == 0, run
        assert run["summary"]["requests"] > 0, run
    for run in raw["closed"]:
        # every server answered what the same model predicts in-process for the same text
        assert run["agreement"] >= 0.95, run
        # sentiment-server's batch sizes come from its /metrics; the naive app has none
        assert (run["mean_batch"] is None) == (run["variant"] == "naive"), run
    assert {(c["precision"], c["length"]) for c in raw["ceilings"]} == {
        (p, n) for p in ("fp32", "int8") for n in ("short", "long")
    }
    assert raw["quality"]["rows"] > 0
    # The paired round ran every server and charged each event loop its CPU per request.
    (paired,) = [r for r in raw["paired"] if r["length"] == "short"]
    assert set(paired["server_rps"]) == set(paired["loop_cpu_ms"]) == {"naive", "fp32", "int8"}
    assert all(ms > 0 for ms in paired["loop_cpu_ms"].values()), paired
    # The INT8 ceiling and (d) ran the backend the server serves by default.
    assert raw["meta"]["int8_backend"] == "onnxruntime"
    assert "INT8 (ONNX Runtime" in text
    # A quick run draws no verdicts (its figures are a handful of requests).
    assert "**pass**" not in text and "**MISS**" not in text and "not measured (quick run" in text
    for run in raw["closed"] + raw["open"]:
        assert run["warmup_errors"] == 0, run
    for run in raw["closed"]:
        if run["variant"] != "naive":
            # the server's own request-latency histogram (/infer, 2xx) over the cell
            assert run["request_mean_ms"] is not None and run["request_mean_ms"] > 0, run
        # served answers on the labelled short inputs, for their macro-F1
        assert (run["answers"] is not None) == (run["length"] == "short"), run
        assert "confusion" not in run, run  # derivable from answers: no longer written
    assert "| (c) sentiment-server fp32 | 0." in text.split("## Accuracy")[1]
    # Every server ran with an explicit environment: rate limits off, one OpenMP policy for all.
    settings = raw["meta"]["server_settings"]
    assert settings["fp32"]["RATE_LIMIT_INFER_PER_SECOND"] == "0.0", settings
    assert {s["OMP_WAIT_POLICY"] for s in settings.values()} == {"PASSIVE"}
    assert raw["meta"]["other_cpu"]["seconds"] > 0
    assert all(c["single_n"] and c["single_gap_ms"] for c in raw["ceilings"])
    assert set(paired["ceiling_config"]) == {"fp32", "int8"} and paired["errors"] == {}
