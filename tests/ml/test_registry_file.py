"""registry: schema-validated file, gated promotion, atomic and lock-protected writes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from inference_server.ml import registry as R
from inference_server.ml.cli import main as cli

SPLIT_SHA = "a" * 64
DATASET_SHA = "b" * 64
NOW = "2026-11-28T15:00:00Z"


def metrics(f1: float, split_sha: str = SPLIT_SHA) -> dict[str, Any]:
    """The parts of evaluate's metrics.json that the gate reads."""
    return {
        "schema_version": 1,
        "macro_f1": f1,
        "accuracy": f1,
        "labels": ["negative", "positive"],
        "dataset": {
            "name": "rotten_tomatoes",
            "split": "test",
            "sha256": split_sha,
            "dataset_sha256": DATASET_SHA,
            "rows": 1276,
        },
    }


def new(version: str, f1: float | None = 0.84, **kw: Any) -> R.NewVersion:
    return R.NewVersion(
        version=version,
        artifact_uri=f"pvc://models/{version}",
        artifact_sha256=hashlib.sha256(version.encode()).hexdigest(),
        metrics=metrics(f1) if f1 is not None else None,
        **kw,
    )


def gate(f1_drop: float = 0.02) -> R.Gate:
    return R.compare_gate(f1_drop)


# --- pure operations ----------------------------------------------------------------------------------
def test_register_then_promote_archives_the_previous_production() -> None:
    reg = R.register(R.empty_registry(), new("v1", 0.84), now=NOW)
    reg = R.promote(reg, "v1", "production", now=NOW, gate=gate())
    reg = R.register(reg, new("v2", 0.85), now=NOW)
    reg = R.promote(reg, "v2", "canary", now=NOW, gate=gate())
    reg = R.promote(reg, "v2", "production", now="2026-11-29T10:00:00Z", gate=gate(), reason="canary ok")
    assert R.validation_errors(reg) == []
    v1, v2 = reg["versions"]["v1"], reg["versions"]["v2"]
    assert (v1["stage"], v2["stage"]) == ("archived", "production")
    assert [h["stage"] for h in v2["history"]] == ["candidate", "canary", "production"]
    assert v2["history"][-1] == {
        "stage": "production",
        "from": "canary",
        "at": "2026-11-29T10:00:00Z",
        "reason": "canary ok",
    }
    assert v1["history"][-1]["reason"] == "superseded by v2"
    assert R.production_version(reg) == "v2"


def test_promote_refuses_a_candidate_that_fails_the_gate() -> None:
    reg = R.promote(
        R.register(R.empty_registry(), new("v1", 0.84), now=NOW), "v1", "production", now=NOW, gate=gate()
    )
    reg = R.register(reg, new("v2", 0.80), now=NOW)
    with pytest.raises(R.GateFailed) as err:
        R.promote(reg, "v2", "production", now=NOW, gate=gate())
    assert any("macro-F1 dropped 4.00 points" in r for r in err.value.reasons)
    with pytest.raises(R.GateFailed):
        R.promote(reg, "v2", "canary", now=NOW, gate=gate())
    # A looser threshold lets it through; archiving needs no gate.
    assert R.promote(reg, "v2", "canary", now=NOW, gate=gate(0.05))["versions"]["v2"]["stage"] == "canary"
    assert R.promote(reg, "v2", "archived", now=NOW, gate=gate())["versions"]["v2"]["stage"] == "archived"


