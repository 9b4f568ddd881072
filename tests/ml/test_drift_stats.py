"""drift: statistics, PromQL and its parsing (on answers recorded from a real Prometheus 2.42), the CLI."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_server import contract
from inference_server.contract import JobKind, JobResult
from inference_server.ml import drift
from inference_server.ml.cli import main as cli

# Recorded by running prometheus 2.42 (Debian) against a prometheus_client exporter with the contract's
# metrics: v1 observed in-domain-like predictions, v2 a shifted mix; "nope" has no series at all.
RECORDED = json.loads((Path(__file__).parent / "data" / "prometheus_drift_answers.json").read_text())


def answer(name: str) -> dict[str, Any]:
    response: dict[str, Any] = RECORDED[name]["response"]
    return response


# --- statistics ---------------------------------------------------------------------------------------
def test_bins_follow_prometheus_le_semantics() -> None:
    bins = drift.bin_confidences([0.5, 0.55, 0.6, 0.6000001, 0.99, 1.0, 0.3])
    assert len(bins) == len(contract.CONFIDENCE_BUCKETS) + 1
    assert bins[0] == 2  # 0.3 and 0.5 (le=0.5 is inclusive)
    assert bins[1] == 2  # 0.55 and 0.6
    assert bins[2] == 1  # 0.6000001
    assert bins[contract.CONFIDENCE_BUCKETS.index(0.99)] == 1
    assert bins[contract.CONFIDENCE_BUCKETS.index(1.0)] == 1
    assert bins[-1] == 0  # +Inf bin: nothing is above 1.0


def test_bins_reject_out_of_range_confidence() -> None:
    with pytest.raises(drift.DriftInputError):
        drift.bin_confidences([0.7, 1.2])


def test_psi_is_zero_for_equal_shares_and_grows_with_shift() -> None:
    assert drift.psi([10, 30, 60], [1, 3, 6]) == pytest.approx(0.0)
    small = drift.psi([50, 50], [45, 55])
    large = drift.psi([50, 50], [20, 80])
    assert 0 < small < 0.05 < 0.1 < large
    # An empty bin costs a finite amount instead of infinity.
    assert np.isfinite(drift.psi([50, 50, 0], [40, 40, 20]))


def test_psi_is_the_documented_formula() -> None:
    """PSI = Σ (a − e)·ln(a / e) over the shares, each share floored at 1e-4 (docs/reports/drift.md);
    an order-only check passes for a PSI in another log base, which moves every verdict."""
    by_hand = (0.2 - 0.5) * math.log(0.2 / 0.5) + (0.8 - 0.5) * math.log(0.8 / 0.5)  # 0.3·ln 2.5 + 0.3·ln 1.6
    assert drift.psi([50, 50], [20, 80]) == pytest.approx(by_hand, rel=1e-12)
    assert drift.psi([50, 50], [20, 80]) == pytest.approx(0.415888, abs=1e-6)
    # Counts are turned into shares: any scale of the same counts gives the same PSI.
    assert drift.psi([5, 5], [2, 8]) == pytest.approx(drift.psi([500, 500], [200, 800]), rel=1e-12)
    floored = 2 * (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.2 - 1e-4) * math.log(0.2 / 1e-4)
    assert drift.psi([50, 50, 0], [40, 40, 20]) == pytest.approx(floored, rel=1e-12)


def test_exact_ks_is_the_largest_cdf_gap_and_matches_scipy() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    a = np.round(np.clip(rng.beta(8, 2, 700), 0, 1), 3)  # rounded: ties, as real confidences have
    b = np.round(np.clip(rng.beta(6, 2, 900), 0, 1), 3)
    d, p = drift.ks_samples(a, b)
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    assert d == pytest.approx(float(np.max(np.abs(cdf_a - cdf_b))), abs=1e-12)
    reference = ks_2samp(a, b)
    assert (d, p) == pytest.approx((float(reference.statistic), float(reference.pvalue)), rel=1e-9)
    report = drift.compare_windows(
        drift.window_from_predictions(["positive"] * a.size, a.tolist()),
        drift.window_from_predictions(["positive"] * b.size, b.tolist()),
    )
    assert report.statistics["ks_statistic"] == pytest.approx(d, abs=1e-12)
    assert report.statistics["ks_exact"] == 1.0


def test_psi_needs_observations_on_both_sides() -> None:
    with pytest.raises(ValueError, match="at least one observation"):
        drift.psi([0, 0], [1, 2])
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])


def test_binned_ks_bounds_exact_ks_from_below() -> None:
    rng = np.random.default_rng(0)
    a = np.clip(rng.beta(8, 2, 2000), 0, 1)
    b = np.clip(rng.beta(5, 2, 2000), 0, 1)
    exact_d, _ = drift.ks_samples(a, b)
    binned_d, p = drift.ks_binned(drift.bin_confidences(a), drift.bin_confidences(b))
    assert 0 < binned_d <= exact_d + 1e-12
    assert p < 0.01


def window(pos_share: float, conf_a: float, n: int = 1000, seed: int = 0) -> drift.PredictionWindow:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(n) < pos_share, "positive", "negative").tolist()
    conf = np.clip(0.5 + 0.5 * rng.beta(conf_a, 1.5, n), 0.5, 1.0).tolist()
    return drift.window_from_predictions(labels, conf, source=f"synthetic {pos_share} {conf_a}")


def test_same_population_is_no_drift_and_shifted_population_is_drift() -> None:
    ref = window(0.5, 4.0, seed=0)
    same = drift.compare_windows(ref, window(0.5, 4.0, seed=1))
    shifted = drift.compare_windows(ref, window(0.2, 1.0, seed=2))
    assert same.verdict == "NoDrift" and same.drift_score is not None
    assert same.drift_score < drift.DEFAULT_THRESHOLD
    assert shifted.verdict == "Drift" and shifted.drifted
    assert shifted.drift_score == max(
        shifted.statistics["psi_labels"],
        shifted.statistics["psi_confidence"],
        shifted.statistics["ks_statistic"],
    )
    assert shifted.statistics["ks_exact"] == 1.0


def test_too_few_samples_is_no_data_never_a_pass() -> None:
    report = drift.compare_windows(window(0.5, 4.0), window(0.5, 4.0, n=10), min_samples=50)
    assert report.verdict == "NoData"
    assert report.drift_score is None and not report.drifted
    assert "10" in report.message


def test_job_result_round_trips_through_the_contract() -> None:
    from datetime import UTC, datetime

    ref, cur = window(0.5, 4.0), window(0.2, 1.0, seed=3)
    report = drift.compare_windows(ref, cur)
    result = drift.to_job_result(report, ref, cur, model_version="v7", now=datetime(2026, 1, 2, tzinfo=UTC))
    back = JobResult.from_json(result.to_json())
    assert back.kind is JobKind.DRIFT
    assert back.metrics["drift_score"] == pytest.approx(report.drift_score)
    assert back.detail["verdict"] == "Drift"
    assert back.finished_at == "2026-01-02T00:00:00Z"


# --- PromQL and parsing -------------------------------------------------------------------------------
def test_queries_use_contract_names_and_escape_the_version() -> None:
    q = drift.confidence_query('v"1\\x', "1h")
    assert q == (
        f"sum by (le) (increase({contract.METRIC_CONFIDENCE}_bucket"
        f'{{{contract.LABEL_MODEL_VERSION}="v\\"1\\\\x"}}[1h]))'
    )
    p = drift.predictions_query("v1", "30m", offset="7d")
    assert p == (
        f"sum by ({contract.LABEL_LABEL}) (increase({contract.METRIC_PREDICTIONS_SERIES}"
        f'{{{contract.LABEL_MODEL_VERSION}="v1"}}[30m] offset 7d))'
    )
    # The recorder ran exactly these queries.
    assert RECORDED["confidence_v1"]["query"] == drift.confidence_query("v1", "2m")


@pytest.mark.parametrize(
    "bad", ["1 hour", "", "1h; drop", "h1", "1.5d", "0s", "0h0m", "500us", "1h1d", "1h\n", "١h", "ms"]
)
def test_bad_window_is_refused(bad: str) -> None:
    with pytest.raises(drift.DriftInputError, match=r"duration such as|shorter than"):
        drift.confidence_query("v1", bad)


@pytest.mark.parametrize(
    ("window", "promql"),
    [
        ("7d", "7d"),
        ("1h30m", "1h30m"),
        ("24h", "24h"),
        ("1.5h", "5400000ms"),
        ("90.5s", "90500ms"),
        ("30m1h", "5400000ms"),  # Go takes units in any order, Prometheus largest first
        ("1h1h", "7200000ms"),
    ],
)
def test_go_durations_of_the_crd_become_promql_ranges(window: str, promql: str) -> None:
    # spec.drift.window is a Go duration (the CRD's pattern); PromQL has no fractions
    assert drift.confidence_query("v1", window).endswith(f"[{promql}]))")


def test_recorded_histogram_is_rebuilt_into_bins() -> None:
    bins = drift.bins_from_cumulative(drift.parse_vector(answer("confidence_v1")))
    by_le = {
        float(s["metric"]["le"]): float(s["value"][1]) for s in answer("confidence_v1")["data"]["result"]
    }
    assert sum(bins) == pytest.approx(by_le[float("inf")])
    assert np.cumsum(bins)[3] == pytest.approx(by_le[0.8])
    assert all(b >= 0 for b in bins)
    labels = drift.label_counts_from_vector(drift.parse_vector(answer("predictions_v1")))
    assert set(labels) == {"positive", "negative"}
    assert sum(labels.values()) == pytest.approx(sum(bins), rel=0.02)


def test_recorded_windows_of_a_shifted_version_drift() -> None:
    v1 = drift.window_from_prometheus_answers(answer("confidence_v1"), answer("predictions_v1"), source="v1")
    v2 = drift.window_from_prometheus_answers(answer("confidence_v2"), answer("predictions_v2"), source="v2")
    assert drift.compare_windows(v1, v2).verdict == "Drift"
    assert drift.compare_windows(v1, v1).drift_score == pytest.approx(0.0)
    assert drift.compare_windows(v1, v2).statistics["ks_exact"] == 0.0


def test_no_series_is_an_empty_window_and_no_data() -> None:
    empty = drift.window_from_prometheus_answers(
        answer("confidence_absent"), answer("confidence_absent"), source="nope"
    )
    assert empty.samples == 0 and dict(empty.label_counts) == {}
    v1 = drift.window_from_prometheus_answers(answer("confidence_v1"), answer("predictions_v1"), source="v1")
    assert drift.compare_windows(v1, empty).verdict == "NoData"


def test_prometheus_error_answer_is_reported() -> None:
    with pytest.raises(drift.PrometheusError, match="bad_data"):
        drift.parse_vector(answer("bad_query"))
    with pytest.raises(drift.PrometheusError, match="instant vector"):
        drift.parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})


def test_non_monotonic_cumulative_buckets_are_repaired() -> None:
    # increase() extrapolates every bucket series on its own; cumulative values can dip slightly.
    cumulative = [0, 1, 5, 10, 9.9, 20, 30, 40, 50, 60, 60]
    samples = [
        ({"le": str(b) if b != float("inf") else "+Inf"}, float(v))
        for b, v in zip(drift.BIN_UPPER_BOUNDS, cumulative, strict=True)
    ]
    bins = drift.bins_from_cumulative(samples)
    assert min(bins) >= 0 and sum(bins) == pytest.approx(60)


def test_buckets_that_differ_from_the_contract_are_an_error() -> None:
    samples = [({"le": "0.5"}, 1.0), ({"le": "+Inf"}, 2.0)]
    with pytest.raises(drift.PrometheusError, match="differ from the contract"):
        drift.bins_from_cumulative(samples)


# --- the shell: Prometheus over HTTP, files, exit codes ---------------------------------------------
EMPTY_VECTOR = {"status": "success", "data": {"resultType": "vector", "result": []}}


@contextlib.contextmanager
def serving(answer_for: Callable[[str], Any]) -> Iterator[str]:
    """A loopback 'Prometheus' whose answer (any JSON) is computed from the query; an answer with
    status "error" comes with HTTP 400, as Prometheus sends it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("query", [""])[0]
            body = answer_for(query)
            data = json.dumps(body).encode()
            failed = isinstance(body, dict) and body.get("status") == "error"
            self.send_response(400 if failed else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    """Answers /api/v1/query with the recorded answer for that query (an empty vector otherwise)."""
    by_query = {v["query"]: v["response"] for v in RECORDED.values()}
    with serving(lambda query: by_query.get(query, EMPTY_VECTOR)) as url:
        yield url


def test_window_from_prometheus_over_http(fake_prometheus: str) -> None:
    w = drift.window_from_prometheus(fake_prometheus, "v2", "2m")
    assert w.samples > 100 and w.confidences is None
    assert "v2" in w.source


def test_unreachable_prometheus_is_a_clear_error() -> None:
    with pytest.raises(drift.PrometheusError, match="cannot reach Prometheus"):
        drift.query_prometheus("http://127.0.0.1:9", "up", timeout=2)


def write_predictions(path: Path, w_pos: float, conf_a: float, n: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            label = "positive" if rng.random() < w_pos else "negative"
            conf = float(np.clip(0.5 + 0.5 * rng.beta(conf_a, 1.5), 0.5, 1.0))
            fh.write(json.dumps({"id": i, "label": label, "confidence": conf}) + "\n")
    return path


def test_cli_on_prediction_files_exit_codes_and_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0, seed=0)
    same = write_predictions(tmp_path / "same.jsonl", 0.5, 4.0, seed=1)
    shifted = write_predictions(tmp_path / "shifted.jsonl", 0.15, 1.0, seed=2)
    out = tmp_path / "result.json"
    args = ["drift", "--reference-predictions", str(ref), "--model-version", "v3"]
    assert cli([*args, "--current-predictions", str(same), "--output", str(out)]) == 0
    assert JobResult.from_json(out.read_text()).detail["verdict"] == "NoDrift"
    assert cli([*args, "--current-predictions", str(shifted)]) == 1
    printed = JobResult.from_json(capsys.readouterr().out)
    assert printed.detail["drifted"] is True and printed.model_version == "v3"
    assert cli([*args, "--current-predictions", str(shifted), "--exit-zero"]) == 0
    assert cli([*args, "--current-predictions", str(shifted), "--threshold", "5"]) == 0


def test_cli_current_window_from_prometheus(tmp_path: Path, fake_prometheus: str) -> None:
    out = tmp_path / "r.json"
    rc = cli(
        [
            "drift",
            "--prometheus-url",
            fake_prometheus,
            "--reference-offset",
            "1d",
            "--window",
            "2m",
            "--model-version",
            "v1",
            "--output",
            str(out),
        ]
    )
    # The recorder has no answer for the offset query: the reference window is empty → NoData (exit 3).
    assert rc == 3
    assert JobResult.from_json(out.read_text()).detail["verdict"] == "NoData"


def test_cli_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "positive"}\n')
    good = write_predictions(tmp_path / "good.jsonl", 0.5, 4.0)
    assert cli(["drift", "--reference-predictions", str(bad), "--current-predictions", str(good)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert cli(["drift", "--reference-offset", "1d", "--current-predictions", str(good)]) == 2
    assert (
        cli(
            [
                "drift",
                "--reference-dataset",
                "nosplit",
                "--current-predictions",
                str(good),
                "--model",
                str(tmp_path),
            ]
        )
        == 2
    )


def test_cli_scores_two_text_files_with_a_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    pos = ["great film", "i love it", "excellent acting", "wonderful story", "so good"]
    neg = ["awful film", "i hate it", "terrible acting", "boring story", "so bad"]
    rng = np.random.default_rng(0)

    def texts(path: Path, share_pos: float) -> Path:
        rows = [rng.choice(pos) if rng.random() < share_pos else rng.choice(neg) for _ in range(120)]
        path.write_text("".join(json.dumps({"text": str(t)}) + "\n" for t in rows))
        return path

    ref, same, other = (
        texts(tmp_path / "a.jsonl", 0.5),
        texts(tmp_path / "b.jsonl", 0.5),
        texts(tmp_path / "c.jsonl", 0.05),
    )
    base = ["drift", "--model", str(tiny_model_dir), "--reference-dataset", str(ref), "--min-samples", "100"]
    assert cli([*base, "--current-dataset", str(same), "--output", str(tmp_path / "same.json")]) == 0
    assert cli([*base, "--current-dataset", str(other), "--output", str(tmp_path / "other.json")]) == 1
    other_result = JobResult.from_json((tmp_path / "other.json").read_text())
    assert other_result.metrics["psi_labels"] > drift.DEFAULT_THRESHOLD
    assert other_result.detail["current"]["label_shares"]["negative"] > 0.8


# --- audit regressions: errors are never exit 1 (drift), DRIFT_THRESHOLD, the documented figures ------
def test_histogram_without_label_counts_is_no_data_not_drift(tmp_path: Path) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    # The confidence histogram has data, the predictions counter has none (a scrape gap or reset).
    with serving(lambda q: answer("confidence_v1") if "bucket" in q else EMPTY_VECTOR) as url:
        out = tmp_path / "r.json"
        argv = [
            "drift",
            "--reference-predictions",
            str(ref),
            "--prometheus-url",
            url,
            "--window",
            "2m",
            "--model-version",
            "v1",
            "--output",
            str(out),
        ]
        assert cli(argv) == 3
    result = JobResult.from_json(out.read_text())
    assert result.detail["verdict"] == "NoData" and "predictions counter" in result.message
    empty_labels = drift.PredictionWindow(label_counts={}, confidence_bins=window(0.5, 4.0).confidence_bins)
    assert drift.compare_windows(window(0.5, 4.0), empty_labels).verdict == "NoData"


def test_empty_window_with_min_samples_0_is_no_data(tmp_path: Path) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = [
        "drift",
        "--reference-predictions",
        str(ref),
        "--current-predictions",
        str(empty),
        "--min-samples",
        "0",
        "--output",
        str(tmp_path / "r.json"),
    ]
    assert cli(argv) == 3


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ([1, 2], "got JSON list"),
        ("up", "got JSON str"),
        ({"status": "success", "data": []}, "resultType"),
        ({"status": "success", "data": {"resultType": "vector", "result": [[1]]}}, "malformed sample"),
    ],
)
def test_prometheus_replies_of_the_wrong_shape_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reply: Any, message: str
) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    with serving(lambda _q: reply) as url:
        argv = [
            "drift",
            "--reference-predictions",
            str(ref),
            "--prometheus-url",
            url,
            "--model-version",
            "v1",
        ]
        assert cli(argv) == 2
    assert message in capsys.readouterr().err


