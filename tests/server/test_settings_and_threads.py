"""Configuration from the environment, the entry point's refusals, and CPU-quota-sized threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server.main import EXIT_CONFIG, main
from inference_server.runtime.threads import cpu_limit_from, parse_cpu_max, threads_for
from inference_server.settings import ConfigError, load_settings


def test_defaults_and_contract_names(tmp_path: Path) -> None:
    s = load_settings({"MODEL_PATH": str(tmp_path), "ENABLE_BATCH": "1", "enable_quantized_model": "true"})
    assert s.host == "0.0.0.0" and s.port == 8080 and s.max_tokens == 256
    assert s.enable_batch and s.enable_quantized_model and not s.enable_explainability
    assert s.model_sha256 is None and s.calibration_params_path is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "MODEL_PATH"),
        ({"MAX_TOKENS": "many"}, "MAX_TOKENS"),
        ({"MAX_TOKENS": "0"}, "MAX_TOKENS"),
        ({"ENABLE_BATCH": "perhaps"}, "ENABLE_BATCH"),
        ({"MODEL_SHA256": "abc"}, "MODEL_SHA256"),
        ({"PORT": "70000"}, "PORT"),
        ({"CALIBRATION_PARAMS_PATH": "/nonexistent/params.json"}, "CALIBRATION_PARAMS_PATH"),
        ({"enable_explainability": "sometimes"}, "enable_explainability"),
        ({"DRIFT_THRESHOLD": "inf"}, "DRIFT_THRESHOLD"),  # the drift job and the CRD refuse it too
        ({"DRIFT_THRESHOLD": "101"}, "DRIFT_THRESHOLD"),
    ],
)
def test_invalid_configuration_names_the_variable(tmp_path: Path, env: dict[str, str], named: str) -> None:
    full = {"MODEL_PATH": str(tmp_path), **env} if named != "MODEL_PATH" else env
    with pytest.raises(ConfigError) as info:
        load_settings(full)
    assert named in str(info.value)


def test_feedback_db_path_must_be_a_file_that_can_be_created(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    for bad in (tmp_path, tmp_path / "plain-file" / "fb.sqlite3"):
        with pytest.raises(ConfigError, match="FEEDBACK_DB_PATH"):
            load_settings({"MODEL_PATH": str(tmp_path), "FEEDBACK_DB_PATH": str(bad)})
    fine = tmp_path / "new" / "dirs" / "fb.sqlite3"  # missing directories are created by the store
    assert (
        load_settings({"MODEL_PATH": str(tmp_path), "FEEDBACK_DB_PATH": str(fine)}).feedback_db_path == fine
    )


def test_model_path_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MODEL_PATH"):
        load_settings({"MODEL_PATH": str(tmp_path / "missing")})


def test_sha256_accepts_prefix_and_case(tmp_path: Path) -> None:
    s = load_settings({"MODEL_PATH": str(tmp_path), "MODEL_SHA256": "sha256:" + "AB" * 32})
    assert s.model_sha256 == "ab" * 32


def test_sentiment_server_exits_2_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("MAX_TOKENS", "lots")
    assert main([]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("sentiment-server: invalid configuration: MAX_TOKENS") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "cpus"), [("max 100000", None), ("200000 100000", 2.0), ("50000 100000", 0.5), ("150000", 1.5)]
)
def test_parse_cgroup_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "affinity", "threads"), [(None, 8, 8), (2.0, 64, 2), (0.5, 64, 1), (1.5, 64, 2), (16.0, 4, 4)]
)
def test_threads_follow_the_quota_not_the_host(quota: float | None, affinity: int, threads: int) -> None:
    assert threads_for(quota, affinity) == threads


def _cgroup_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("proc_self_cgroup", "files", "cpus"),
    [
        # A systemd service with CPUQuota=50% (or docker --cgroupns=host): the quota is on the
        # process's own cgroup, none at the mount root. Read at the root only, this was "unlimited".
        (
            "0::/system.slice/sentiment.service",
            {"system.slice/sentiment.service/cpu.max": "50000 100000"},
            0.5,
        ),
        # The tightest of the cgroup and its ancestors.
        (
            "0::/kubepods/pod1/ctr",
            {"kubepods/cpu.max": "100000 100000", "kubepods/pod1/ctr/cpu.max": "max 100000"},
            1.0,
        ),
        # A pod's own cgroup namespace: the path is "/", the quota at the root (as before).
        ("0::/", {"cpu.max": "200000 100000"}, 2.0),
        ("0::/", {"cpu.max": "max 100000"}, None),
        # cgroup v1 below the root, and a v1 container whose own cgroup is mounted at the root while
        # /proc/self/cgroup shows the host's path (which does not exist inside).
        (
            "4:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/",
            {
                "cpu/system.slice/x.service/cpu.cfs_quota_us": "150000",
                "cpu/system.slice/x.service/cpu.cfs_period_us": "100000",
            },
            1.5,
        ),
        (
            "4:cpu,cpuacct:/docker/abc",
            {"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"},
            0.5,
        ),
        ("4:cpu,cpuacct:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("", {}, None),  # nothing readable: unknown
    ],
)
def test_the_cpu_quota_is_read_on_the_process_cgroup_and_its_ancestors(
    tmp_path: Path, proc_self_cgroup: str, files: dict[str, str], cpus: float | None
) -> None:
    assert cpu_limit_from(proc_self_cgroup, _cgroup_tree(tmp_path, files)) == cpus


def test_otlp_exporter_only_when_an_endpoint_is_configured() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from inference_server.observability.tracing import build_tracer_provider, shutdown_provider, tracer_from

    assert build_tracer_provider(None, model_version="v") is None
    quiet = tracer_from(None)
    assert isinstance(quiet, trace.NoOpTracer)
    with quiet.start_as_current_span("x") as span:  # the API's no-op span, attached to nothing
        span.set_attribute("k", 1)
        assert not span.is_recording() and trace.get_current_span() is trace.INVALID_SPAN
    provider = build_tracer_provider("http://127.0.0.1:4318", model_version="v1")
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.version"] == "v1"
    exporter = provider._active_span_processor._span_processors[0].span_exporter  # type: ignore[attr-defined]
    assert exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
    shutdown_provider(provider)


@pytest.mark.parametrize(
    "endpoint", ["collector:4317", "127.0.0.1:4318", "not a url", "grpc://collector:4317"]
)
def test_an_otlp_endpoint_that_is_no_http_url_stops_start_up(tmp_path: Path, endpoint: str) -> None:
    # The SDK took these, then failed every export ("No connection adapters were found"): every span lost.
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        load_settings({"MODEL_PATH": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    good = {"MODEL_PATH": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": " http://otel-collector:4318 "}
    assert load_settings(good).otlp_endpoint == "http://otel-collector:4318"
    unset = {"MODEL_PATH": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    assert load_settings(unset).otlp_endpoint is None