def test_gate_refuses_different_data_missing_metrics_and_failed_bias_audit() -> None:
    reg = R.promote(
        R.register(R.empty_registry(), new("v1"), now=NOW), "v1", "production", now=NOW, gate=gate()
    )
    other_data = R.NewVersion("v2", "pvc://m/v2", "c" * 64, metrics=metrics(0.9, split_sha="d" * 64))
    reg = R.register(reg, other_data, now=NOW)
    reg = R.register(reg, new("v3", None), now=NOW)
    reg = R.register(reg, new("v4", 0.9, bias_audit={"passed": False, "largest_gap": 0.3}), now=NOW)
    assert any("different data" in r for r in R.gate_reasons(reg, "v2", gate()))
    assert any("no metrics" in r for r in R.gate_reasons(reg, "v3", gate()))
    (bias,) = R.gate_reasons(reg, "v4", gate())
    assert bias.startswith("its bias audit failed (largest gap 0.3")
    with pytest.raises(R.RegistryError, match="needs a --reason"):
        R.promote(reg, "v4", "canary", now=NOW, gate=gate(), accept_bias_audit_failure=True)
    accepted = R.promote(
        reg,
        "v4",
        "canary",
        now=NOW,
        gate=gate(),
        accept_bias_audit_failure=True,
        reason="gap on neutral templates only; mitigation tracked",
    )
    assert accepted["versions"]["v4"]["history"][-1]["reason"].startswith("gap on neutral")


def test_register_is_idempotent_for_the_same_artifact_only() -> None:
    reg = R.register(R.empty_registry(), new("v1"), now=NOW)
    assert R.register(reg, new("v1"), now="2027-01-01T00:00:00Z") == reg
    with pytest.raises(R.RegistryError, match="already registered"):
        R.register(reg, R.NewVersion("v1", "pvc://m/v1", "e" * 64), now=NOW)


def test_promote_errors_name_the_problem() -> None:
    reg = R.register(R.empty_registry(), new("v1"), now=NOW)
    with pytest.raises(R.RegistryError, match="not registered"):
        R.promote(reg, "v9", "production", now=NOW, gate=gate())
    with pytest.raises(R.RegistryError, match="already candidate"):
        R.promote(reg, "v1", "candidate", now=NOW, gate=gate())


def test_validation_catches_what_the_schema_cannot() -> None:
    reg = R.register(R.register(R.empty_registry(), new("v1"), now=NOW), new("v2"), now=NOW)
    for v in ("v1", "v2"):
        reg["versions"][v]["stage"] = "production"
        reg["versions"][v]["history"].append({"stage": "production", "from": "candidate", "at": NOW})
    assert any("more than one production" in e for e in R.validation_errors(reg))
    reg["versions"]["v1"]["stage"] = "canary"
    assert any("history ends in production" in e for e in R.validation_errors(reg))
    bad = R.register(R.empty_registry(), new("v1"), now=NOW)
    bad["versions"]["v1"]["artifact"]["sha256"] = "nothex"
    assert any("artifact/sha256" in e for e in R.validation_errors(bad))