def test_an_invalid_prometheus_url_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    argv = [
        "drift",
        "--reference-predictions",
        str(ref),
        "--prometheus-url",
        "http://[::1",
        "--model-version",
        "v1",
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "not a valid URL" in err and err.count("\n") == 1


def test_an_unexpected_error_is_not_reported_as_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)

    def broken(*args: Any, **kwargs: Any) -> drift.DriftReport:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(drift, "compare_windows", broken)
    assert cli(["drift", "--reference-predictions", str(ref), "--current-predictions", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "ZeroDivisionError: a bug" in err and "no drift verdict" in err  # the traceback is kept


def test_a_bad_drift_threshold_env_breaks_only_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(contract.Env.DRIFT_THRESHOLD, "abc")
    with pytest.raises(SystemExit) as help_exit:  # other subcommands build the same parser
        cli(["datasets", "--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    assert cli(["drift", "--reference-predictions", str(ref), "--current-predictions", str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sentiment-ml drift: error: DRIFT_THRESHOLD='abc'") and err.count("\n") == 1
    for bad in ("nan", "inf", "-1", "101"):  # 101: above the CRD's and the server's bound too
        monkeypatch.setenv(contract.Env.DRIFT_THRESHOLD, bad)
        assert cli(["drift", "--reference-predictions", str(ref), "--current-predictions", str(ref)]) == 2
    monkeypatch.setenv(contract.Env.DRIFT_THRESHOLD, "0.5")
    out = tmp_path / "r.json"
    argv = [
        "drift",
        "--reference-predictions",
        str(ref),
        "--current-predictions",
        str(ref),
        "--output",
        str(out),
    ]
    assert cli(argv) == 0
    assert JobResult.from_json(out.read_text()).metrics["threshold"] == 0.5
    assert cli([*argv, "--threshold", "0.2"]) == 0  # the flag wins over the environment
    assert JobResult.from_json(out.read_text()).metrics["threshold"] == 0.2


# --- audit regressions (session 7) ----------------------------------------------------------------------
def _prometheus_drift(url: str, *extra: str) -> list[str]:
    return ["drift", "--prometheus-url", url, "--window", "2m", *extra]


def test_a_version_prometheus_has_no_series_for_is_an_error_not_a_hold(
    tmp_path: Path, fake_prometheus: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A misspelt version (or none: it defaulted to "unknown") held forever as "too few predictions".
    ref = str(write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0))
    assert (
        cli(_prometheus_drift(fake_prometheus, "--reference-predictions", ref, "--model-version", "nope"))
        == 2
    )
    assert "no sentiment_prediction_confidence series for model_version='nope'" in capsys.readouterr().err
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    monkeypatch.delenv("MODEL_PATH", raising=False)
    assert cli(_prometheus_drift(fake_prometheus, "--reference-predictions", ref)) == 2
    assert "needs the serving version" in capsys.readouterr().err
    # Series that exist but saw no traffic in the window: a hold, as before.
    with serving(
        lambda q: (
            {**EMPTY_VECTOR, "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "3"]}]}}
            if q.startswith("count(")
            else EMPTY_VECTOR
        )
    ) as url:
        assert cli(_prometheus_drift(url, "--reference-predictions", ref, "--model-version", "v1")) == 3


def _with_value(name: str, le: str, value: str) -> dict[str, Any]:
    reply = json.loads(json.dumps(answer(name)))
    for sample in reply["data"]["result"]:
        if sample["metric"].get("le") == le:
            sample["value"][1] = value
    return reply


@pytest.mark.parametrize(
    ("confidence", "message"),
    [
        (_with_value("confidence_v1", "0.99", "+Inf"), "infinite value"),
        (
            {**answer("confidence_v1"), "warnings": ["partial response: 1 of 3 stores unavailable"]},
            "warnings",
        ),
    ],
    ids=["infinite-bucket", "partial-answer"],
)
def test_infinite_or_partial_prometheus_answers_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], confidence: dict[str, Any], message: str
) -> None:
    # An infinite bucket gave NoDrift (exit 0) with NaN statistics; a partial answer was judged as whole.
    ref = str(write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0))
    with serving(lambda q: confidence if "bucket" in q else answer("predictions_v1")) as url:
        assert cli(_prometheus_drift(url, "--reference-predictions", ref, "--model-version", "v1")) == 2
    assert message in capsys.readouterr().err


def test_one_bucket_bound_spelled_two_ways_is_summed() -> None:
    samples = drift.parse_vector(answer("confidence_v1"))
    whole = drift.bins_from_cumulative(samples)
    split = []
    for labels, value in samples:
        if labels["le"] == "1.0":
            split += [({"le": "1.0"}, value / 2), ({"le": "1"}, value / 2)]
        else:
            split.append((labels, value))
    assert drift.bins_from_cumulative(split) == pytest.approx(whole)


def test_overlapping_windows_and_windows_without_a_common_label_are_exit_2(
    tmp_path: Path, fake_prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _prometheus_drift(fake_prometheus, "--reference-offset", "1m", "--model-version", "v1")
    assert cli(argv) == 2
    assert "would overlap" in capsys.readouterr().err
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    upper = tmp_path / "upper.jsonl"
    upper.write_text(ref.read_text().replace('"positive"', '"POSITIVE"').replace('"negative"', '"NEGATIVE"'))
    assert cli(["drift", "--reference-predictions", str(ref), "--current-predictions", str(upper)]) == 2
    assert "share no predicted label" in capsys.readouterr().err


def test_a_confidence_outside_0_1_in_a_predictions_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_predictions(tmp_path / "ref.jsonl", 0.5, 4.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "positive", "confidence": 0.9}\n{"label": "positive", "confidence": NaN}\n')
    assert cli(["drift", "--reference-predictions", str(ref), "--current-predictions", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