# --- the file -------------------------------------------------------------------------------------------
def test_corrupt_registry_file_is_a_clear_error_and_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"schema_version": 1, "versions": {')  # cut short
    rc = cli(
        [
            "registry",
            "--registry",
            str(path),
            "register",
            "--version",
            "v1",
            "--artifact-uri",
            "pvc://m/v1",
            "--sha256",
            "a" * 64,
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "is corrupt" in err and str(path) in err
    assert path.read_text() == '{"schema_version": 1, "versions": {'
    path.write_text(json.dumps({"schema_version": 1, "versions": {"v1": {"stage": "prod"}}}))
    assert cli(["registry", "--registry", str(path), "list"]) == 2
    assert "not a valid registry" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "registry.json"
    R.update_registry(path, lambda r: R.register(r, new("v1"), now=NOW))
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        R.update_registry(path, lambda r: R.register(r, new("v2"), now=NOW))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json", "registry.json.lock"]


def test_an_invalid_change_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    R.update_registry(path, lambda r: R.register(r, new("v1"), now=NOW))

    def corrupt(r: R.Registry) -> R.Registry:
        r["versions"]["v1"]["stage"] = "gone"
        return r

    with pytest.raises(R.RegistryError, match="about to be written"):
        R.update_registry(path, corrupt)
    assert R.read_registry(path)["versions"]["v1"]["stage"] == "candidate"


def _writer(path: str, worker: int, count: int) -> None:
    for i in range(count):
        version = f"w{worker}-{i}"
        R.update_registry(
            Path(path),
            lambda r, v=version: R.register(
                r, R.NewVersion(v, f"pvc://m/{v}", f"{worker:x}" * 64, metrics=metrics(0.8)), now=R.now_utc()
            ),
        )
        if i % 3 == 0:
            R.update_registry(
                Path(path),
                lambda r, v=version: R.promote(r, v, "canary", now=R.now_utc(), gate=R.compare_gate(0.02)),
            )


def test_concurrent_writers_in_separate_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    workers, per_worker = 4, 8
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    reg = R.read_registry(path)  # validates
    assert len(reg["versions"]) == workers * per_worker
    canaries = sorted(v for v, e in reg["versions"].items() if e["stage"] == "canary")
    assert canaries == sorted(f"w{w}-{i}" for w in range(workers) for i in range(0, per_worker, 3))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# --- CLI --------------------------------------------------------------------------------------------------
def test_cli_register_promote_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "reg.json"
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "config.json").write_text("{}")
    (tmp_path / "m1.json").write_text(json.dumps(metrics(0.84)))
    (tmp_path / "m2.json").write_text(json.dumps(metrics(0.81)))
    (tmp_path / "cal.json").write_text(json.dumps({"temperature": 1.7, "method": "temperature"}))
    (tmp_path / "audit.json").write_text(
        json.dumps({"passed": True, "threshold": 0.1, "largest_gap": 0.04, "attributes": {"huge": "dropped"}})
    )
    base = ["registry", "--registry", str(path)]
    assert (
        cli(
            [
                *base,
                "register",
                "--version",
                "v1",
                "--artifact-uri",
                "pvc://models/v1",
                "--artifact-path",
                str(artifact),
                "--metrics",
                str(tmp_path / "m1.json"),
                "--calibration",
                str(tmp_path / "cal.json"),
                "--bias-audit",
                str(tmp_path / "audit.json"),
                "--quantized",
            ]
        )
        == 0
    )
    assert cli([*base, "promote", "v1", "--to", "production"]) == 0
    assert (
        cli(
            [
                *base,
                "register",
                "--version",
                "v2",
                "--artifact-uri",
                "s3://b/v2",
                "--sha256",
                "f" * 64,
                "--metrics",
                str(tmp_path / "m2.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli([*base, "promote", "v2", "--to", "canary"]) == 1
    err = capsys.readouterr().err
    assert "refusing to promote v2" in err and "3.00 points" in err
    assert cli([*base, "promote", "v2", "--to", "canary", "--max-f1-drop", "0.05"]) == 0
    capsys.readouterr()
    assert cli([*base, "list"]) == 0
    listing = capsys.readouterr().out
    assert "v1" in listing and "production" in listing and "canary" in listing
    assert cli([*base, "show", "v1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    from inference_server.runtime.artifact import sha256_of_artifact

    assert shown["artifact"] == {"uri": "pvc://models/v1", "sha256": sha256_of_artifact(artifact)}
    assert shown["datasets"] == {"rotten_tomatoes": DATASET_SHA, "rotten_tomatoes/test": SPLIT_SHA}
    assert shown["calibration"]["temperature"] == 1.7
    assert shown["quantization"] == {"quantized": True, "method": "dynamic_int8"}
    assert shown["bias_audit"] == {"passed": True, "threshold": 0.1, "largest_gap": 0.04}
    assert cli([*base, "show", "v9"]) == 2


def test_cli_register_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "registry",
        "--registry",
        str(tmp_path / "r.json"),
        "register",
        "--version",
        "v1",
        "--artifact-uri",
        "pvc://m/v1",
    ]
    assert cli(base) == 2
    assert "--sha256 or --artifact-path" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"accuracy": 1}')
    assert cli([*base, "--sha256", "a" * 64, "--metrics", str(tmp_path / "bad.json")]) == 2
    assert "macro_f1" in capsys.readouterr().err
    assert cli([*base, "--sha256", "a" * 64, "--dataset", "nohash"]) == 2
    assert (
        cli(
            [
                "registry",
                "--registry",
                str(tmp_path / "r.json"),
                "register",
                "--version",
                "bad version!",
                "--artifact-uri",
                "pvc://m/v1",
                "--sha256",
                "a" * 64,
            ]
        )
        == 2
    )
    assert "not a valid registry" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def _register_argv(path: Path, version: str = "v1", *extra: str) -> list[str]:
    return [
        "registry",
        "--registry",
        str(path),
        "register",
        "--version",
        version,
        "--artifact-uri",
        f"pvc://m/{version}",
        "--sha256",
        "a" * 64,
        *extra,
    ]


@pytest.mark.parametrize("bad_f1", [float("nan"), float("inf"), "0.9", True, 1.2])
def test_register_refuses_a_macro_f1_that_is_not_a_finite_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_f1: Any
) -> None:
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({**metrics(0.8), "macro_f1": bad_f1}))  # NaN/Infinity as json.dumps writes them
    path = tmp_path / "r.json"
    assert cli(_register_argv(path, "v1", "--metrics", str(bad))) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "macro_f1" in err
    assert not path.exists()


def test_non_finite_numbers_are_never_valid_nor_written(tmp_path: Path) -> None:
    nan_accuracy = R.NewVersion(
        "v1", "pvc://m/v1", "a" * 64, metrics={**metrics(0.8), "accuracy": float("nan")}
    )
    reg = R.register(R.empty_registry(), nan_accuracy, now=NOW)
    assert R.validation_errors(reg) == [
        "versions/v1/metrics/accuracy: nan is not a finite number (JSON has no NaN or Infinity)"
    ]
    path = tmp_path / "r.json"
    with pytest.raises(R.RegistryError, match="metrics/accuracy"):
        R.update_registry(path, lambda r: R.register(r, nan_accuracy, now=NOW))
    assert not path.exists()
    # A registry an older version wrote with a bare NaN is reported, not silently used.
    path.write_text(json.dumps(reg))
    assert "NaN" in path.read_text()
    with pytest.raises(R.RegistryError, match="not a finite number"):
        R.read_registry(path)


def test_unusable_stored_metrics_fail_the_gate_instead_of_crashing() -> None:
    reg = R.promote(
        R.register(R.empty_registry(), new("v1"), now=NOW), "v1", "production", now=NOW, gate=gate()
    )
    listed = {**metrics(0.9), "dataset": ["x"]}
    reg = R.register(reg, R.NewVersion("v2", "pvc://m/v2", "c" * 64, metrics=listed), now=NOW)
    (reason,) = R.gate_reasons(reg, "v2", gate())
    assert "cannot be compared" in reason and "dataset" in reason
    with pytest.raises(R.GateFailed):
        R.promote(reg, "v2", "production", now=NOW, gate=gate())


def test_register_with_a_dataset_list_in_metrics_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({**metrics(0.8), "dataset": ["x"]}))
    assert cli(_register_argv(tmp_path / "r.json", "v1", "--metrics", str(bad))) == 2
    assert "dataset" in capsys.readouterr().err


def test_registering_again_is_refused_unless_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = R.register(R.empty_registry(), new("v1", 0.84), now=NOW)
    with pytest.raises(R.RegistryError, match="already registered with different metrics"):
        R.register(reg, new("v1", 0.80), now=NOW)
    with pytest.raises(R.RegistryError, match="different bias_audit"):
        R.register(reg, new("v1", 0.84, bias_audit={"passed": True}), now=NOW)

    path = tmp_path / "r.json"
    m1, m2 = tmp_path / "m1.json", tmp_path / "m2.json"
    m1.write_text(json.dumps(metrics(0.84)))
    m2.write_text(json.dumps(metrics(0.70)))
    assert cli(_register_argv(path, "v1", "--metrics", str(m1))) == 0
    capsys.readouterr()
    assert cli(_register_argv(path, "v1", "--metrics", str(m1))) == 0
    assert "unchanged" in capsys.readouterr().out
    assert cli(_register_argv(path, "v1", "--metrics", str(m2))) == 2
    assert "different metrics" in capsys.readouterr().err
    assert R.read_registry(path)["versions"]["v1"]["metrics"]["macro_f1"] == 0.84


def test_timestamps_must_be_real_date_times() -> None:
    reg = R.register(R.empty_registry(), new("v1"), now="2026-13-45T25:00:00Z")  # matches the pattern
    errors = R.validation_errors(reg)
    assert "versions/v1/registered_at: '2026-13-45T25:00:00Z' is not a valid date-time" in errors
    assert any(e.startswith("versions/v1/history/0/at") for e in errors)
    assert R.validation_errors(R.register(R.empty_registry(), new("v1"), now="2026-02-28T23:59:59.5Z")) == []


def test_an_unwritable_registry_directory_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # filelock retries a lock file it cannot create until its timeout and then blamed another writer.
    monkeypatch.setattr(R, "LOCK_TIMEOUT_S", 1.0)
    assert cli(_register_argv(Path("/proc/sentiment-registry.json"))) == 2
    err = capsys.readouterr().err
    assert "locked" not in err and "/proc" in err and "writable" in err


# --- audit regressions (session 7) ------------------------------------------------------------------------
def test_leaving_production_needs_a_reason_and_the_gate_still_compares_with_it() -> None:
    # Archiving production left no baseline, and the next promotion passed any metrics.
    reg = R.register(R.empty_registry(), new("v1", 0.90), now=NOW)
    reg = R.promote(reg, "v1", "production", now=NOW, gate=gate())
    reg = R.register(reg, new("v2", 0.50), now=NOW)
    with pytest.raises(R.RegistryError, match="out of production leaves none; give a --reason"):
        R.promote(reg, "v1", "archived", now=NOW, gate=gate())
    reg = R.promote(reg, "v1", "archived", now="2026-11-29T11:00:00Z", gate=gate(), reason="incident 42")
    assert R.production_version(reg) is None and R.baseline_version(reg) == "v1"
    with pytest.raises(R.GateFailed, match="vs last production v1"):
        R.promote(reg, "v2", "production", now=NOW, gate=gate())
    reg = R.register(reg, new("v3", 0.89), now=NOW)
    assert R.promote(reg, "v3", "production", now=NOW, gate=gate())["versions"]["v3"]["stage"] == "production"


def test_a_version_without_metrics_never_serves_traffic() -> None:
    # With no production yet, a version without metrics became production, and every later candidate
    # passed against its empty baseline.
    reg = R.register(R.empty_registry(), new("v1", None), now=NOW)
    for stage in ("canary", "production"):
        with pytest.raises(R.GateFailed, match="no metrics"):
            R.promote(reg, "v1", stage, now=NOW, gate=gate())


def test_registry_and_metrics_files_that_are_not_utf8_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["registry", "--registry", str(tmp_path / "reg.json")]
    (tmp_path / "m.json").write_bytes(b'{"macro_f1": 0.9, "name": "\xff"}')
    argv = [*base, "register", "--version", "v1", "--artifact-uri", "pvc://m/v1", "--sha256", "a" * 64]
    assert cli([*argv, "--metrics", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err
    assert cli([*argv, "--metrics", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "cannot write the registry" not in err
    (tmp_path / "reg.json").write_bytes(b"\xff\xfe{}")
    assert cli([*base, "list"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err
